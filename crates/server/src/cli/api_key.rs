//! `api-key ...`: the API-key file (create, list, revoke, register a client certificate);
//! a revocation also records its event in the store.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use codereader_otp::UnixTime;
use codereader_verifier::StoreAddress;
use codereader_verifier_server::apikeys::{self, ApiKeys, Scope};
use codereader_verifier_server::service;
use codereader_verifier_server::{state_dir, timefmt};

use super::args::ApiKeyCommand;
use super::store::db_spec;

/// `api-key ...`: create, list, revoke a key, or register a client certificate as one.
pub(crate) fn api_key(command: ApiKeyCommand) -> Result<()> {
    match command {
        ApiKeyCommand::List { api_keys } => list_api_keys(api_keys),
        ApiKeyCommand::AddCert {
            scope,
            name,
            cert,
            expires,
            api_keys,
        } => add_certificate(scope, name.as_deref(), &cert, expires.as_deref(), api_keys),
        ApiKeyCommand::Revoke { name, api_keys, db } => {
            revoke_api_key(&name, api_keys, db.as_deref())
        }
        ApiKeyCommand::Create {
            scope,
            name,
            api_keys,
            expires,
        } => {
            let path = match api_keys {
                Some(p) => p,
                None => state_dir::ensure_state_dir()?.join(state_dir::DEFAULT_API_KEYS_FILE),
            };
            let expires = expires
                .map(|t| timefmt::parse_time(&t).context("--expires"))
                .transpose()?;
            let created = apikeys::create_key_at(
                &path,
                scope,
                name.as_deref(),
                apikeys::unix_now(),
                expires,
            )?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "Created API key '{}' with scope {} in {}\n\
                 (a running server picks it up on SIGHUP).\n\
                 It is shown only now; store it safely. Key: {}",
                created.entry.name,
                created.entry.scope,
                path.display(),
                created.key.as_str()
            )?;
            Ok(())
        }
    }
}

pub(crate) fn api_keys_path(arg: Option<PathBuf>) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p),
        None => Ok(state_dir::state_dir()?.join(state_dir::DEFAULT_API_KEYS_FILE)),
    }
}

/// `api-key list`: names, scopes and dates; never a key or a hash.
fn list_api_keys(api_keys: Option<PathBuf>) -> Result<()> {
    let keys = ApiKeys::load(&api_keys_path(api_keys)?)?;
    let now = apikeys::unix_now();
    let mut out = std::io::stdout().lock();
    for entry in keys.entries() {
        let when = |t: Option<u64>, none: &str| t.map_or_else(|| none.to_owned(), timefmt::rfc3339);
        writeln!(
            out,
            "{}\t{}\tcreated {}\texpires {}{}{}",
            entry.name,
            entry.scope,
            when(entry.created, "unknown"),
            when(entry.expires, "never"),
            if entry.expired(now) { "\texpired" } else { "" },
            if entry.certificate {
                "\tclient certificate"
            } else {
                ""
            },
        )?;
    }
    Ok(())
}

/// `api-key revoke --name N`.
fn revoke_api_key(name: &str, api_keys: Option<PathBuf>, db: Option<&str>) -> Result<()> {
    let path = api_keys_path(api_keys)?;
    let entry = apikeys::revoke_key(&path, name)?;
    // The file first: a revocation must not wait on the database. The event follows; if
    // the database is unreachable the command says so and fails, the key stays revoked.
    let address = match db {
        Some(text) => Some(db_spec(Some(text))?),
        None => {
            // Only a database that exists: revoking a key never creates one.
            let default = state_dir::state_dir()?.join(state_dir::DEFAULT_DB_FILE);
            default.exists().then_some(StoreAddress::Sqlite(default))
        }
    };
    if let Some(address) = address {
        let caller = service::caller(&format!(
            "cli:{}",
            std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
        ))?;
        let line = codereader_verifier::Verifier::notice(
            codereader_verifier::NoticeAction::ApiKeyRevoked,
            &entry.name,
            UnixTime(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
            &caller,
        );
        let store = address
            .open()
            .context("the key is revoked, but its event could not be recorded")?;
        store
            .write(move |tx| tx.append_audit(&line))
            .and_then(|written| written)
            .context("the key is revoked, but its event could not be recorded")?;
    }
    writeln!(
        std::io::stdout().lock(),
        "revoked API key '{}' ({}) in {}; a running server stops accepting it on SIGHUP.",
        entry.name,
        entry.scope,
        path.display()
    )?;
    Ok(())
}

/// `api-key add-cert`: registers the first certificate of a PEM file.
fn add_certificate(
    scope: Scope,
    name: Option<&str>,
    cert: &Path,
    expires: Option<&str>,
    api_keys: Option<PathBuf>,
) -> Result<()> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(cert)
        .with_context(|| format!("cannot read a certificate from {}", cert.display()))?;
    let expires = expires
        .map(|t| timefmt::parse_time(t).context("--expires"))
        .transpose()?;
    let path = match api_keys {
        Some(p) => p,
        None => state_dir::ensure_state_dir()?.join(state_dir::DEFAULT_API_KEYS_FILE),
    };
    let entry = apikeys::add_certificate(&path, scope, name, &der, apikeys::unix_now(), expires)?;
    writeln!(
        std::io::stdout().lock(),
        "Registered the client certificate of {} as '{}' with scope {} in {}\n\
         (a running server picks it up on SIGHUP; it needs --client-ca).",
        cert.display(),
        entry.name,
        entry.scope,
        path.display()
    )?;
    Ok(())
}
