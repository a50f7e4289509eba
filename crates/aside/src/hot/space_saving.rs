//! Space-Saving (Metwally, Agrawal, El Abbadi, "Efficient Computation of
//! Frequent and Top-k Elements in Data Streams", 2005): the most frequent
//! keys of a stream in a fixed number of counters.
//!
//! With `m` counters over a stream of total weight `N`:
//! - the counts add up to `N`;
//! - a key's count never underestimates its true weight, and overestimates
//!   it by at most its recorded error, itself at most `N / m`;
//! - so every key whose true weight exceeds `N / m` holds a counter.
//!
//! The counters are a binary min-heap on the count with a map from key to
//! heap position: recording is `O(log m)`, and the key to evict (the
//! smallest count) is the root. The classic stream-summary list is `O(1)`,
//! but with weighted records (a sampled read counts for several) a heap is
//! simpler and `m` stays small.

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
struct Counter {
    key: Arc<str>,
    count: u64,
    /// The count the key inherited when it took over an evicted counter: an
    /// upper bound of how much `count` overestimates.
    error: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct SpaceSaving {
    capacity: usize,
    heap: Vec<Counter>,
    at: HashMap<Arc<str>, usize>,
    total: u64,
}

impl SpaceSaving {
    /// A summary of `capacity` counters (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            heap: Vec::with_capacity(capacity),
            at: HashMap::with_capacity(capacity),
            total: 0,
        }
    }

    /// Counts `weight` more occurrences of `key`.
    pub(crate) fn record(&mut self, key: &str, weight: u64) {
        self.total = self.total.saturating_add(weight);
        if let Some(&i) = self.at.get(key) {
            self.heap[i].count = self.heap[i].count.saturating_add(weight);
            self.sift_down(i);
            return;
        }
        let key: Arc<str> = Arc::from(key);
        if self.heap.len() < self.capacity {
            self.heap.push(Counter {
                key: Arc::clone(&key),
                count: weight,
                error: 0,
            });
            let i = self.heap.len() - 1;
            self.at.insert(key, i);
            self.sift_up(i);
            return;
        }
        // Full: the new key takes over the smallest counter, and inherits
        // its count as its possible overestimate.
        let min = self.heap[0].count;
        let old = std::mem::replace(
            &mut self.heap[0],
            Counter {
                key: Arc::clone(&key),
                count: min.saturating_add(weight),
                error: min,
            },
        );
        self.at.remove(&old.key);
        self.at.insert(key, 0);
        self.sift_down(0);
    }

    /// The total weight recorded.
    #[cfg(test)]
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The `k` largest counts, largest first (ties by key, so the order is
    /// stable), with their error bounds.
    pub(crate) fn top(&self, k: usize) -> Vec<(String, u64, u64)> {
        let mut all: Vec<&Counter> = self.heap.iter().collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.into_iter()
            .take(k)
            .map(|c| (c.key.to_string(), c.count, c.error))
            .collect()
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].count <= self.heap[i].count {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut smallest = i;
            if l < n && self.heap[l].count < self.heap[smallest].count {
                smallest = l;
            }
            if r < n && self.heap[r].count < self.heap[smallest].count {
                smallest = r;
            }
            if smallest == i {
                break;
            }
            self.swap(i, smallest);
            i = smallest;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        for i in [a, b] {
            if let Some(at) = self.at.get_mut(&self.heap[i].key) {
                *at = i;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn truth(stream: &[(u8, u64)]) -> HashMap<String, u64> {
        let mut t = HashMap::new();
        for (k, w) in stream {
            *t.entry(format!("k{k}")).or_insert(0) += w;
        }
        t
    }

    fn run(capacity: usize, stream: &[(u8, u64)]) -> SpaceSaving {
        let mut s = SpaceSaving::new(capacity);
        for (k, w) in stream {
            s.record(&format!("k{k}"), *w);
        }
        s
    }

    proptest! {
        /// Every key heavier than N/k is in the top k, and no reported count
        /// is below the truth or above it by more than N/k (nor by more than
        /// its own error bound).
        #[test]
        fn guarantees_hold(
            capacity in 1usize..12,
            // Few distinct keys, skewed by the generator's weights, so that
            // some exceed N/k and the summary is full and evicting.
            stream in prop::collection::vec(
                (prop_oneof![3 => 0u8..3, 1 => 0u8..40], 1u64..4),
                0..600,
            ),
        ) {
            let s = run(capacity, &stream);
            let truth = truth(&stream);
            let n: u64 = truth.values().sum();
            prop_assert_eq!(s.total(), n);
            let top = s.top(capacity);
            let counted: u64 = s.heap.iter().map(|c| c.count).sum();
            prop_assert_eq!(counted, n, "the counts add up to N");
            for (key, count, error) in &top {
                let real = truth.get(key).copied().unwrap_or(0);
                prop_assert!(*count >= real, "{} under: {} < {}", key, count, real);
                prop_assert!(count - real <= *error, "{} beyond its error bound", key);
                prop_assert!(
                    (count - real) as u128 * capacity as u128 <= n as u128,
                    "{} over by more than N/k: {} vs {}", key, count, real
                );
            }
            for (key, real) in &truth {
                if *real as u128 * capacity as u128 > n as u128 {
                    prop_assert!(
                        top.iter().any(|(k, ..)| k == key),
                        "{} (weight {} of {}) missing from the top {}", key, real, n, capacity
                    );
                }
            }
        }

        /// With room for every key the counts are exact.
        #[test]
        fn exact_when_everything_fits(stream in prop::collection::vec((0u8..8, 1u64..5), 0..200)) {
            let s = run(8, &stream);
            let truth = truth(&stream);
            for (key, count, error) in s.top(8) {
                prop_assert_eq!(error, 0);
                prop_assert_eq!(Some(count), truth.get(&key).copied());
            }
        }
    }

    #[test]
    fn top_is_ordered_and_bounded() {
        let mut s = SpaceSaving::new(3);
        for (k, n) in [("a", 5), ("b", 9), ("c", 1)] {
            for _ in 0..n {
                s.record(k, 1);
            }
        }
        let top: Vec<(String, u64)> = s.top(2).into_iter().map(|(k, c, _)| (k, c)).collect();
        assert_eq!(top, [("b".to_owned(), 9), ("a".to_owned(), 5)]);
        // A new key evicts the smallest ("c", 1) and inherits its count.
        s.record("d", 1);
        assert_eq!(
            s.top(3).last().map(|(k, c, e)| (k.as_str(), *c, *e)),
            Some(("d", 2, 1))
        );
    }
}
