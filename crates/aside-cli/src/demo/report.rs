//! The comparison table and the summary lines.

use std::io::{self, Write};

use aside::Stats;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};

use super::workload::Outcome;

const HEADER: [&str; 12] = [
    "",
    "operations",
    "reads",
    "writes",
    "hit ratio",
    "database queries",
    "loader calls",
    "p50 read µs",
    "p95 read µs",
    "p99 read µs",
    "ops/s",
    "stale reads",
];

/// Writes the table, then the summary lines.
pub fn write(
    out: &mut impl Write,
    cached: &Outcome,
    stats: &Stats,
    direct: &Outcome,
) -> io::Result<()> {
    let rows = [
        row("aside", cached, Some(stats)),
        row("no cache", direct, None),
    ];
    let table = table(&rows);
    writeln!(out, "{table}")?;
    writeln!(out)?;
    writeln!(out, "{}", summary(cached, stats, direct))?;
    writeln!(
        out,
        "  ({} database queries for {} reads with aside, {} for {} with no cache; \
         aside's throughput was {:.1}× that of no cache)",
        cached.db_queries,
        cached.reads,
        direct.db_queries,
        direct.reads,
        ratio(
            per_second(cached.ops(), cached),
            per_second(direct.ops(), direct)
        ),
    )?;
    writeln!(
        out,
        "stale reads: {} with aside, {} with no cache",
        cached.stale, direct.stale
    )?;
    writeln!(
        out,
        "  (a read is stale when it returns a version older than one committed before it began)"
    )?;
    if cached.stale > 0 {
        writeln!(
            out,
            "  {} of aside's stale reads began after that write's invalidation had finished: \
             a load that read the old row cached it after the invalidation",
            cached.stale_after_invalidation
        )?;
    }
    let backend_failures = stats.backend_errors + stats.backend_timeouts + stats.backend_skipped;
    if backend_failures > 0 || cached.invalidate_errors > 0 {
        writeln!(
            out,
            "cache backend trouble: {} errors, {} timeouts, {} operations skipped while it \
             was marked down, {} failed invalidations",
            stats.backend_errors,
            stats.backend_timeouts,
            stats.backend_skipped,
            cached.invalidate_errors
        )?;
    }
    Ok(())
}

/// One row per run, as asked; but on a terminal too narrow for that, one row
/// per measure (a wrapped 12-column table breaks numbers across lines).
fn table(rows: &[[String; 12]; 2]) -> Table {
    let mut wide = Table::new();
    wide.load_preset(UTF8_FULL_CONDENSED).set_header(HEADER);
    for r in rows {
        wide.add_row(r.clone());
    }
    align_right_from(&mut wide, 1);
    let natural = wide.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    // Some pseudo-terminals report 0 columns: ignore widths that small.
    let narrow = wide
        .width()
        .is_some_and(|w| w >= 40 && usize::from(w) < natural);
    if !narrow {
        return wide;
    }
    let mut tall = Table::new();
    tall.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["", rows[0][0].as_str(), rows[1][0].as_str()]);
    for (i, measure) in HEADER.iter().enumerate().skip(1) {
        tall.add_row([measure, rows[0][i].as_str(), rows[1][i].as_str()]);
    }
    align_right_from(&mut tall, 1);
    tall
}

fn align_right_from(table: &mut Table, first: usize) {
    for column in table.column_iter_mut().skip(first) {
        column.set_cell_alignment(CellAlignment::Right);
    }
}

fn row(label: &str, o: &Outcome, stats: Option<&Stats>) -> [String; 12] {
    let q = |quantile: f64| {
        if o.latency.is_empty() {
            "-".to_owned()
        } else {
            o.latency.value_at_quantile(quantile).to_string()
        }
    };
    [
        label.to_owned(),
        o.ops().to_string(),
        o.reads.to_string(),
        o.writes.to_string(),
        stats.map_or_else(|| "-".to_owned(), |s| percent(s.hit_ratio())),
        o.db_queries.to_string(),
        o.loader_calls
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        q(0.50),
        q(0.95),
        q(0.99),
        format!("{:.0}", per_second(o.ops(), o)),
        o.stale.to_string(),
    ]
}

fn per_second(n: u64, o: &Outcome) -> f64 {
    let secs = o.elapsed.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

/// "aside served N% of reads from cache and sent X× fewer queries to the
/// database per read". Query counts are compared per read: both runs last
/// equally long but do not complete the same number of reads.
fn summary(cached: &Outcome, stats: &Stats, direct: &Outcome) -> String {
    let served = percent(stats.hit_ratio());
    if cached.db_queries == 0 {
        return format!(
            "aside served {served} of reads from cache and sent no queries to the database"
        );
    }
    if cached.reads == 0 || direct.reads == 0 {
        return format!("aside served {served} of reads from cache (too few reads to compare)");
    }
    let cached_rate = cached.db_queries as f64 / cached.reads as f64;
    let direct_rate = direct.db_queries as f64 / direct.reads as f64;
    format!(
        "aside served {served} of reads from cache and sent {:.1}× fewer queries to the \
         database per read",
        direct_rate / cached_rate
    )
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}
