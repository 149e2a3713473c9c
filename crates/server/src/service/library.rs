//! [`TokenService`] over the `codereader-verifier` library: the only file that knows the
//! library's types, so changes to its API stay here.

use std::path::PathBuf;

use anyhow::{Result, bail};
use codereader_otp::Code;

use super::{Decision, Enrollment, ImportReport, ServiceError, Target, TokenService, TokenView};
use crate::state::KekFile;

/// Which database holds the tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbSpec {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (`postgres://...` or `postgresql://...`).
    Postgres(String),
}

impl DbSpec {
    /// Parses `sqlite:PATH`, `postgres://...`, `postgresql://...` or a plain path (SQLite).
    ///
    /// # Errors
    /// When the text is empty.
    pub fn parse(text: &str) -> Result<Self> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(DbSpec::Postgres(text.to_owned()));
        }
        let path = text.strip_prefix("sqlite:").unwrap_or(text);
        if path.is_empty() {
            bail!("--db needs sqlite:PATH or postgres://...");
        }
        Ok(DbSpec::Sqlite(PathBuf::from(path)))
    }
}

/// Choices passed to the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibraryConfig {
    /// Consecutive failures that lock a token.
    pub max_failures: u32,
    /// Database connections kept open.
    pub pool_size: usize,
}

impl Default for LibraryConfig {
    fn default() -> Self {
        LibraryConfig {
            max_failures: 3,
            pool_size: 4,
        }
    }
}

/// The verifier library with its store and keys.
pub struct Library {}

impl Library {
    /// Opens the store (running its migrations) with `kek` as the current key.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated.
    pub fn open(
        _db: &DbSpec,
        _kek: &KekFile,
        _older: &[KekFile],
        _config: LibraryConfig,
    ) -> Result<Self> {
        bail!("the verifier library is not wired in yet")
    }

    /// Re-encrypts every seed under `new`; returns how many.
    ///
    /// # Errors
    /// [`ServiceError`].
    pub fn rotate(&self, _new: &KekFile, _caller: &str) -> Result<u64, ServiceError> {
        Err(ServiceError::Internal("not wired".into()))
    }
}

fn not_wired<T>() -> Result<T, ServiceError> {
    Err(ServiceError::Internal("not wired".into()))
}

impl TokenService for Library {
    fn verify(&self, _: &Target, _: &Code, _: &str) -> Result<Decision, ServiceError> {
        not_wired()
    }
    fn enroll(&self, _: &str, _: &Enrollment, _: &str) -> Result<TokenView, ServiceError> {
        not_wired()
    }
    fn import_pskc(
        &self,
        _: &str,
        _: Option<&[u8]>,
        _: &str,
    ) -> Result<ImportReport, ServiceError> {
        not_wired()
    }
    fn show(&self, _: &str) -> Result<TokenView, ServiceError> {
        not_wired()
    }
    fn list(&self) -> Result<Vec<TokenView>, ServiceError> {
        not_wired()
    }
    fn activate(&self, _: &str, _: &str, _: &Code, _: &str) -> Result<Decision, ServiceError> {
        not_wired()
    }
    fn resync(&self, _: &str, _: &Code, _: &Code, _: &str) -> Result<Decision, ServiceError> {
        not_wired()
    }
    fn unlock(&self, _: &str, _: &str) -> Result<TokenView, ServiceError> {
        not_wired()
    }
    fn disable(&self, _: &str, _: &str) -> Result<TokenView, ServiceError> {
        not_wired()
    }
    fn ping(&self) -> Result<(), ServiceError> {
        Ok(())
    }
}
