//! Hot-key tracking options.

use super::CacheBuilder;
use crate::error::Error;

impl CacheBuilder {
    /// Tracks the `k` most read keys (an approximate top-K, Space-Saving
    /// with `8k` counters), read with [`Cache::hot_keys`](crate::Cache::hot_keys):
    /// save them with [`HotKeys::to_json`](crate::HotKeys::to_json) and
    /// [`warm`](crate::Cache::warm) a new instance from them at start.
    ///
    /// Reads are `get_or_load`, `get_or_load_with`, `get` and each key of a
    /// `get_many_or_load*` call, hits and misses alike (`warm` is not a
    /// read). Off by default; off, the read path pays one branch. On, a
    /// sampled read (see [`hot_key_sampling`](Self::hot_key_sampling))
    /// takes a lock shared by every thread and counts its key.
    pub fn track_hot_keys(mut self, k: usize) -> Self {
        self.settings.hot_keys = k;
        self.hot_keys_asked = true;
        self
    }

    /// With hot-key tracking on, count a random 1 in `one_in` reads, each
    /// for `one_in` (default 16): the lock is taken that much less often,
    /// and the counts stay unbiased estimates. `1` counts every read.
    pub fn hot_key_sampling(mut self, one_in: u32) -> Self {
        self.settings.hot_key_sampling = one_in;
        self
    }
}

/// Checks the hot-key options.
pub(super) fn validate(asked: bool, k: usize, one_in: u32) -> Result<(), Error> {
    if asked && k == 0 {
        return Err(Error::config("track_hot_keys needs at least 1 key"));
    }
    if one_in == 0 {
        return Err(Error::config("hot_key_sampling must be at least 1"));
    }
    Ok(())
}
