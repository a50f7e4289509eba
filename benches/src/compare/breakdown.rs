//! Where an operation's time goes (`--only zipf`): the reads whose own call
//! ran the loader, the other reads (hits, and callers that joined another's
//! load) and the writes; each group's share of the operations and its mean,
//! so that share x mean adds up to the mean operation.

use comfy_table::Table;
use hdrhistogram::Histogram;

use super::{histogram, human_ns, table as new_table};

/// Latencies by what an operation did.
pub struct Split {
    pub loaded: Histogram<u64>,
    pub served: Histogram<u64>,
    pub writes: Histogram<u64>,
}

impl Default for Split {
    fn default() -> Self {
        Self::new()
    }
}

impl Split {
    pub fn new() -> Self {
        Split {
            loaded: histogram(),
            served: histogram(),
            writes: histogram(),
        }
    }

    pub fn add(&mut self, other: &Split) {
        self.loaded.add(&other.loaded).unwrap();
        self.served.add(&other.served).unwrap();
        self.writes.add(&other.writes).unwrap();
    }
}

/// One row per (database, contender, its runs' split).
pub fn table(rows: &[(&str, &str, Split)]) -> Table {
    let mut t = new_table(&[
        "database",
        "contender",
        "mean op",
        "loaded: share",
        "loaded: mean",
        "served: share",
        "served: mean",
        "served: p50",
        "served: p99",
        "writes: share",
        "writes: mean",
    ]);
    for (db, name, split) in rows {
        let ops = (split.loaded.len() + split.served.len() + split.writes.len()).max(1) as f64;
        let part = |h: &Histogram<u64>| (h.len() as f64 / ops, h.mean());
        let (loaded, served, writes) = (
            part(&split.loaded),
            part(&split.served),
            part(&split.writes),
        );
        let mean = loaded.0 * loaded.1 + served.0 * served.1 + writes.0 * writes.1;
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        t.add_row(vec![
            (*db).to_owned(),
            (*name).to_owned(),
            human_ns(mean),
            pct(loaded.0),
            human_ns(loaded.1),
            pct(served.0),
            human_ns(served.1),
            human_ns(split.served.value_at_quantile(0.5) as f64),
            human_ns(split.served.value_at_quantile(0.99) as f64),
            pct(writes.0),
            human_ns(writes.1),
        ]);
    }
    t
}
