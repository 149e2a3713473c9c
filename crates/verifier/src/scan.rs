//! Constant-time window scans: every candidate in a window is computed and compared, with no
//! early exit, so the time taken reveals neither whether nor where a code matched.
//!
//! The loops run over public bounds (the window comes from the policy and the stored state,
//! never from the code) and accumulate results with `subtle` selections.

use codereader_otp::{Code, Counter, Hotp};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq, ConstantTimeLess};

/// What a window scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The code matches an unused value (the lowest such, if several collide).
    Fresh(u64),
    /// The code matches only values below `next`: already used or skipped.
    Stale,
    /// No match.
    Miss,
}

/// Scans `lo..=hi` for `code`; values below `next` count as used.
pub(crate) fn scan(hotp: &Hotp, code: &Code, lo: u64, hi: u64, next: u64) -> Scan {
    let mut found = Choice::from(0);
    let mut stale = Choice::from(0);
    let mut chosen = 0u64;
    let mut value = lo;
    loop {
        let equal = hotp.code(Counter(value)).ct_eq(code);
        let fresh = !value.ct_lt(&next);
        let take = equal & fresh & !found;
        chosen.conditional_assign(&value, take);
        found |= equal & fresh;
        stale |= equal & !fresh;
        if value >= hi {
            break;
        }
        value += 1;
    }
    if bool::from(found) {
        Scan::Fresh(chosen)
    } else if bool::from(stale) {
        Scan::Stale
    } else {
        Scan::Miss
    }
}

/// Scans `lo..=hi` for a value `v >= next` where `first` matches `v` and `second` matches
/// `v + 1`; returns the lowest such `v`.
pub(crate) fn scan_pair(
    hotp: &Hotp,
    first: &Code,
    second: &Code,
    lo: u64,
    hi: u64,
    next: u64,
) -> Option<u64> {
    let mut found = Choice::from(0);
    let mut chosen = 0u64;
    let mut previous_first = hotp.code(Counter(lo)).ct_eq(first);
    let mut value = lo;
    while value < hi.saturating_add(1) && value < u64::MAX {
        let candidate = hotp.code(Counter(value + 1));
        let pair = previous_first & candidate.ct_eq(second) & !value.ct_lt(&next);
        chosen.conditional_assign(&value, pair & !found);
        found |= pair;
        previous_first = candidate.ct_eq(first);
        value += 1;
    }
    bool::from(found).then_some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use codereader_otp::{Algorithm, Digits, KeyPolicy, Secret};

    fn hotp() -> Hotp {
        let s = Secret::new(b"12345678901234567890".to_vec(), KeyPolicy::Rfc4226).unwrap();
        Hotp::new(&s, Algorithm::Sha1, Digits::SIX)
    }

    #[test]
    fn finds_fresh_stale_and_misses() {
        let h = hotp();
        // RFC 4226 appendix D: counter 5 is 254676.
        let code = Code::parse("254676").unwrap();
        assert_eq!(scan(&h, &code, 0, 9, 0), Scan::Fresh(5));
        assert_eq!(scan(&h, &code, 0, 9, 5), Scan::Fresh(5));
        assert_eq!(scan(&h, &code, 0, 9, 6), Scan::Stale);
        assert_eq!(scan(&h, &code, 6, 9, 6), Scan::Miss);
        assert_eq!(scan(&h, &code, 5, 5, 0), Scan::Fresh(5));
        assert_eq!(scan(&h, &code, u64::MAX - 1, u64::MAX, 0), Scan::Miss);
    }

    #[test]
    fn pairs_must_be_consecutive_and_fresh() {
        let h = hotp();
        let c5 = Code::parse("254676").unwrap();
        let c6 = Code::parse("287922").unwrap();
        let c7 = Code::parse("162583").unwrap();
        assert_eq!(scan_pair(&h, &c5, &c6, 0, 100, 0), Some(5));
        assert_eq!(scan_pair(&h, &c5, &c7, 0, 100, 0), None);
        assert_eq!(scan_pair(&h, &c6, &c5, 0, 100, 0), None);
        assert_eq!(scan_pair(&h, &c5, &c6, 0, 100, 6), None);
        assert_eq!(scan_pair(&h, &c5, &c6, 0, 4, 0), None);
        assert_eq!(scan_pair(&h, &c5, &c6, 5, 5, 0), Some(5));
    }
}
