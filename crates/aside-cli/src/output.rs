//! What every command shares in its output: one JSON document for scripts
//! (`--json`), two-column tables for people, progress bars on stderr, and
//! times written out without a date library.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};

/// Whether to draw progress bars: they go to stderr, so only when stderr is
/// a terminal (a log file or a pipe would fill with redraws), and never
/// with `--quiet` or `--json`.
pub(crate) fn show_progress(quiet: bool, json: bool) -> bool {
    !quiet && !json && std::io::stderr().is_terminal()
}

/// Writes `value` as the one JSON document on stdout.
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// A two-column table: a label, then its value (right-aligned when asked).
pub(crate) fn pairs<'a>(rows: impl IntoIterator<Item = (&'a str, String)>, numbers: bool) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    for (label, value) in rows {
        table.add_row([label.to_owned(), value]);
    }
    if numbers && let Some(column) = table.column_mut(1) {
        column.set_cell_alignment(CellAlignment::Right);
    }
    table
}

/// Unix milliseconds of `t` (0 before the epoch).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `t` as `2026-12-01 19:40:00.123 UTC`.
pub(crate) fn utc(t: SystemTime) -> String {
    let ms = unix_ms(t);
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `t` relative to `now`: "in 4.2 s" or "12.0 s ago".
pub(crate) fn relative(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(ahead) => format!("in {}", span(ahead)),
        Err(e) => format!("{} ago", span(e.duration())),
    }
}

/// A duration for people: `850 ms`, `4.2 s`, `3 min 20 s`, `2 h 5 min`.
pub(crate) fn span(d: Duration) -> String {
    let secs = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if secs < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{} min {} s", secs / 60, secs % 60)
    } else {
        format!("{} h {} min", secs / 3600, secs % 3600 / 60)
    }
}

/// `n` bytes, with a binary unit past 1 KiB: `512 B`, `3.4 MiB`.
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
    format!("{value:.1} {} ({n} B)", UNITS[unit])
}

/// A ratio as a percentage with one decimal, `-` when there is nothing to
/// divide.
pub(crate) fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_written_in_utc() {
        let t = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(utc(t(0)), "1970-01-01 00:00:00.000 UTC");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.789.
        assert_eq!(utc(t(951_827_696_789)), "2000-02-29 12:34:56.789 UTC");
        assert_eq!(utc(t(1_798_761_600_000)), "2027-01-01 00:00:00.000 UTC");
    }

    #[test]
    fn spans_and_sizes_read_well() {
        assert_eq!(span(Duration::from_millis(850)), "850 ms");
        assert_eq!(span(Duration::from_millis(4250)), "4.2 s");
        assert_eq!(span(Duration::from_secs(200)), "3 min 20 s");
        assert_eq!(span(Duration::from_secs(7500)), "2 h 5 min");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 + 419_431), "3.4 MiB (3565159 B)");
        assert_eq!(percent(Some(0.5)), "50.0%");
        assert_eq!(percent(None), "-");
        let now = UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(relative(now + Duration::from_secs(5), now), "in 5.0 s");
        assert_eq!(relative(now - Duration::from_secs(5), now), "5.0 s ago");
    }
}
