//! `token ...`: the offline administration commands, run directly on the store (no server
//! needed), printing for people or, where asked, JSON lines.
//!
//! [`token`] names the caller the audit trail records, reads what the flags name (stdin,
//! files) and hands each subcommand to its own function below; `show`, `unlock` and
//! `disable` are one library call each and stay in the match, and the KEK commands are
//! `kek`'s.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use codereader_otp::UnixTime;
use codereader_verifier::{AuditEntry, Caller, TokenId};
use codereader_verifier_server::service::library::{Library, LibraryConfig};
use codereader_verifier_server::service::{self, EnrollInput, MAX_AUDIT_PAGE, ServiceError};
use codereader_verifier_server::{timefmt, wire};
use zeroize::Zeroizing;

use super::args::{StoreArgs, TokenCommand};
use super::kek::{NewKey, prune_kek, rotate_kek};
use super::print::{print_audit, print_imported, print_token};
use super::store::open_library;

pub(crate) fn token(command: TokenCommand) -> Result<()> {
    let caller = service::caller(&format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
    ))?;
    let out = &mut std::io::stdout().lock();
    let open = |store: &StoreArgs| open_library(store, LibraryConfig::default());
    match command {
        TokenCommand::Add { serial, uri, store } => {
            let uri = read_uri(uri)?;
            add(out, &open(&store)?, &serial, uri, &caller)
        }
        TokenCommand::Import {
            pskc,
            preshared_key_file,
            allow_short_secret,
            store,
        } => {
            let text = std::fs::read_to_string(&pskc)
                .with_context(|| format!("cannot read {}", pskc.display()))?;
            let psk = preshared_key_file
                .as_deref()
                .map(read_hex_key)
                .transpose()?;
            let library = open(&store)?;
            let psk = psk.as_ref().map(|k| k.as_slice());
            import(out, &library, &text, psk, allow_short_secret, &caller)
        }
        TokenCommand::List { store } => list(out, &open(&store)?),
        TokenCommand::Show { serial, store } => {
            let info = open(&store)?.show(&service::token_id(&serial)?)?;
            print_token(out, &wire::Token::from(&info))
        }
        TokenCommand::Unlock { serial, store } => {
            let info = open(&store)?.unlock(&service::token_id(&serial)?, &caller)?;
            Ok(writeln!(out, "unlocked {}", info.id)?)
        }
        TokenCommand::Disable { serial, store } => {
            let info = open(&store)?.disable(&service::token_id(&serial)?, &caller)?;
            Ok(writeln!(out, "disabled {}", info.id)?)
        }
        TokenCommand::RotateKek {
            new_kek_file,
            new_kek,
            stage,
            use_key,
            store,
        } => {
            let new = match (new_kek_file, new_kek) {
                (Some(file), _) => Some(NewKey::File(file)),
                (None, Some(uri)) => Some(NewKey::Hsm(uri)),
                (None, None) => None,
            };
            rotate_kek(
                out,
                &store,
                new.as_ref(),
                stage,
                use_key.as_deref(),
                &caller,
            )
        }
        TokenCommand::PruneKek { store } => prune_kek(out, &store),
        TokenCommand::Events {
            after,
            follow,
            interval_ms,
            store,
        } => {
            let interval = follow.then(|| Duration::from_millis(interval_ms.max(1)));
            events(out, &open(&store)?, after, interval)
        }
        TokenCommand::Audit {
            serial,
            all: _,
            since,
            limit,
            json,
            store,
        } => {
            let library = open(&store)?;
            match serial {
                Some(serial) => {
                    let serial = service::token_id(&serial)?;
                    let limit = limit.unwrap_or(wire::DEFAULT_AUDIT_LIMIT);
                    audit_token(out, &library, &serial, limit, json)
                }
                None => {
                    let since = timefmt::parse_time(since.as_deref().unwrap_or_default())
                        .context("--since")?;
                    let limit = limit.unwrap_or(usize::MAX);
                    audit_all(out, &library, UnixTime(since), limit, json)
                }
            }
        }
    }
}

