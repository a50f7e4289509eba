//! Hot-key tracking: an approximate top-K of the most read keys
//! (see [`CacheBuilder::track_hot_keys`](crate::CacheBuilder::track_hot_keys)),
//! and [`HotKeys`], the list a new instance warms from.

use std::cell::Cell;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::error::Error;

mod space_saving;

use space_saving::SpaceSaving;

/// Counters kept per hot key asked for.
const COUNTERS_PER_KEY: usize = 8;

/// The read path's recorder: a sampled read takes the lock and counts for
/// `one_in` reads, so the lock is taken on average once every `one_in`
/// reads, whatever the number of threads.
#[derive(Debug)]
pub(crate) struct Tracker {
    k: usize,
    one_in: u32,
    summary: Mutex<SpaceSaving>,
}

impl Tracker {
    pub(crate) fn new(k: usize, one_in: u32) -> Self {
        Self {
            k,
            one_in: one_in.max(1),
            // More counters than keys asked for: the error bound is
            // N / counters, and under a long tail of keys read once the
            // smallest counter (what a newcomer inherits) sits near it, so
            // with only k counters keys ranked just inside the top k are
            // pushed out by tail keys. The top k of 8k counters still holds
            // every key above N/k (the counts add up to N, so fewer than k
            // counters exceed N/k).
            summary: Mutex::new(SpaceSaving::new(k.saturating_mul(COUNTERS_PER_KEY))),
        }
    }

    #[inline]
    pub(crate) fn record(&self, key: &str) {
        if self.one_in > 1 && !sampled(self.one_in) {
            return;
        }
        // A panic while holding the lock cannot leave the summary worse
        // than approximate: keep counting.
        let mut summary = self.summary.lock().unwrap_or_else(PoisonError::into_inner);
        summary.record(key, u64::from(self.one_in));
    }

    pub(crate) fn top(&self) -> HotKeys {
        let summary = self.summary.lock().unwrap_or_else(PoisonError::into_inner);
        HotKeys {
            keys: summary
                .top(self.k)
                .into_iter()
                .map(|(key, count, _)| (key, count))
                .collect(),
        }
    }
}

/// Whether this read is one of the sampled ones: a random 1 in `one_in`.
/// Random rather than every `one_in`-th read, so that a workload cycling
/// through keys in step with the period is not always sampled on the same
/// key. A per-thread xorshift: no shared state, no atomic.
#[inline]
fn sampled(one_in: u32) -> bool {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            x = rand::random::<u64>() | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        ((x >> 32) as u32).is_multiple_of(one_in)
    })
}

/// The most read keys and their estimated read counts, most read first, as
/// returned by [`Cache::hot_keys`](crate::Cache::hot_keys).
///
/// Save it with [`to_json`](Self::to_json) when an instance stops, and warm
/// a new one from it at start:
///
/// ```
/// # use std::collections::HashMap;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// use aside::{Cache, HotKeys, WarmOptions};
/// let old = Cache::builder().track_hot_keys(100).hot_key_sampling(1).build()?;
/// for _ in 0..3 {
///     let _: Option<u32> = old
///         .get_or_load("price:1", || async { Ok::<_, std::io::Error>(Some(100)) })
///         .await?;
/// }
/// let saved = old.hot_keys().to_json();
///
/// let new = Cache::builder().build()?;
/// let hot = HotKeys::from_json(&saved)?;
/// assert_eq!(hot.first(), Some(&("price:1".to_owned(), 3)));
/// let report = new
///     .warm(hot.keys(), |keys: Vec<String>| async move {
///         Ok::<_, std::io::Error>(keys.into_iter().map(|k| (k, 100u32)).collect::<HashMap<_, _>>())
///     }, &WarmOptions::new())
///     .await?;
/// assert_eq!(report.loaded, 1);
/// assert_eq!(new.get::<u32>("price:1").await?, Some(100));
/// # Ok(()) }
/// ```
///
/// The counts are estimates: with tracking of `k` keys over `N` recorded
/// reads, a count exceeds the true one by at most `N / 8k` and is never
/// below it, and every key read more than `N / k` times is listed. With
/// sampling ([`hot_key_sampling`](crate::CacheBuilder::hot_key_sampling)),
/// this holds for the sampled reads, each counting for the sampling
/// interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HotKeys {
    keys: Vec<(String, u64)>,
}

