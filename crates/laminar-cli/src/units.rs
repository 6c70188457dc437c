//! Human-readable numbers for progress lines and summaries: counts with thousands
//! separators, rates, durations and watermarks as UTC timestamps.

use std::time::Duration;

/// The watermark of a source that has ended (end of time).
pub(crate) const END_OF_TIME: i64 = i64::MAX;

/// `1234567` -> `1,234,567`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` with a singular or plural noun: `1 row`, `2 rows`.
pub(crate) fn plural(n: u64, noun: &str) -> String {
    format!("{} {noun}{}", count(n), if n == 1 { "" } else { "s" })
}

/// `1.234s`, `2m 05s`.
/// `512 B`, `12.3 KiB`, `4.0 MiB`, `1.2 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h {:02}m {:02}s", secs / 3600, secs / 60 % 60, secs % 60)
    }
}

/// A watermark (epoch ms) as `2023-11-14 22:13:20.000` UTC; `-` for none, `end` once the
/// sources ended.
pub(crate) fn watermark(w: Option<i64>) -> String {
    match w {
        None => "-".to_string(),
        Some(END_OF_TIME) => "end".to_string(),
        Some(ms) => arrow::temporal_conversions::timestamp_ms_to_datetime(ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_else(|| ms.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_numbers() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(plural(1, "row"), "1 row");
        assert_eq!(plural(2000, "event"), "2,000 events");
        assert_eq!(duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(duration(Duration::from_secs(125)), "2m 05s");
        assert_eq!(
            watermark(Some(1_700_000_000_000)),
            "2023-11-14 22:13:20.000"
        );
        assert_eq!(watermark(None), "-");
        assert_eq!(watermark(Some(END_OF_TIME)), "end");
    }
}