/// `token add --uri`: the URI itself, or with `-` what stdin holds (trimmed).
fn read_uri(uri: String) -> Result<Zeroizing<String>> {
    if uri != "-" {
        return Ok(Zeroizing::new(uri));
    }
    let mut text = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the URI from stdin")?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// `token import --preshared-key-file`: the key the file holds in hex.
fn read_hex_key(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let hex = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let key = data_encoding::HEXLOWER_PERMISSIVE
        .decode(hex.trim().as_bytes())
        .map_err(|_| anyhow::anyhow!("{} must hold hex", path.display()))?;
    Ok(Zeroizing::new(key))
}

/// `token add`: enrol, print the token and the account the URI names.
fn add(
    out: &mut impl Write,
    library: &Library,
    serial: &str,
    uri: Zeroizing<String>,
    caller: &Caller,
) -> Result<()> {
    let label = uri_label(&uri);
    let info = library.enroll(&service::token_id(serial)?, &EnrollInput::Uri(uri), caller)?;
    writeln!(out, "enrolled:")?;
    print_token(out, &wire::Token::from(&info))?;
    if let Some(label) = label {
        writeln!(out, "{label}")?;
    }
    Ok(())
}

/// `token import`: enrol a PSKC file's keys, print what was refused and what was imported;
/// an error if any key was refused.
fn import(
    out: &mut impl Write,
    library: &Library,
    pskc: &str,
    psk: Option<&[u8]>,
    allow_short_secret: bool,
    caller: &Caller,
) -> Result<()> {
    let report =
        wire::Imported::from(&library.import_pskc(pskc, psk, allow_short_secret, caller)?);
    for refused in &report.rejected {
        writeln!(out, "refused {}: {}", refused.id, refused.reason)?;
    }
    print_imported(out, &report.imported)?;
    if report.rejected.is_empty() {
        return Ok(());
    }
    // The library's reason says short keys need explicit permission; name it.
    let short = !allow_short_secret
        && report
            .rejected
            .iter()
            .any(|r| r.reason.contains("(128 bits)"));
    bail!(
        "{} key(s) were refused{}",
        report.rejected.len(),
        if short {
            "; --allow-short-secret accepts secrets shorter than 128 bits"
        } else {
            ""
        }
    );
}

/// `token list`: one line a token, tab-separated.
fn list(out: &mut impl Write, library: &Library) -> Result<()> {
    for info in library.list()? {
        let token = wire::Token::from(&info);
        writeln!(
            out,
            "{}\t{}\t{}\t{}",
            token.serial,
            token.kind,
            token.user.as_deref().unwrap_or("-"),
            token.status()
        )?;
    }
    Ok(())
}

/// `token events`: the events after `after`, one JSON line each; with `follow` (`--follow`
/// and its interval) it then keeps looking for new ones, else it stops at the last.
fn events(
    out: &mut impl Write,
    library: &Library,
    mut after: u64,
    follow: Option<Duration>,
) -> Result<()> {
    loop {
        let page = library.events_after(after, wire::MAX_EVENT_PAGE)?;
        for event in &page {
            serde_json::to_writer(&mut *out, &wire::EventBody::of(event))?;
            writeln!(out)?;
        }
        out.flush()?;
        match (page.last(), follow) {
            (Some(last), _) => after = last.id,
            (None, Some(interval)) => std::thread::sleep(interval),
            (None, None) => return Ok(()),
        }
    }
}

/// `token audit --serial`: one token's latest `limit` lines, newest first.
fn audit_token(
    out: &mut impl Write,
    library: &Library,
    serial: &TokenId,
    limit: usize,
    json: bool,
) -> Result<()> {
    print_audit_pages(out, limit, json, |before, n| {
        library.audit(serial, before, n)
    })
}

/// `token audit --all --since`: every token's lines since `since`, oldest first, at most
/// `limit`.
fn audit_all(
    out: &mut impl Write,
    library: &Library,
    since: UnixTime,
    limit: usize,
    json: bool,
) -> Result<()> {
    print_audit_pages(out, limit, json, |after, n| {
        library.audit_since(since, after, n)
    })
}

/// Prints up to `left` audit lines, a page at a time: `page(cursor, n)` gives the next at
/// most `n` lines after `cursor` (the last line's sequence number; `None` at first).
fn print_audit_pages(
    out: &mut impl Write,
    mut left: usize,
    json: bool,
    mut page: impl FnMut(Option<u64>, usize) -> Result<Vec<AuditEntry>, ServiceError>,
) -> Result<()> {
    let mut cursor = None;
    while left > 0 {
        let lines = page(cursor, left.min(MAX_AUDIT_PAGE))?;
        let Some(last) = lines.last() else { break };
        cursor = Some(last.seq);
        left -= lines.len();
        for entry in &lines {
            print_audit(out, entry, json)?;
        }
    }
    Ok(())
}

/// The account (and issuer) an otpauth URI names, for `token add` to show beside the
/// unbound `user` line: enrolment does not bind a user (activation does, with a code).
fn uri_label(uri: &str) -> Option<String> {
    let parsed =
        codereader_otp::KeyUri::parse(uri, codereader_otp::KeyPolicy::AllowLegacyShort).ok()?;
    let account = parsed.account();
    if account.is_empty() {
        return None;
    }
    let issuer = parsed
        .issuer()
        .map(|i| format!(" at {i}"))
        .unwrap_or_default();
    Some(format!(
        "account    {account}{issuer} (from the URI; `activate` binds the token to a user \
         with a code)"
    ))
}
