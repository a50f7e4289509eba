//! The comparison table and the summary lines.

use std::io::{self, Write};

use aside::Stats;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};

use super::workload::Outcome;

/// Columns of the table (the first is the run's name).
const COLUMNS: usize = 13;

const HEADER: [&str; COLUMNS] = [
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
    "stale after invalidation",
];

/// What the three runs measured.
#[derive(Debug)]
pub struct Runs<'a> {
    pub aside: &'a Outcome,
    /// aside's counters over its run.
    pub stats: &'a Stats,
    pub naive: &'a Outcome,
    pub direct: &'a Outcome,
}

/// Writes the table, then the summary lines.
pub fn write(out: &mut impl Write, runs: &Runs<'_>) -> io::Result<()> {
    let Runs {
        aside: cached,
        stats,
        naive,
        direct,
    } = *runs;
    let rows = [
        row("aside", cached),
        row("naive cache-aside", naive),
        row("no cache", direct),
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
        "stale reads: {} with aside, {} with naive cache-aside, {} with no cache",
        cached.stale, naive.stale, direct.stale
    )?;
    writeln!(
        out,
        "  (a read is stale when it returns a version older than one committed before it began; \
         a read between a write's commit and its invalidation can be, with any cache)"
    )?;
    writeln!(
        out,
        "stale after invalidation: {} with aside, {} with naive cache-aside",
        cached.stale_after_invalidation, naive.stale_after_invalidation
    )?;
    writeln!(
        out,
        "  (stale reads that began after that write's invalidation had finished: a load read \
         the old row, the write committed and invalidated, and the load then cached the old \
         row; aside drops such fills, naive cache-aside keeps them until the TTL or the next \
         write)"
    )?;
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
/// per measure (a wrapped 13-column table breaks numbers across lines).
fn table(rows: &[[String; COLUMNS]]) -> Table {
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
        .set_header(std::iter::once("").chain(rows.iter().map(|r| r[0].as_str())));
    for (i, measure) in HEADER.iter().enumerate().skip(1) {
        tall.add_row(std::iter::once(*measure).chain(rows.iter().map(|r| r[i].as_str())));
    }
    align_right_from(&mut tall, 1);
    tall
}

fn align_right_from(table: &mut Table, first: usize) {
    for column in table.column_iter_mut().skip(first) {
        column.set_cell_alignment(CellAlignment::Right);
    }
}

fn row(label: &str, o: &Outcome) -> [String; COLUMNS] {
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
        o.hit_ratio.map_or_else(|| "-".to_owned(), percent),
        o.db_queries.to_string(),
        o.loader_calls
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        q(0.50),
        q(0.95),
        q(0.99),
        format!("{:.0}", per_second(o.ops(), o)),
        o.stale.to_string(),
        // With no cache there is no invalidation to be stale after.
        o.loader_calls.map_or_else(
            || "-".to_owned(),
            |_| o.stale_after_invalidation.to_string(),
        ),
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

/// The runs as one JSON document: `setup` as given, each run's figures,
/// and aside's counters.
pub fn json(runs: &Runs<'_>, setup: serde_json::Value) -> serde_json::Value {
    let s = runs.stats;
    serde_json::json!({
        "setup": setup,
        "runs": {
            "aside": run_json(runs.aside),
            "naive": run_json(runs.naive),
            "no_cache": run_json(runs.direct),
        },
        "aside_stats": {
            "hit_ratio": s.hit_ratio(),
            "hits": s.hits,
            "negative_hits": s.negative_hits,
            "misses": s.misses,
            "loads": s.loads,
            "stale_fills_rejected": s.stale_fills_rejected,
            "backend_errors": s.backend_errors,
            "backend_timeouts": s.backend_timeouts,
            "backend_skipped": s.backend_skipped,
        },
    })
}

fn run_json(o: &Outcome) -> serde_json::Value {
    let q = |quantile: f64| (!o.latency.is_empty()).then(|| o.latency.value_at_quantile(quantile));
    serde_json::json!({
        "operations": o.ops(),
        "reads": o.reads,
        "writes": o.writes,
        "hit_ratio": o.hit_ratio,
        "database_queries": o.db_queries,
        "loader_calls": o.loader_calls,
        "read_us": { "p50": q(0.50), "p95": q(0.95), "p99": q(0.99) },
        "ops_per_second": per_second(o.ops(), o),
        "stale_reads": o.stale,
        // With no cache there is no invalidation to be stale after.
        "stale_after_invalidation": o.loader_calls.map(|_| o.stale_after_invalidation),
        "invalidate_errors": o.invalidate_errors,
        "seconds": o.elapsed.as_secs_f64(),
    })
}
