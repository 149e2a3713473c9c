//! `token ...`: the offline administration commands, run directly on the store (no server
//! needed), printing for people or, where asked, JSON lines.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use codereader_otp::UnixTime;
use codereader_verifier::AuditEntry;
use codereader_verifier_server::service::library::LibraryConfig;
use codereader_verifier_server::service::{self, Enrollment, MAX_AUDIT_PAGE};
use codereader_verifier_server::{timefmt, wire};
use zeroize::Zeroizing;

use super::args::TokenCommand;
use super::kek::{NewKey, prune_kek, rotate_kek};
use super::print::{print_audit, print_imported, print_token};
use super::store::open_library;

pub(crate) fn token(command: TokenCommand) -> Result<()> {
    let caller = service::caller(&format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
    ))?;
    let config = LibraryConfig::default();
    let mut out = std::io::stdout().lock();
    match command {
        TokenCommand::Add { serial, uri, store } => {
            let uri = if uri == "-" {
                let mut text = Zeroizing::new(String::new());
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read the URI from stdin")?;
                Zeroizing::new(text.trim().to_owned())
            } else {
                Zeroizing::new(uri)
            };
            let library = open_library(&store, config)?;
            let label = uri_label(&uri);
            let info =
                library.enroll(&service::token_id(&serial)?, &Enrollment::Uri(uri), &caller)?;
            writeln!(out, "enrolled:")?;
            print_token(&mut out, &wire::Token::from(&info))?;
            if let Some(label) = label {
                writeln!(out, "{label}")?;
            }
        }
        TokenCommand::Import {
            pskc,
            preshared_key_file,
            allow_short_secret,
            store,
        } => {
            let text = std::fs::read_to_string(&pskc)
                .with_context(|| format!("cannot read {}", pskc.display()))?;
            let psk = match preshared_key_file {
                Some(path) => {
                    let hex = Zeroizing::new(
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?,
                    );
                    Some(Zeroizing::new(
                        data_encoding::HEXLOWER_PERMISSIVE
                            .decode(hex.trim().as_bytes())
                            .map_err(|_| anyhow::anyhow!("{} must hold hex", path.display()))?,
                    ))
                }
                None => None,
            };
            let library = open_library(&store, config)?;
            let report = wire::Imported::from(&library.import_pskc(
                &text,
                psk.as_ref().map(|k| k.as_slice()),
                allow_short_secret,
                &caller,
            )?);
            for refused in &report.rejected {
                writeln!(out, "refused {}: {}", refused.id, refused.reason)?;
            }
            print_imported(&mut out, &report.imported)?;
            if !report.rejected.is_empty() {
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
        }
        TokenCommand::List { store } => {
            let library = open_library(&store, config)?;
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
        }
        TokenCommand::Show { serial, store } => {
            let library = open_library(&store, config)?;
            let info = library.show(&service::token_id(&serial)?)?;
            print_token(&mut out, &wire::Token::from(&info))?;
        }
        TokenCommand::Unlock { serial, store } => {
            let library = open_library(&store, config)?;
            let info = library.unlock(&service::token_id(&serial)?, &caller)?;
            writeln!(out, "unlocked {}", info.id)?;
        }
        TokenCommand::Disable { serial, store } => {
            let library = open_library(&store, config)?;
            let info = library.disable(&service::token_id(&serial)?, &caller)?;
            writeln!(out, "disabled {}", info.id)?;
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
                &mut out,
                &store,
                new.as_ref(),
                stage,
                use_key.as_deref(),
                &caller,
            )?
        }
        TokenCommand::PruneKek { store } => prune_kek(&mut out, &store)?,
        TokenCommand::Events {
            after,
            follow,
            interval_ms,
            store,
        } => {
            let library = open_library(&store, config)?;
            let mut after = after;
            loop {
                let page = library.events_after(after, wire::MAX_EVENT_PAGE)?;
                for event in &page {
                    serde_json::to_writer(&mut out, &wire::EventBody::of(event))?;
                    writeln!(out)?;
                }
                out.flush()?;
                match page.last() {
                    Some(last) => after = last.id,
                    None if follow => {
                        std::thread::sleep(Duration::from_millis(interval_ms.max(1)));
                    }
                    None => break,
                }
            }
        }
        TokenCommand::Audit {
            serial,
            all: _,
            since,
            limit,
            json,
            store,
        } => {
            let library = open_library(&store, config)?;
            let show = |out: &mut dyn Write, entry: &AuditEntry| print_audit(out, entry, json);
            match serial {
                Some(serial) => {
                    let serial = service::token_id(&serial)?;
                    let mut left = limit.unwrap_or(wire::DEFAULT_AUDIT_LIMIT);
                    let mut before = None;
                    while left > 0 {
                        let page = library.audit(&serial, before, left.min(MAX_AUDIT_PAGE))?;
                        let Some(last) = page.last() else { break };
                        before = Some(last.seq);
                        left -= page.len();
                        for entry in &page {
                            show(&mut out, entry)?;
                        }
                    }
                }
                None => {
                    let since = timefmt::parse_time(since.as_deref().unwrap_or_default())
                        .context("--since")?;
                    let mut left = limit.unwrap_or(usize::MAX);
                    let mut after = None;
                    while left > 0 {
                        let page = library.audit_since(
                            UnixTime(since),
                            after,
                            left.min(MAX_AUDIT_PAGE),
                        )?;
                        let Some(last) = page.last() else { break };
                        after = Some(last.seq);
                        left -= page.len();
                        for entry in &page {
                            show(&mut out, entry)?;
                        }
                    }
                }
            }
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
