//! The audit trail's vocabulary as types: what was asked ([`AuditAction`]) and what happened
//! ([`AuditOutcome`]).
//!
//! The rules write these values and never text, so every value the trail can hold is listed
//! here, documented once. They become text only in a store (a column of an SQL table) and are
//! parsed back when read; a stored text that is none of them is a corrupt row, not a new value.
//! The text of each value is stable: it is what operators read, grep and export (the server
//! shows it as is), so a value is never renamed, only added.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::outcome::Outcome;
use crate::token::KeyId;

/// What was asked, as the audit trail names it ([`AuditAction::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditAction {
    /// `verify`: a code checked for a token or a user.
    Verify,
    /// `activate`: a code checked to bind a token to a user.
    Activate,
    /// `resync`: two consecutive codes checked to move a token's drift or counter.
    Resync,
    /// `unlock`: an administrator cleared a token's lock.
    Unlock,
    /// `auto-unlock`: a lock ran out ([`crate::Policy::auto_unlock_after`]) when the token
    /// was next used.
    AutoUnlock,
    /// `lock`: the failure that locked a token (written after its `rejected` line).
    Lock,
    /// `enable`: an administrator enabled a token.
    Enable,
    /// `disable`: an administrator disabled a token.
    Disable,
    /// `delete`: an administrator deleted a token (its trail stays).
    Delete,
    /// `enroll`: tokens added from parameters (the line names the first one).
    Enroll,
    /// `import`: tokens added from a PSKC file.
    Import,
    /// `rotate`: seeds re-sealed under the keyring's current key.
    Rotate,
    /// `apikey-revoke`: an administrator revoked an API key (the line's caller names the
    /// administrator, its outcome the key: [`AuditOutcome::Named`]).
    ApiKeyRevoke,
    /// `rejected-burst`: a client went past its failure budget (its outcome names the
    /// client: [`AuditOutcome::Named`]).
    RejectedBurst,
}

impl AuditAction {
    /// Every action, for tests and documentation.
    pub const ALL: [AuditAction; 14] = [
        AuditAction::Verify,
        AuditAction::Activate,
        AuditAction::Resync,
        AuditAction::Unlock,
        AuditAction::AutoUnlock,
        AuditAction::Lock,
        AuditAction::Enable,
        AuditAction::Disable,
        AuditAction::Delete,
        AuditAction::Enroll,
        AuditAction::Import,
        AuditAction::Rotate,
        AuditAction::ApiKeyRevoke,
        AuditAction::RejectedBurst,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Verify => "verify",
            AuditAction::Activate => "activate",
            AuditAction::Resync => "resync",
            AuditAction::Unlock => "unlock",
            AuditAction::AutoUnlock => "auto-unlock",
            AuditAction::Lock => "lock",
            AuditAction::Enable => "enable",
            AuditAction::Disable => "disable",
            AuditAction::Delete => "delete",
            AuditAction::Enroll => "enroll",
            AuditAction::Import => "import",
            AuditAction::Rotate => "rotate",
            AuditAction::ApiKeyRevoke => "apikey-revoke",
            AuditAction::RejectedBurst => "rejected-burst",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not a value of the audit vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an audit {what}")]
pub struct UnknownAuditText {
    /// "action" or "outcome".
    pub what: &'static str,
}

impl FromStr for AuditAction {
    type Err = UnknownAuditText;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AuditAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(UnknownAuditText { what: "action" })
    }
}

/// What happened, as the audit trail says it ([`AuditOutcome::text`], also `Display`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditOutcome {
    /// `accepted`: the code was right and used now ([`Outcome::Accepted`]).
    Accepted,
    /// `rejected`: a wrong code, counted as a failure ([`Outcome::Rejected`]; the failure
    /// that locks the token is followed by an [`AuditAction::Lock`] line).
    Rejected,
    /// `rejected-locked`: [`Outcome::Rejected`] with no attempts left. The rules write
    /// `rejected` and a `lock` line instead; kept so that every [`Outcome::label`] has a value.
    RejectedLocked,
    /// `locked`: refused, the token is locked ([`Outcome::Locked`]).
    Locked,
    /// `replayed`: the code's step or counter was already used ([`Outcome::Replayed`]).
    Replayed,
    /// `too-soon`: the delay after failures had not passed ([`Outcome::TooSoon`]).
    TooSoon,
    /// `unknown-token`: no such token, or none bound to the user ([`Outcome::UnknownToken`]).
    UnknownToken,
    /// `rate-limited`: the client's failure budget was spent ([`Outcome::RateLimited`]).
    RateLimited,
    /// `disabled`: refused, the token is disabled ([`Outcome::Disabled`]).
    Disabled,
    /// `ok`: an administrative action, or a `lock`/`auto-unlock`, was done.
    Ok,
    /// `already-bound`: an activation of a token already bound to a user.
    AlreadyBound,
    /// `user-has-token`: an activation for a user who already has a token.
    UserHasToken,
    /// `temporary`: a `lock` that lasts a while ([`crate::Policy::temporary_lock`]).
    Temporary,
    /// `name NAME`: what an `apikey-revoke` or `rejected-burst` line is about (the key's
    /// name, the client), printable text without line breaks.
    Named {
        /// The name.
        name: String,
    },
    /// `N token(s)`: an enrollment of `count` tokens.
    Enrolled {
        /// Tokens enrolled.
        count: u64,
    },
    /// `N imported, M refused`: a PSKC import.
    Imported {
        /// Keys imported.
        imported: u64,
        /// Keys refused.
        refused: u64,
    },
    /// `N resealed under KEY, M failed`: a key rotation.
    Rotated {
        /// Seeds re-sealed.
        resealed: u64,
        /// The key they are sealed under now.
        key: KeyId,
        /// Seeds that did not open with any key.
        failed: u64,
    },
}

