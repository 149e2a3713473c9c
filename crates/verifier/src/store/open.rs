//! Choosing a store at run time from an address: the one parser of store addresses (the
//! server's `--db` uses it too) and the one place that knows every backend.
//!
//! A new backend is a variant of [`StoreAddress`], its scheme in [`StoreAddress::from_str`]
//! and its line in [`StoreAddress::open`].

use std::path::PathBuf;
use std::str::FromStr;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Store, StoreError};

/// Where the tokens are kept, as written on a command line or in a configuration file.
///
/// - `sqlite:PATH` or `sqlite://PATH`: an SQLite file, created if missing;
/// - `postgres://...` or `postgresql://...`: a PostgreSQL database (the text is given to the
///   driver as it is);
/// - anything else without `://`: a path to an SQLite file (the server's `--db` has always
///   taken a plain path).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreAddress {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl std::fmt::Debug for StoreAddress {
    /// A PostgreSQL URL may hold a password: only the part after the credentials is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreAddress::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StoreAddress::Postgres(url) => {
                let shown = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
                f.debug_tuple("Postgres").field(&shown).finish()
            }
        }
    }
}

impl FromStr for StoreAddress {
    type Err = StoreError;

    /// # Errors
    /// [`StoreError::BadAddress`] for an empty path or another scheme (`mysql://...` is a
    /// mistake, not a file name).
    fn from_str(text: &str) -> Result<Self, StoreError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreAddress::Postgres(text.to_owned()));
        }
        let path = match text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            Some(path) => path,
            None if text.contains("://") => return Err(StoreError::BadAddress),
            None => text,
        };
        if path.is_empty() {
            return Err(StoreError::BadAddress);
        }
        Ok(StoreAddress::Sqlite(PathBuf::from(path)))
    }
}

impl StoreAddress {
    /// Opens the store with its default options and runs its migrations.
    ///
    /// # Errors
    /// What opening the store gives ([`StoreError::Database`], [`StoreError::SchemaTooNew`]).
    pub fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            StoreAddress::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            StoreAddress::Postgres(url) => Box::new(PgStore::connect(url)?),
        })
    }
}

/// Opens the store named by `address` (see [`StoreAddress`]) and runs its migrations.
///
/// # Errors
/// [`StoreError::BadAddress`] for an address that is none of the forms; otherwise what
/// opening the store gives.
pub fn open_store(address: &str) -> Result<Box<dyn Store>, StoreError> {
    address.parse::<StoreAddress>()?.open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let sqlite = |p: &str| Ok(StoreAddress::Sqlite(PathBuf::from(p)));
        assert_eq!("sqlite:/a/b.db".parse(), sqlite("/a/b.db"));
        assert_eq!("sqlite:///a/b.db".parse(), sqlite("/a/b.db"));
        assert_eq!("sqlite:rel.db".parse(), sqlite("rel.db"));
        assert_eq!("rel.db".parse(), sqlite("rel.db"));
        assert_eq!("/tmp/x.db".parse(), sqlite("/tmp/x.db"));
        for pg in ["postgresql://u@127.0.0.1:5/db", "postgres://u:secret@h/db"] {
            assert_eq!(pg.parse(), Ok(StoreAddress::Postgres(pg.to_owned())));
        }
        for bad in ["", "sqlite:", "sqlite://", "mysql://x/y"] {
            assert_eq!(
                bad.parse::<StoreAddress>(),
                Err(StoreError::BadAddress),
                "{bad}"
            );
        }
        let shown = format!(
            "{:?}",
            StoreAddress::Postgres("postgres://u:secret@h/db".into())
        );
        assert!(!shown.contains("secret"), "{shown}");

        assert_eq!(open_store("mysql://x").err(), Some(StoreError::BadAddress));
        assert_eq!(open_store("sqlite:").err(), Some(StoreError::BadAddress));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        assert!(open_store(&format!("sqlite:{}", path.display())).is_ok());
        assert!(path.exists());
        // A plain path is an SQLite file, as the server's `--db` has always taken it.
        let plain = dir.path().join("plain.db");
        assert!(open_store(&plain.display().to_string()).is_ok());
        assert!(plain.exists());
    }
}
