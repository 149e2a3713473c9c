//! UTC times as people and SIEMs read them (RFC 3339, `2026-12-02T16:00:00Z`), for the audit
//! commands. The calendar arithmetic is `codereader_otp::calendar` rather than a date crate:
//! the server only ever prints and parses UTC.

use anyhow::{Result, bail};
use codereader_otp::calendar::{civil_from_days, days_from_civil};

/// `2026-12-02T16:00:00Z` for Unix seconds.
pub fn rfc3339(unix: u64) -> String {
    let secs = i64::try_from(unix).unwrap_or(i64::MAX);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Unix seconds from `1764691200`, `2026-12-02` (midnight UTC) or `2026-12-02T16:00:00Z`.
///
/// # Errors
/// Anything else, or a date before 1970.
pub fn parse_time(text: &str) -> Result<u64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(text.parse()?);
    }
    let bad =
        || anyhow::anyhow!("'{text}' is not Unix seconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ");
    let (date, time) = match text.split_once(['T', 't', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (y, m, d): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
        || civil_from_days(days_from_civil(y, m, d)) != (y, m, d)
    {
        return Err(bad());
    }
    let mut seconds = days_from_civil(y, m, d) * 86_400;
    if let Some(time) = time {
        let time = time.strip_suffix(['Z', 'z']).ok_or_else(bad)?;
        let mut hms = time.split(':');
        let (Some(h), Some(mi), Some(s), None) = (hms.next(), hms.next(), hms.next(), hms.next())
        else {
            return Err(bad());
        };
        let (h, mi, s): (i64, i64, i64) = (
            h.parse().map_err(|_| bad())?,
            mi.parse().map_err(|_| bad())?,
            s.parse().map_err(|_| bad())?,
        );
        if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..60).contains(&s) {
            return Err(bad());
        }
        seconds += h * 3600 + mi * 60 + s;
    }
    if seconds < 0 {
        bail!("'{text}' is before 1970");
    }
    Ok(u64::try_from(seconds)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        for t in [0, 59, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_time(&rfc3339(t)).unwrap(), t);
        }
        assert_eq!(parse_time("2000-02-29").unwrap(), 951_782_400);
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000);
        for bad in [
            "",
            "2023-02-29",
            "2023-13-01",
            "2023-1-1T25:00:00Z",
            "yesterday",
            "1969-12-31",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
