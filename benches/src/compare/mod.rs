//! The peer-comparison harness behind `cargo run --release -p aside-benches
//! --bin compare`: each scenario runs aside and its peers in interleaved
//! rounds (rotating which goes first), so that the drift of a small, shared
//! machine hits every contender alike, and reports per-round ratios.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    missing_docs,
    missing_debug_implementations
)]

pub mod batch;
pub mod breakdown;
pub mod cost;
pub mod curves;
pub mod hit;
pub mod memory;
pub mod miss;
pub mod outage;
pub mod plots;
pub mod python;
pub mod stampede;
pub mod stampede_procs;
pub mod zipf;

use std::time::Duration;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Options every scenario reads.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Interleaved rounds for the ratio scenarios.
    pub rounds: usize,
    /// The Redis every scenario talks to.
    pub url: String,
}

/// Median, minimum and maximum of a sample (the spread reported with every
/// ratio: on a noisy machine the minimum and maximum say how far to trust
/// the median).
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        Self {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// `1.23 (1.10..1.40)`
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}..{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }

    pub fn json(&self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

/// Per-round ratios `a[i] / b[i]`.
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// A latency histogram in nanoseconds (1 ns .. 100 s, 3 digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap()
}

/// The latency distribution for the plots: `[latency ns, quantile]` pairs
/// at every percentile, then the tail (99.5, 99.9, 99.99) and the maximum.
pub fn cdf(h: &Histogram<u64>) -> Value {
    let qs = (0..100)
        .map(|i| f64::from(i) / 100.0)
        .chain([0.995, 0.999, 0.9999, 1.0]);
    Value::Array(
        qs.map(|q| json!([h.value_at_quantile(q), q]))
            .collect::<Vec<_>>(),
    )
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

/// A duration in ns shown with a unit that fits it.
pub fn human_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// A table with the house style (right-aligned figures after column 0).
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for i in 1..header.len() {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// The rotation of `n` contenders in round `round`: contender order shifts
/// by one each round so none is always first (cold) or last.
pub fn rotation(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (round + k) % n)
}
