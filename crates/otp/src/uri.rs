//! The otpauth:// Key URI format that authenticator apps scan from QR codes:
//! `otpauth://TYPE/ISSUER:ACCOUNT?secret=BASE32&issuer=ISSUER&algorithm=SHA1&digits=6&period=30`.
//!
//! Parsing is strict where a mistake would produce wrong codes (bad base32, bad percent
//! escapes, duplicate or contradictory parameters) and lenient where apps differ harmlessly
//! (case of the scheme, type, algorithm and secret; padding; unknown extra parameters such as
//! `image`). No error message ever contains the secret, and none echoes raw input.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::code::{Digits, DigitsError};
use crate::hotp::{Algorithm, Counter, Hotp};
use crate::percent::{self, Plus};
use crate::secret::{KeyPolicy, Secret, SecretError};
use crate::totp::{Period, Totp, UnixTime};

/// Longest URI accepted; real ones are a few hundred bytes.
const MAX_URI_LEN: usize = 4096;

/// Characters left as they are when formatting (RFC 3986 unreserved).
const ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Whether the token counts time or events, with the parameter that goes with each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtpKind {
    /// Time-based (RFC 6238).
    Totp {
        /// Seconds per code.
        period: Period,
    },
    /// Counter-based (RFC 4226).
    Hotp {
        /// The next counter to use.
        counter: Counter,
    },
}

/// Why an otpauth URI was refused. No variant carries the secret or raw input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// Longer than any real URI.
    #[error("the URI is {len} bytes long; at most {max} are accepted")]
    TooLong {
        /// Length given.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// Not of the form `otpauth://...`.
    #[error("not an otpauth URI: it must start with otpauth://")]
    NotOtpauth,
    /// The type after `otpauth://` is not `totp` or `hotp`.
    #[error("unknown token type: expected otpauth://totp/... or otpauth://hotp/...")]
    UnknownType,
    /// No label (`issuer:account`) after the type.
    #[error("the URI has no label: expected otpauth://TYPE/ISSUER:ACCOUNT?...")]
    MissingLabel,
    /// The account part of the label is empty.
    #[error("the account name in the label is empty")]
    EmptyAccount,
    /// The issuer (in the label or the `issuer` parameter) is empty.
    #[error("the issuer is empty")]
    EmptyIssuer,
    /// An issuer or account name contains a colon, which the format reserves as separator.
    #[error("the {part} contains a colon, which separates issuer and account")]
    ColonInName {
        /// `issuer` or `account`.
        part: &'static str,
    },
    /// An account name starts or ends with white space (it would not survive a round trip).
    #[error("the account name starts or ends with white space")]
    SpaceAroundAccount,
    /// A `%` not followed by two hex digits.
    #[error("bad percent escape in the {part}: % must be followed by two hex digits")]
    BadPercentEncoding {
        /// Which part of the URI.
        part: &'static str,
    },
    /// Percent-decoding gave bytes that are not UTF-8.
    #[error("the {part} is not valid UTF-8 after percent-decoding")]
    InvalidUtf8 {
        /// Which part of the URI.
        part: &'static str,
    },
    /// A query item without `=`.
    #[error("query parameter number {index} has no '=' (expected name=value)")]
    MalformedParameter {
        /// 1-based position in the query.
        index: usize,
    },
    /// A known parameter given twice.
    #[error("the parameter '{name}' is given more than once")]
    DuplicateParameter {
        /// Parameter name.
        name: &'static str,
    },
    /// No `secret` parameter.
    #[error("the URI has no secret parameter")]
    MissingSecret,
    /// The secret is not acceptable.
    #[error("bad secret: {0}")]
    Secret(SecretError),
    /// `algorithm` is not SHA1, SHA256 or SHA512.
    #[error("unknown algorithm; expected SHA1, SHA256 or SHA512")]
    UnknownAlgorithm,
    /// `digits` is not a number.
    #[error("the digits parameter is not a number")]
    InvalidDigits,
    /// `digits` is a number outside 6..=8.
    #[error("bad digits parameter: {0}")]
    Digits(DigitsError),
    /// `period` is not a positive whole number of seconds.
    #[error("the period parameter must be a whole number of seconds, at least 1")]
    InvalidPeriod,
    /// An hotp URI without `counter`.
    #[error("an hotp URI needs a counter parameter")]
    MissingCounter,
    /// `counter` is not a number that fits in 64 bits.
    #[error("the counter parameter must be a whole number from 0 to 18446744073709551615")]
    InvalidCounter,
    /// The label's issuer and the `issuer` parameter differ.
    #[error("the issuer in the label and the issuer parameter differ")]
    IssuerMismatch,
}