/// The outcomes that are fixed labels, with their text.
const LABELS: [(AuditOutcome, &str); 13] = [
    (AuditOutcome::Accepted, "accepted"),
    (AuditOutcome::Rejected, "rejected"),
    (AuditOutcome::RejectedLocked, "rejected-locked"),
    (AuditOutcome::Locked, "locked"),
    (AuditOutcome::Replayed, "replayed"),
    (AuditOutcome::TooSoon, "too-soon"),
    (AuditOutcome::UnknownToken, "unknown-token"),
    (AuditOutcome::RateLimited, "rate-limited"),
    (AuditOutcome::Disabled, "disabled"),
    (AuditOutcome::Ok, "ok"),
    (AuditOutcome::AlreadyBound, "already-bound"),
    (AuditOutcome::UserHasToken, "user-has-token"),
    (AuditOutcome::Temporary, "temporary"),
];

impl AuditOutcome {
    /// The text of a fixed label; `None` for the outcomes that carry counts.
    pub fn as_str(&self) -> Option<&'static str> {
        LABELS
            .iter()
            .find(|(outcome, _)| outcome == self)
            .map(|(_, text)| *text)
    }

    /// The stored text: borrowed for a fixed label (the verification path allocates
    /// nothing), owned for the outcomes with counts.
    pub fn text(&self) -> Cow<'static, str> {
        match self {
            AuditOutcome::Enrolled { count } => Cow::Owned(format!("{count} token(s)")),
            AuditOutcome::Imported { imported, refused } => {
                Cow::Owned(format!("{imported} imported, {refused} refused"))
            }
            AuditOutcome::Rotated {
                resealed,
                key,
                failed,
            } => Cow::Owned(format!("{resealed} resealed under {key}, {failed} failed")),
            AuditOutcome::Named { name } => Cow::Owned(format!("name {name}")),
            fixed => Cow::Borrowed(fixed.as_str().unwrap_or("")),
        }
    }
}

