//! Times for people: Unix milliseconds shown as UTC dates and times, and dates typed
//! by people read back as Unix milliseconds (the proleptic Gregorian calendar, in
//! whole days from 1970-01-01, by Howard Hinnant's `civil_from_days`).

/// Milliseconds in one day.
pub const DAY_MS: u64 = 86_400_000;

/// `(year, month 1..=12, day 1..=31)` of day `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Days from 1970-01-01 to `year-month-day` (the inverse of `civil_from_days`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-28 09:30` (UTC) for Unix milliseconds `ms`.
pub fn utc_minute(ms: u64) -> String {
    let secs = ms / 1_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (y, mo, d) = civil_from_days(days);
    let in_day = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}",
        in_day / 3_600,
        (in_day / 60) % 60
    )
}

/// `2026-11-28 09:30:12` (UTC) for Unix milliseconds `ms`.
pub fn utc_second(ms: u64) -> String {
    format!("{}:{:02}", utc_minute(ms), (ms / 1_000) % 60)
}

/// `2026-11-28T09:30:12Z`: the instant for machines (an HTML `datetime` attribute).
pub fn iso_second(ms: u64) -> String {
    utc_second(ms).replacen(' ', "T", 1) + "Z"
}

/// Now, as Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix milliseconds at 00:00 UTC of a date typed as `YYYY-MM-DD` (what an HTML date
/// field sends), or why it is not one.
pub fn parse_day(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a date like 2026-11-28");
    let mut parts = text.trim().splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(y, 4) && digits(m, 2) && digits(d, 2)) {
        return Err(bad());
    }
    let (year, month, day): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if year < 1970 || !(1..=12).contains(&month) || day == 0 {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    // 2026-02-30 would come back as 2026-03-02: refuse what does not round-trip.
    if civil_from_days(days) != (year, month, day) {
        return Err(bad());
    }
    u64::try_from(days)
        .ok()
        .and_then(|d| d.checked_mul(DAY_MS))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_read_as_people_write_them() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00");
        // 2000-02-29 12:34:56 UTC, a leap day in a century year.
        assert_eq!(utc_minute(951_827_696_000), "2000-02-29 12:34");
        assert_eq!(utc_minute(1_795_858_200_000), "2026-11-28 09:30");
        assert_eq!(utc_second(1_795_858_212_345), "2026-11-28 09:30:12");
    }

    #[test]
    fn dates_round_trip_and_impossible_ones_are_refused() {
        assert_eq!(parse_day("1970-01-01"), Ok(0));
        assert_eq!(parse_day("2000-02-29"), Ok(951_782_400_000));
        for day in 0..30_000u64 {
            let text = utc_minute(day * DAY_MS);
            assert_eq!(parse_day(&text[..10]), Ok(day * DAY_MS), "{text}");
        }
        for bad in [
            "2026-02-30",
            "2025-02-29",
            "2026-13-01",
            "2026-1-01",
            "28/11/2026",
            "",
            "1969-12-31",
        ] {
            assert!(parse_day(bad).is_err(), "{bad}");
        }
    }
}
