//! The cache's side of hot-key tracking: counting reads, and the list.

use super::Cache;
use crate::hot::{HotKeys, Tracker};

impl Cache {
    /// Counts a read of `key` for hot-key tracking, when it is on: off, one
    /// branch on the read path.
    #[inline]
    pub(super) fn record_read(&self, key: &str) {
        if let Some(hot) = &self.inner.hot {
            hot.record(key);
        }
    }

    /// The most read keys and their estimated read counts, most read first
    /// (see [`CacheBuilder::track_hot_keys`](crate::CacheBuilder::track_hot_keys));
    /// empty when tracking is off. Save them with [`HotKeys::to_json`] to
    /// [`warm`](Self::warm) a new instance.
    pub fn hot_keys(&self) -> HotKeys {
        self.inner
            .hot
            .as_ref()
            .map_or_else(HotKeys::default, Tracker::top)
    }
}
