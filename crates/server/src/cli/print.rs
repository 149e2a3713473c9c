//! What the offline commands print for people: a token's fields, audit lines (or JSON), an
//! import's serials. One place, so that `token` and `kek` commands print alike.

use std::io::Write;

use anyhow::Result;
use codereader_verifier::AuditEntry;
use codereader_verifier_server::{timefmt, wire};

pub(crate) fn print_token(out: &mut impl Write, view: &wire::Token) -> Result<()> {
    writeln!(out, "serial     {}", view.serial)?;
    writeln!(out, "user       {}", view.user.as_deref().unwrap_or("-"))?;
    writeln!(
        out,
        "kind       {} {} {} digits{}",
        view.kind,
        view.algorithm,
        view.digits,
        view.period.map(|p| format!(", {p} s")).unwrap_or_default()
    )?;
    writeln!(out, "status     {}", view.status())?;
    writeln!(out, "next       {}", view.next)?;
    writeln!(out, "drift      {}", view.drift)?;
    writeln!(out, "failures   {}", view.failures)?;
    writeln!(out, "key        {}", view.key_id)?;
    Ok(())
}

/// One audit line: tab-separated columns (time, token, action, outcome, caller, user), or a
/// JSON object (one a line, for a SIEM) with the time in RFC 3339 beside the Unix seconds.
pub(crate) fn print_audit(out: &mut dyn Write, entry: &AuditEntry, json: bool) -> Result<()> {
    let line = wire::AuditLine::from(entry);
    if json {
        let line = wire::AuditLine {
            time: Some(timefmt::rfc3339(line.at)),
            ..line
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    } else {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            timefmt::rfc3339(line.at),
            line.token.as_deref().unwrap_or("-"),
            line.action,
            line.outcome,
            line.caller,
            line.user.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(())
}

/// "imported 2 token(s): A B", or "imported 0 token(s)" without a dangling colon.
pub(crate) fn print_imported(out: &mut impl Write, imported: &[String]) -> Result<()> {
    if imported.is_empty() {
        writeln!(out, "imported 0 token(s)")?;
    } else {
        writeln!(
            out,
            "imported {} token(s): {}",
            imported.len(),
            imported.join(" ")
        )?;
    }
    Ok(())
}