/// The saved form: tagged and versioned, so a file of another kind or a
/// later format is refused rather than misread.
#[derive(Serialize, Deserialize)]
struct Saved {
    format: String,
    version: u32,
    keys: Vec<SavedKey>,
}

#[derive(Serialize, Deserialize)]
struct SavedKey {
    key: String,
    reads: u64,
}

const FORMAT: &str = "aside-hot-keys";
const VERSION: u32 = 1;

impl HotKeys {
    /// A list of keys and read counts (most read first, as the cache gives
    /// them; the order is kept).
    pub fn new(keys: Vec<(String, u64)>) -> Self {
        Self { keys }
    }

    /// The keys, most read first: what to hand to [`Cache::warm`](crate::Cache::warm).
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    /// The keys and their estimated read counts.
    pub fn into_vec(self) -> Vec<(String, u64)> {
        self.keys
    }

    /// The list as JSON:
    /// `{"format":"aside-hot-keys","version":1,"keys":[{"key":"product:1","reads":42},...]}`.
    pub fn to_json(&self) -> String {
        let saved = Saved {
            format: FORMAT.to_owned(),
            version: VERSION,
            keys: self
                .keys
                .iter()
                .map(|(key, reads)| SavedKey {
                    key: key.clone(),
                    reads: *reads,
                })
                .collect(),
        };
        // Strings and integers always serialise.
        serde_json::to_string_pretty(&saved).unwrap_or_default()
    }

    /// Reads a list written by [`to_json`](Self::to_json).
    ///
    /// # Errors
    /// A `Config` error when `json` is not such a list (or is of a later
    /// version of the format).
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let saved: Saved = serde_json::from_str(json).map_err(|e| {
            Error::with_source(
                crate::ErrorKind::Config,
                "not a hot-keys list (expected the JSON of HotKeys::to_json)",
                e,
            )
        })?;
        if saved.format != FORMAT || saved.version != VERSION {
            return Err(Error::config(format!(
                "not a hot-keys list this version reads: format {:?} version {} (expected {FORMAT:?} version {VERSION})",
                saved.format, saved.version
            )));
        }
        Ok(Self {
            keys: saved.keys.into_iter().map(|k| (k.key, k.reads)).collect(),
        })
    }
}

impl std::ops::Deref for HotKeys {
    type Target = [(String, u64)];
    fn deref(&self) -> &Self::Target {
        &self.keys
    }
}

impl From<HotKeys> for Vec<(String, u64)> {
    fn from(hot: HotKeys) -> Self {
        hot.keys
    }
}

impl IntoIterator for HotKeys {
    type Item = (String, u64);
    type IntoIter = std::vec::IntoIter<(String, u64)>;
    fn into_iter(self) -> Self::IntoIter {
        self.keys.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_refuses_other_documents() {
        let hot = HotKeys::new(vec![("a:1".into(), 9), ("b \"quoted\"".into(), 2)]);
        let back = HotKeys::from_json(&hot.to_json()).map_err(|e| e.to_string());
        assert_eq!(back, Ok(hot));
        for bad in [
            "",
            "[]",
            r#"{"format":"other","version":1,"keys":[]}"#,
            r#"{"format":"aside-hot-keys","version":2,"keys":[]}"#,
        ] {
            assert!(HotKeys::from_json(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn unsampled_tracking_counts_every_read() {
        let t = Tracker::new(2, 1);
        for key in ["a", "b", "a", "c", "a", "b"] {
            t.record(key);
        }
        assert_eq!(
            t.top().into_vec(),
            [("a".to_owned(), 3), ("b".to_owned(), 2)]
        );
    }

    #[test]
    fn sampling_keeps_about_one_in_n() {
        let hits = (0..100_000).filter(|_| sampled(10)).count();
        assert!((8_000..12_000).contains(&hits), "{hits}");
    }
}
