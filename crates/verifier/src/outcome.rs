//! What a verification decided, as types: the caller matches on an [`Outcome`] and can only
//! get an [`Accepted`] proof from the verifier itself.

use codereader_otp::{Counter, TimeStep, UnixTime};

use crate::token::TokenId;

/// Which value a code matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// A TOTP time step.
    Step(TimeStep),
    /// An HOTP counter.
    Counter(Counter),
}

/// Proof that a code was accepted and the token's state advanced past it.
///
/// Only this crate constructs it (the fields are private), after the store's compare-and-set
/// succeeded, so holding one means "this code won, exactly once".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub(crate) token: TokenId,
    pub(crate) matched: Matched,
    pub(crate) drift: i64,
}

impl Accepted {
    /// The token that accepted the code.
    pub fn token(&self) -> &TokenId {
        &self.token
    }
    /// The step or counter the code matched.
    pub fn matched(&self) -> Matched {
        self.matched
    }
    /// How far the matched value was from the expected one: TOTP, steps from the current
    /// step (negative: the token's clock is behind); HOTP, counters ahead of the next one.
    pub fn drift(&self) -> i64 {
        self.drift
    }
}

/// The result of a verification. Errors (a broken database, a seed that does not open) are
/// not outcomes: they are [`crate::VerifyError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The code is right and was used now.
    Accepted(Accepted),
    /// The code is wrong; `attempts_left` more failures lock the token (0: it is now locked).
    Rejected {
        /// Failures still allowed before locking.
        attempts_left: u32,
    },
    /// The token is locked after too many failures.
    Locked {
        /// When it unlocks by itself, if the policy allows that.
        until: Option<UnixTime>,
    },
    /// The code is right but its step or counter was already used (or passed).
    Replayed,
    /// The growing delay after failures has not passed yet; nothing was checked.
    TooSoon {
        /// The first time another attempt is considered.
        retry_at: UnixTime,
    },
    /// No such token (or no token bound to that user).
    UnknownToken,
    /// The client has used up its failure budget ([`crate::ClientBudget`]); the code was not
    /// checked and no token was touched.
    RateLimited {
        /// The first time the client's next attempt is considered.
        retry_at: UnixTime,
    },
    /// The token was disabled by an administrator.
    Disabled,
}

impl Outcome {
    /// The proof, if the code was accepted.
    pub fn accepted(&self) -> Option<&Accepted> {
        match self {
            Outcome::Accepted(a) => Some(a),
            _ => None,
        }
    }

    /// Whether it spends a client's failure budget: anything but an accepted code or the
    /// replay of a right one (a double submit is not an attack).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Outcome::Accepted(_) | Outcome::Replayed)
    }

    /// A short stable label, as written to the audit trail (where a failure is always
    /// "rejected", followed by a "lock" event when it locked the token).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted(_) => "accepted",
            Outcome::Rejected { attempts_left: 0 } => "rejected-locked",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Locked { .. } => "locked",
            Outcome::Replayed => "replayed",
            Outcome::TooSoon { .. } => "too-soon",
            Outcome::UnknownToken => "unknown-token",
            Outcome::RateLimited { .. } => "rate-limited",
            Outcome::Disabled => "disabled",
        }
    }
}
