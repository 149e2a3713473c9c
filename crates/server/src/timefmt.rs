//! UTC times as people and SIEMs read them (RFC 3339, `2026-12-02T16:00:00Z`), for the audit
//! commands. A few lines of civil-calendar arithmetic (Howard Hinnant's `days_from_civil`)
//! rather than a date crate: the server only ever prints and parses UTC.

use anyhow::{Result, bail};

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both fit: day is 1..=31 and month 1..=12 by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

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
