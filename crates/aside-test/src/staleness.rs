//! The stale-read checker of the multi-process tests, with zero tolerance
//! or a bound: a writer logs when each write of a key returned (`Write`),
//! each reader logs its reads as runs of equal answers (`ReadRun`), and a
//! run whose last read began after a newer version's write had returned is
//! stale (`Stale`), by how long it began after (`lag_ns`).
//!
//! ```
//! use aside_test::staleness::{ReadRun, Write, stale_runs};
//!
//! // Version 2 of key 0 was written (returned) at t = 100.
//! let writes = [Write { key: 0, version: 2, applied_at: 100 }];
//! // A reader read version 1 from t = 10 to t = 90: fine.
//! let before = ReadRun { key: 0, version: 1, first: 10, last: 90, reads: 5 };
//! // Another read version 1 until t = 130: stale, 30 after the write.
//! let after = ReadRun { key: 0, version: 1, first: 95, last: 130, reads: 3 };
//! let stale = stale_runs(&writes, &[before, after]);
//! assert_eq!(stale.len(), 1);
//! assert_eq!(stale[0].lag_ns, 30);
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Consecutive reads of one key by one reader task that returned one
/// version: when the first and the last of them began (wall-clock ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRun {
    /// The key (an index into the test's keys).
    pub key: usize,
    /// The version every read of the run returned.
    pub version: u64,
    /// When the first read began (wall-clock ns).
    pub first: i64,
    /// When the last read began (wall-clock ns).
    pub last: i64,
    /// How many reads.
    pub reads: u64,
}

/// A write: `key` is at `version` from `applied_at` (wall-clock ns at which
/// the invalidation or `set` returned). One writer's writes of a key are
/// sequential: versions grow with time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    /// The key (an index into the test's keys).
    pub key: usize,
    /// The version it wrote.
    pub version: u64,
    /// When the write returned (wall-clock ns).
    pub applied_at: i64,
}

/// A stale run: its reads returned `run.version` although `write` (a newer
/// version of the key) had returned `lag_ns` before its last read began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// The stale run.
    pub run: ReadRun,
    /// The first write of its key newer than what it read.
    pub write: Write,
    /// How long after that write returned the run's last read began (ns).
    pub lag_ns: i64,
}

/// Every run against the writes: stale from the first newer write of its
/// key; sorted by lag, shortest first.
pub fn stale_runs(writes: &[Write], runs: &[ReadRun]) -> Vec<Stale> {
    let mut by_key: HashMap<usize, Vec<Write>> = HashMap::new();
    for w in writes {
        by_key.entry(w.key).or_default().push(*w);
    }
    let mut stale = Vec::new();
    for r in runs {
        let Some(log) = by_key.get(&r.key) else {
            continue;
        };
        if let Some(w) = log.iter().find(|w| w.version > r.version)
            && w.applied_at < r.last
        {
            stale.push(Stale {
                run: *r,
                write: *w,
                lag_ns: r.last - w.applied_at,
            });
        }
    }
    stale.sort_by_key(|s| s.lag_ns);
    stale
}

/// The `p` quantile of the lags (sorted as [`stale_runs`] returns them), in
/// milliseconds; 0 for none.
pub fn percentile(sorted: &[Stale], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    #[allow(clippy::cast_precision_loss)]
    let ms = sorted[i].lag_ns as f64 / 1e6;
    ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(key: usize, version: u64, first: i64, last: i64) -> ReadRun {
        ReadRun {
            key,
            version,
            first,
            last,
            reads: 1,
        }
    }

    #[test]
    fn a_run_is_stale_from_the_first_newer_write_of_its_key() {
        let writes = [
            Write {
                key: 0,
                version: 2,
                applied_at: 100,
            },
            Write {
                key: 0,
                version: 3,
                applied_at: 200,
            },
            Write {
                key: 1,
                version: 2,
                applied_at: 50,
            },
        ];
        let runs = [
            run(0, 1, 0, 99),    // ended before v2 returned
            run(0, 1, 0, 150),   // v1 after v2 returned: 50 late
            run(0, 2, 120, 250), // v2 after v3 returned: 50 late
            run(0, 3, 210, 400), // current
            run(1, 1, 0, 50),    // began exactly when v2 returned: not after
            run(2, 1, 0, 1_000), // no write of key 2
        ];
        let stale = stale_runs(&writes, &runs);
        assert_eq!(stale.len(), 2, "{stale:?}");
        assert!(stale.iter().all(|s| s.lag_ns == 50));
        assert_eq!(stale[0].write.version.max(stale[1].write.version), 3);
        assert!((percentile(&stale, 0.99) - 50e-6).abs() < 1e-12);
        assert!(percentile(&[], 0.5).abs() < f64::EPSILON);
    }
}