// The inner errors are part of the message, not `source()`s: a chain printer (anyhow's
// `{:#}`) would otherwise say the same thing twice.
impl From<SecretError> for UriError {
    fn from(e: SecretError) -> Self {
        UriError::Secret(e)
    }
}

impl From<DigitsError> for UriError {
    fn from(e: DigitsError) -> Self {
        UriError::Digits(e)
    }
}

/// A parsed otpauth URI: everything needed to compute the token's codes.
///
/// There is no `Display`: the URI contains the secret. Use [`KeyUri::to_uri_string`]
/// deliberately. `Debug` redacts the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUri {
    kind: OtpKind,
    issuer: Option<String>,
    account: String,
    secret: Secret,
    algorithm: Algorithm,
    digits: Digits,
}

impl KeyUri {
    /// Builds a key URI from parts.
    ///
    /// # Errors
    /// [`UriError::EmptyAccount`], [`UriError::EmptyIssuer`], [`UriError::ColonInName`] or
    /// [`UriError::SpaceAroundAccount`].
    pub fn new(
        kind: OtpKind,
        issuer: Option<String>,
        account: String,
        secret: Secret,
        algorithm: Algorithm,
        digits: Digits,
    ) -> Result<Self, UriError> {
        if account.is_empty() {
            return Err(UriError::EmptyAccount);
        }
        if account.contains(':') {
            return Err(UriError::ColonInName { part: "account" });
        }
        if account.trim() != account {
            return Err(UriError::SpaceAroundAccount);
        }
        if let Some(issuer) = &issuer {
            if issuer.is_empty() {
                return Err(UriError::EmptyIssuer);
            }
            if issuer.contains(':') {
                return Err(UriError::ColonInName { part: "issuer" });
            }
        }
        Ok(KeyUri {
            kind,
            issuer,
            account,
            secret,
            algorithm,
            digits,
        })
    }

    /// Parses an otpauth URI.
    ///
    /// # Errors
    /// A [`UriError`] that says which part is wrong and how.
    pub fn parse(text: &str, policy: KeyPolicy) -> Result<Self, UriError> {
        if text.len() > MAX_URI_LEN {
            return Err(UriError::TooLong {
                len: text.len(),
                max: MAX_URI_LEN,
            });
        }
        let (scheme, rest) = text.split_once("://").ok_or(UriError::NotOtpauth)?;
        if !scheme.eq_ignore_ascii_case("otpauth") {
            return Err(UriError::NotOtpauth);
        }
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (kind_name, rest) = rest.split_once('/').ok_or_else(|| {
            if is_type(rest.split_once('?').map_or(rest, |(t, _)| t)) {
                UriError::MissingLabel
            } else {
                UriError::UnknownType
            }
        })?;
        let is_totp = if kind_name.eq_ignore_ascii_case("totp") {
            true
        } else if kind_name.eq_ignore_ascii_case("hotp") {
            false
        } else {
            return Err(UriError::UnknownType);
        };
        let (raw_label, query) = rest.split_once('?').unwrap_or((rest, ""));
        if raw_label.is_empty() {
            return Err(UriError::MissingLabel);
        }
        let label = decode(raw_label, "label", Plus::Literal)?;
        let (label_issuer, account) = match label.split_once(':') {
            Some((issuer, account)) => {
                if issuer.is_empty() {
                    return Err(UriError::EmptyIssuer);
                }
                (Some(issuer.to_owned()), account.trim_start_matches(' '))
            }
            None => (None, label.as_str()),
        };

        let params = Params::parse(query)?;
        let secret_text = params.secret.ok_or(UriError::MissingSecret)?;
        let secret = Secret::from_base32(&secret_text, policy);
        zeroize::Zeroize::zeroize(&mut { secret_text });
        let secret = secret?;

        let issuer = match (label_issuer, params.issuer) {
            (Some(a), Some(b)) if a != b => return Err(UriError::IssuerMismatch),
            (a, b) => a.or(b),
        };
        let algorithm = match params.algorithm {
            Some(name) => name.parse().map_err(|_| UriError::UnknownAlgorithm)?,
            None => Algorithm::Sha1,
        };
        let digits = match params.digits {
            Some(d) => {
                let n = parse_number(&d).ok_or(UriError::InvalidDigits)?;
                Digits::new(u32::try_from(n).map_err(|_| UriError::InvalidDigits)?)?
            }
            None => Digits::SIX,
        };
        let kind = if is_totp {
            let period = match params.period {
                Some(p) => parse_number(&p)
                    .and_then(|s| Period::new(s).ok())
                    .ok_or(UriError::InvalidPeriod)?,
                None => Period::DEFAULT,
            };
            OtpKind::Totp { period }
        } else {
            let counter = params.counter.ok_or(UriError::MissingCounter)?;
            OtpKind::Hotp {
                counter: Counter(parse_number(&counter).ok_or(UriError::InvalidCounter)?),
            }
        };
        KeyUri::new(kind, issuer, account.to_owned(), secret, algorithm, digits)
    }

