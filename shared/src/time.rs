//! Wall-clock helpers: RFC 3339 timestamps without pulling in a date library.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-11-23T06:01:02.345Z` for a Unix time in milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// [`rfc3339_ms`] as a Lua function for Redis scripts, `rfc3339_ms(ms)`: a script that renders a
/// timestamp it computed from Redis' clock writes it exactly as Rust does (the e2e suite checks
/// the two agree). The script library is [`crate::lua::RFC3339`].
pub const RFC3339_LUA: &str = include_str!("lua/rfc3339.lua");

pub fn now_rfc3339() -> String {
    rfc3339_ms(now_ms())
}

/// A time as a record stores it, as served: milliseconds since the epoch (13 digits where RFC
/// 3339 takes 24, and records are fsynced) rendered with [`rfc3339_ms`]; text written before
/// records stored milliseconds, as it is.
pub fn stored_time(text: &str) -> String {
    match text.parse::<u64>() {
        Ok(ms) => rfc3339_ms(ms),
        Err(_) => text.to_string(),
    }
}

/// A UTC RFC 3339 time (`2026-12-04T10:00:00Z`, fractions of a second optional, `Z` or
/// `+00:00`) as Unix milliseconds; `None` for anything else, or a time before 1970.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = text.get(from..from + len)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, m, d, hh, mm, ss) = (
        num(0, 4)?,
        num(5, 2)?,
        num(8, 2)?,
        num(11, 2)?,
        num(14, 2)?,
        num(17, 2)?,
    );
    let rest = &text[19..];
    let (millis, zone) = match rest.strip_prefix('.') {
        Some(frac) => {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            let ms: i64 = format!("{:0<3}", &frac[..digits.min(3)]).parse().ok()?;
            (ms, &frac[digits..])
        }
        None => (0, rest),
    };
    if !matches!(zone, "Z" | "z" | "+00:00" | "-00:00") {
        return None;
    }
    let days_in_month = [
        31,
        if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) {
            29
        } else {
            28
        },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month[(m - 1) as usize] || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let days = days_from_civil(y, m as u32, d as u32);
    let ms = ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis;
    u64::try_from(ms).ok()
}

// Howard Hinnant's civil-to-days algorithm.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_time_in_milliseconds_is_served_as_rfc3339_and_older_text_as_it_is() {
        assert_eq!(stored_time("1764928800123"), "2025-12-05T10:00:00.123Z");
        assert_eq!(stored_time("2026-12-05T10:00:00.000Z"), "2026-12-05T10:00:00.000Z");
        assert_eq!(stored_time(""), "");
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(1_795_420_800_000), "2026-11-23T08:00:00.000Z");
    }

    #[test]
    fn parses_what_it_formats_and_refuses_the_rest() {
        for ms in [0, 1_709_251_199_999, 1_795_420_800_000, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339_ms("2026-11-23T08:00:00Z"), Some(1_795_420_800_000));
        assert_eq!(parse_rfc3339_ms("2026-11-23T08:00:00.5+00:00"), Some(1_795_420_800_500));
        for bad in [
            "",
            "2026-11-23",
            "2026-11-23T08:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T08:00:00+01:00",
            "2026-11-23T08:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2026-1a-23T08:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