impl fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl From<&Outcome> for AuditOutcome {
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Accepted(_) => AuditOutcome::Accepted,
            Outcome::Rejected { attempts_left: 0 } => AuditOutcome::RejectedLocked,
            Outcome::Rejected { .. } => AuditOutcome::Rejected,
            Outcome::Locked { .. } => AuditOutcome::Locked,
            Outcome::Replayed => AuditOutcome::Replayed,
            Outcome::TooSoon { .. } => AuditOutcome::TooSoon,
            Outcome::UnknownToken => AuditOutcome::UnknownToken,
            Outcome::RateLimited { .. } => AuditOutcome::RateLimited,
            Outcome::Disabled => AuditOutcome::Disabled,
        }
    }
}

impl FromStr for AuditOutcome {
    type Err = UnknownAuditText;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = UnknownAuditText { what: "outcome" };
        if let Some((outcome, _)) = LABELS.iter().find(|(_, text)| *text == s) {
            return Ok(outcome.clone());
        }
        let number = |n: &str| -> Result<u64, UnknownAuditText> {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(unknown);
            }
            n.parse().map_err(|_| unknown)
        };
        if let Some(name) = s.strip_prefix("name ") {
            return Ok(AuditOutcome::Named {
                name: name.to_owned(),
            });
        }
        if let Some(count) = s.strip_suffix(" token(s)") {
            return Ok(AuditOutcome::Enrolled {
                count: number(count)?,
            });
        }
        if let Some(rest) = s.strip_suffix(" refused") {
            let (imported, refused) = rest.split_once(" imported, ").ok_or(unknown)?;
            return Ok(AuditOutcome::Imported {
                imported: number(imported)?,
                refused: number(refused)?,
            });
        }
        if let Some(rest) = s.strip_suffix(" failed") {
            // The key id may hold anything printable, so it is found between the fixed
            // words around it: the resealed count before, the failed count after.
            let (head, failed) = rest.rsplit_once(", ").ok_or(unknown)?;
            let (resealed, key) = head.split_once(" resealed under ").ok_or(unknown)?;
            return Ok(AuditOutcome::Rotated {
                resealed: number(resealed)?,
                key: KeyId::new(key).map_err(|_| unknown)?,
                failed: number(failed)?,
            });
        }
        Err(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_from_its_text() {
        for action in AuditAction::ALL {
            assert_eq!(action.as_str().parse::<AuditAction>(), Ok(action));
        }
        let key = KeyId::new("k2, old, resealed under x").unwrap();
        let counted = [
            AuditOutcome::Enrolled { count: 3 },
            AuditOutcome::Imported {
                imported: 2,
                refused: 1,
            },
            AuditOutcome::Rotated {
                resealed: 7,
                key,
                failed: 0,
            },
            AuditOutcome::Named {
                name: "203.0.113.9".to_owned(),
            },
        ];
        for outcome in LABELS.iter().map(|(o, _)| o.clone()).chain(counted) {
            assert_eq!(outcome.text().parse::<AuditOutcome>(), Ok(outcome));
        }
        assert_eq!(
            AuditOutcome::Enrolled { count: 3 }.to_string(),
            "3 token(s)"
        );
        assert_eq!(
            AuditOutcome::Rotated {
                resealed: 7,
                key: KeyId::new("k2").unwrap(),
                failed: 1
            }
            .to_string(),
            "7 resealed under k2, 1 failed"
        );
    }

    #[test]
    fn other_texts_are_refused() {
        for text in [
            "",
            "OK",
            "lock",
            "x token(s)",
            " token(s)",
            "1 imported",
            "-1 token(s)",
        ] {
            assert!(text.parse::<AuditOutcome>().is_err(), "{text}");
        }
        for text in ["", "Verify", "ok", "auto_unlock"] {
            assert!(text.parse::<AuditAction>().is_err(), "{text}");
        }
    }

    #[test]
    fn every_outcome_label_is_a_value() {
        for (outcome, label) in [
            (Outcome::Replayed, "replayed"),
            (Outcome::Rejected { attempts_left: 0 }, "rejected-locked"),
            (Outcome::Rejected { attempts_left: 2 }, "rejected"),
            (Outcome::Disabled, "disabled"),
        ] {
            assert_eq!(AuditOutcome::from(&outcome).as_str(), Some(label));
            assert_eq!(outcome.label(), label);
        }
    }
}