    /// Formats the URI with every parameter spelled out, so that parsing it gives back this
    /// exact value. The string contains the secret: do not log it.
    pub fn to_uri_string(&self) -> String {
        let escape = |s: &str| utf8_percent_encode(s, ESCAPE).to_string();
        let (kind, extra) = match self.kind {
            OtpKind::Totp { period } => ("totp", format!("period={}", period.seconds())),
            OtpKind::Hotp { counter } => ("hotp", format!("counter={}", counter.0)),
        };
        let mut out = format!("otpauth://{kind}/");
        if let Some(issuer) = &self.issuer {
            out.push_str(&escape(issuer));
            out.push(':');
        }
        out.push_str(&escape(&self.account));
        out.push_str("?secret=");
        out.push_str(&self.secret.to_base32());
        if let Some(issuer) = &self.issuer {
            out.push_str("&issuer=");
            out.push_str(&escape(issuer));
        }
        out.push_str(&format!(
            "&algorithm={}&digits={}&{extra}",
            self.algorithm, self.digits
        ));
        out
    }

    /// TOTP or HOTP, with period or counter.
    pub fn kind(&self) -> OtpKind {
        self.kind
    }

    /// The issuer (the service), if given.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The shared secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The hash function.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The code length.
    pub fn digits(&self) -> Digits {
        self.digits
    }

    /// An HOTP generator for this key (for a TOTP key, the generator under its time steps).
    pub fn hotp(&self) -> Hotp {
        Hotp::new(&self.secret, self.algorithm, self.digits)
    }

    /// A TOTP generator with T0 = 0 (the URI format has no T0), or `None` for an hotp URI.
    pub fn totp(&self) -> Option<Totp> {
        match self.kind {
            OtpKind::Totp { period } => Some(Totp::new(
                &self.secret,
                self.algorithm,
                self.digits,
                period,
                UnixTime(0),
            )),
            OtpKind::Hotp { .. } => None,
        }
    }
}

impl std::str::FromStr for KeyUri {
    type Err = UriError;
    /// Parses with [`KeyPolicy::Rfc4226`] (secrets of at least 128 bits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyUri::parse(s, KeyPolicy::Rfc4226)
    }
}

fn is_type(s: &str) -> bool {
    s.eq_ignore_ascii_case("totp") || s.eq_ignore_ascii_case("hotp")
}

/// Decimal digits only (no sign, no spaces), fitting in 64 bits.
fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The known query parameters, each at most once.
#[derive(Default)]
struct Params {
    secret: Option<String>,
    issuer: Option<String>,
    algorithm: Option<String>,
    digits: Option<String>,
    period: Option<String>,
    counter: Option<String>,
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Params { .. }")
    }
}

impl Params {
    fn parse(query: &str) -> Result<Self, UriError> {
        let mut params = Params::default();
        for (index, item) in query.split('&').enumerate() {
            if item.is_empty() {
                continue;
            }
            let (name, raw) = item
                .split_once('=')
                .ok_or(UriError::MalformedParameter { index: index + 1 })?;
            let (slot, name) = match name {
                "secret" => (&mut params.secret, "secret"),
                "issuer" => (&mut params.issuer, "issuer"),
                "algorithm" => (&mut params.algorithm, "algorithm"),
                "digits" => (&mut params.digits, "digits"),
                "period" => (&mut params.period, "period"),
                "counter" => (&mut params.counter, "counter"),
                // Apps add parameters such as `image` or `color`; they do not change codes.
                _ => continue,
            };
            if slot.is_some() {
                return Err(UriError::DuplicateParameter { name });
            }
            let value = decode(raw, name, Plus::Space)?;
            if name == "issuer" && value.is_empty() {
                return Err(UriError::EmptyIssuer);
            }
            *slot = Some(value);
        }
        Ok(params)
    }
}

/// Strict percent-decoding ([`crate::percent::decode`]) to UTF-8 text. In query values `+`
/// means a space (HTML form encoding, which many issuers use); in the label it is literal.
fn decode(raw: &str, part: &'static str, plus: Plus) -> Result<String, UriError> {
    let out = percent::decode(raw, plus).map_err(|_| UriError::BadPercentEncoding { part })?;
    String::from_utf8(out).map_err(|e| {
        let mut bytes = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut bytes);
        UriError::InvalidUtf8 { part }
    })
}
