//! Constant-time window scans: every candidate in a window is computed and compared, with no
//! early exit, so the time taken reveals not where a code matched, and whether it matched
//! only as much as the answer does (an accepted code skips the used values, which serve only
//! to tell a replay from a wrong code; see [`scan`]).
//!
//! The loops run over public bounds (the window comes from the policy and the stored state,
//! never from the code) and accumulate results with `subtle` selections; only the code
//! comparisons are secret (whether a value is already used is public, like the window).
//!
//! The candidates come from [`Hotp::codes`], which computes them several at a time, in
//! groups whose sizes depend only on the window's length: on CPUs with SHA-NI their
//! HMAC-SHA-1 compressions run interleaved, and a ±1 window's three codes cost about 60% of
//! computing them one by one (the `verify` benchmark prints both rates).

use codereader_otp::{Code, Counter, Hotp};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

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
///
/// The unused values (`next..=hi`) are scanned first; the used ones (`lo..next`) only when
/// no unused value matched, to tell a replay from a wrong code. That choice follows the
/// outcome the caller learns anyway (accepted or not), never where in the window a code
/// matched: each part is scanned whole, in constant time, and a code that is not accepted
/// costs the whole window as before. An accepted code skips computing the used values
/// (with a ±1 TOTP window in steady use, one HMAC in three).
pub(crate) fn scan(hotp: &Hotp, code: &Code, lo: u64, hi: u64, next: u64) -> Scan {
    // `lo > hi` scans `lo` alone, as callers have always been given.
    let hi = hi.max(lo);
    if next <= hi {
        if let Some(value) = lowest_match(hotp, code, lo.max(next), hi) {
            return Scan::Fresh(value);
        }
    }
    if lo < next && lowest_match(hotp, code, lo, hi.min(next - 1)).is_some() {
        Scan::Stale
    } else {
        Scan::Miss
    }
}

/// The lowest value of `lo..=hi` (`lo <= hi`) whose code is `code`: every candidate is
/// computed and compared, with no early exit.
fn lowest_match(hotp: &Hotp, code: &Code, lo: u64, hi: u64) -> Option<u64> {
    let mut found = Choice::from(0);
    let mut chosen = 0u64;
    for (Counter(value), candidate) in hotp.codes(Counter(lo), Counter(hi)) {
        let equal = candidate.ct_eq(code);
        chosen.conditional_assign(&value, equal & !found);
        found |= equal;
    }
    bool::from(found).then_some(chosen)
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
    // Codes of `lo..=hi + 1` (`u64::MAX` has no successor): each after the first closes the
    // pair that starts one counter earlier.
    let mut codes = hotp.codes(Counter(lo), Counter(hi.saturating_add(1).max(lo)));
    let (_, start) = codes.next()?;
    let mut previous_first = start.ct_eq(first);
    for (Counter(counter), candidate) in codes {
        let value = counter - 1;
        let fresh = Choice::from(u8::from(value >= next));
        let pair = previous_first & candidate.ct_eq(second) & fresh;
        chosen.conditional_assign(&value, pair & !found);
        found |= pair;
        previous_first = candidate.ct_eq(first);
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

    /// The scans as they were written before `Hotp::codes`: one `Hotp::code` per value.
    fn scan_one_by_one(hotp: &Hotp, code: &Code, lo: u64, hi: u64, next: u64) -> Scan {
        let (mut fresh, mut stale) = (None, false);
        let mut value = lo;
        loop {
            if hotp.code(Counter(value)) == *code {
                if value >= next {
                    fresh = fresh.or(Some(value));
                } else {
                    stale = true;
                }
            }
            if value >= hi {
                break;
            }
            value += 1;
        }
        match (fresh, stale) {
            (Some(v), _) => Scan::Fresh(v),
            (None, true) => Scan::Stale,
            (None, false) => Scan::Miss,
        }
    }

    fn scan_pair_one_by_one(
        hotp: &Hotp,
        first: &Code,
        second: &Code,
        lo: u64,
        hi: u64,
        next: u64,
    ) -> Option<u64> {
        let mut value = lo;
        while value < hi.saturating_add(1) && value < u64::MAX {
            if value >= next
                && hotp.code(Counter(value)) == *first
                && hotp.code(Counter(value + 1)) == *second
            {
                return Some(value);
            }
            value += 1;
        }
        None
    }

    #[test]
    fn scans_agree_with_code_by_code_scans() {
        // Windows of 1 to 8 values (every group size of `Hotp::codes`, and several groups)
        // near 0 and at the top of the counter range; each case looks for the code of a
        // chosen value (the window's edges, its middle, just below it) and its successor.
        let h = hotp();
        let bases = [0u64, 1_000, u64::MAX - 12];
        let mut checked = 0;
        for base in bases {
            for lo_off in 0..6u64 {
                for width in 0..8u64 {
                    let lo = base + lo_off;
                    let hi = lo.saturating_add(width);
                    for target in [lo, hi, lo + width / 2, lo.saturating_sub(1)] {
                        let code = h.code(Counter(target));
                        let second = h.code(Counter(target.saturating_add(1)));
                        for next in [0, lo, target, target.saturating_add(1), hi] {
                            assert_eq!(
                                scan(&h, &code, lo, hi, next),
                                scan_one_by_one(&h, &code, lo, hi, next),
                                "lo {lo} hi {hi} target {target} next {next}"
                            );
                            assert_eq!(
                                scan_pair(&h, &code, &second, lo, hi, next),
                                scan_pair_one_by_one(&h, &code, &second, lo, hi, next),
                                "lo {lo} hi {hi} target {target} next {next}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 3 * 6 * 8 * 4 * 5);
        // `lo > hi` scans `lo` alone and finds no pair, as before.
        let c7 = h.code(Counter(7));
        assert_eq!(scan(&h, &c7, 7, 3, 0), Scan::Fresh(7));
        assert_eq!(scan_one_by_one(&h, &c7, 7, 3, 0), Scan::Fresh(7));
        let c8 = h.code(Counter(8));
        assert_eq!(scan_pair(&h, &c7, &c8, 7, 3, 0), None);
        assert_eq!(scan_pair(&h, &c7, &c8, 7, 6, 0), None);
        assert_eq!(scan_pair(&h, &c7, &c8, 7, 7, 0), Some(7));
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
