//! `Cache::warm`: fills what the cache is missing of a list of keys, in
//! chunks through the batch path (so every key keeps the rules of
//! `get_many_or_load`), a few chunks at a time.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::super::entry::{Deps, EntryOptions};
use super::{Cache, Slot, Value};
use crate::backend::ReadRequest;
use crate::error::{Error, ErrorKind};

/// How [`Cache::warm`] goes about it. Start from [`WarmOptions::new`].
#[derive(Clone)]
#[non_exhaustive]
#[must_use]
pub struct WarmOptions {
    chunk_size: usize,
    concurrency: usize,
    entry: EntryOptions,
    on_progress: Option<ProgressFn>,
}

type ProgressFn = Arc<dyn Fn(&WarmProgress) + Send + Sync>;

impl Default for WarmOptions {
    fn default() -> Self {
        Self {
            chunk_size: 500,
            concurrency: 4,
            entry: EntryOptions::default(),
            on_progress: None,
        }
    }
}

impl fmt::Debug for WarmOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmOptions")
            .field("chunk_size", &self.chunk_size)
            .field("concurrency", &self.concurrency)
            .field("entry", &self.entry)
            .field("on_progress", &self.on_progress.is_some())
            .finish()
    }
}

impl WarmOptions {
    /// Chunks of 500 keys, 4 chunks at a time, the cache's TTL, no tags,
    /// no progress callback.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most keys one batch-loader call gets (and one batch reads).
    pub fn chunk_size(mut self, keys: usize) -> Self {
        self.chunk_size = keys;
        self
    }

    /// How many chunks are read and loaded at once: at most this many
    /// batch-loader calls run at the same time.
    pub fn concurrency(mut self, chunks: usize) -> Self {
        self.concurrency = chunks;
        self
    }

    /// Tags and TTL of the entries loaded, as
    /// [`get_many_or_load_with`](Cache::get_many_or_load_with): a cached
    /// entry counts as cached only if it carries these tags.
    pub fn entry_options(mut self, options: EntryOptions) -> Self {
        self.entry = options;
        self
    }

    /// Called with the progress once before the first chunk and after each
    /// chunk, from the task awaiting `warm` (keep it short: a progress bar
    /// update, a log line).
    pub fn on_progress(mut self, f: impl Fn(&WarmProgress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }
}

/// How far [`Cache::warm`] got: handed to the progress callback, and
/// returned at the end.
///
/// `done = loaded + cached_already + failed`, and at the end `done ==
/// total`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Distinct keys to warm.
    pub total: usize,
    /// Keys dealt with so far.
    pub done: usize,
    /// Keys the cache did not hold and holds now (read back after the
    /// chunk's fill): loaded by the batch
    /// loader (a key it left out is cached as "not found", as
    /// `get_many_or_load` does) or by a load already running. (A key whose
    /// invalidation is still queued is loaded but, as on every read, not
    /// cached.)
    pub loaded: usize,
    /// Keys the cache already held, not loaded again. (A stale entry, with
    /// [`stale_while_revalidate`](crate::CacheBuilder::stale_while_revalidate),
    /// is refreshed in the background as a read would.)
    pub cached_already: usize,
    /// Keys not warmed: their chunk's loader call failed, panicked or
    /// timed out, or the loaded value was not left in the cache (the
    /// backend failed, or the key was invalidated during the load; warm
    /// reads the loaded keys back to tell). With
    /// [`fail_safe`](crate::CacheBuilder::fail_safe), a key that kept its
    /// expired value after a failed load counts here too.
    pub failed: usize,
    /// The first load error met, if any.
    pub first_error: Option<Error>,
}

/// What one chunk came to.
#[derive(Debug, Default)]
struct Tally {
    loaded: usize,
    cached_already: usize,
    failed: usize,
    error: Option<Error>,
}

impl WarmProgress {
    fn add(&mut self, t: Tally) {
        self.loaded += t.loaded;
        self.cached_already += t.cached_already;
        self.failed += t.failed;
        self.done += t.loaded + t.cached_already + t.failed;
        if self.first_error.is_none() {
            self.first_error = t.error;
        }
    }
}

impl Cache {
    /// Loads into the cache the keys of `keys` it does not hold, in chunks
    /// of [`chunk_size`](WarmOptions::chunk_size) keys with one
    /// `batch_loader` call per chunk for its misses, a few chunks at a time
    /// ([`concurrency`](WarmOptions::concurrency)): to fill a new instance
    /// from the [`hot_keys`](Self::hot_keys) of an old one, or from a list
    /// of the keys that matter, before it takes traffic.
    ///
    /// Each chunk is a [`get_many_or_load_with`](Self::get_many_or_load_with)
    /// that keeps no values: one read of its keys, the loader for the misses,
    /// one fill (and one more read, of the loaded keys' presence, to report
    /// what was left in the cache), under the same rules (a fill is refused if its key was
    /// invalidated meanwhile; keys another load is already loading are
    /// awaited, not loaded twice). So warm **does not overwrite entries the
    /// cache holds**, and a key set meanwhile keeps the newer value. To
    /// reload keys, invalidate them first.
    ///
    /// Keys are warmed once each, in chunks in the order given (the order of
    /// [`HotKeys`](crate::HotKeys) is most read first). The batch loader is
    /// called many times (hence `Fn`) and as `get_many_or_load`'s: it gets
    /// the keys to load and returns the values it found; a key it leaves out
    /// is cached as "not found". A named [`BatchLoader`](crate::BatchLoader)
    /// takes `self` once per call, so one that is `Clone` is passed as
    /// `move |keys| loader.clone().load(keys)`. A chunk whose loader call fails does not
    /// stop the others: its keys are counted in
    /// [`failed`](WarmProgress::failed). Progress goes to
    /// [`on_progress`](WarmOptions::on_progress) after each chunk; the last
    /// one is returned.
    ///
    /// Warm reads are counted in [`Stats`](crate::Stats) as batch reads are,
    /// but not as reads for hot-key tracking.
    ///
    /// # Errors
    /// Only a `Config` error, for a zero chunk size or concurrency. Load
    /// failures are counted in the returned progress, not returned.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use aside::WarmOptions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), aside::Error> {
    /// let cache = aside::Cache::builder().namespace("shop").build()?;
    /// cache.set("price:1", 100u32).await?;
    /// let keys: Vec<String> = (1..=1000).map(|id| format!("price:{id}")).collect();
    /// let report = cache
    ///     .warm(
    ///         &keys,
    ///         |misses: Vec<String>| async move {
    ///             // SELECT ... WHERE id IN (...): at most 200 ids per call.
    ///             assert!(misses.len() <= 200);
    ///             Ok::<_, std::io::Error>(misses.into_iter().map(|k| (k, 7u32)).collect::<HashMap<_, _>>())
    ///         },
    ///         &WarmOptions::new().chunk_size(200).concurrency(2),
    ///     )
    ///     .await?;
    /// assert_eq!((report.total, report.done), (1000, 1000));
    /// assert_eq!((report.loaded, report.cached_already, report.failed), (999, 1, 0));
    /// // Fresh entries are not overwritten.
    /// assert_eq!(cache.get::<u32>("price:1").await?, Some(100));
    /// # Ok(()) }
    /// ```
    pub async fn warm<K, V, F, Fut, E>(
        &self,
        keys: impl IntoIterator<Item = K>,
        batch_loader: F,
        options: &WarmOptions,
    ) -> Result<WarmProgress, Error>
    where
        K: AsRef<str>,
        V: Value,
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + Send + 'static,
    {
        if options.chunk_size == 0 || options.concurrency == 0 {
            return Err(Error::config(
                "warm: chunk_size and concurrency must be at least 1",
            ));
        }
        if options.entry.ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("ttl must be greater than zero"));
        }
        let mut seen = HashSet::new();
        let names: Vec<String> = keys
            .into_iter()
            .filter(|k| seen.insert(k.as_ref().to_owned()))
            .map(|k| k.as_ref().to_owned())
            .collect();
        drop(seen);
        let mut progress = WarmProgress {
            total: names.len(),
            ..WarmProgress::default()
        };
        let report = |p: &WarmProgress| {
            if let Some(f) = &options.on_progress {
                f(p);
            }
        };
        report(&progress);
        let loader = Arc::new(batch_loader);
        let deps = self.inner.entries.deps(&options.entry.tags);
        let mut rest = names.into_iter();
        // Each chunk in a task of its own, so that chunks overlap on a
        // multi-threaded runtime; dropping `warm` aborts them (the loads
        // they started run to the end, as loads do).
        let mut running = JoinSet::new();
        let mut sizes = HashMap::new();
        loop {
            while running.len() < options.concurrency {
                let chunk: Vec<String> = rest.by_ref().take(options.chunk_size).collect();
                if chunk.is_empty() {
                    break;
                }
                let len = chunk.len();
                // In the caller's span, as every task aside spawns: the
                // loader's events belong to the warm-up that asked for them.
                let chunk_task = self.clone().warm_chunk::<V, F, Fut, E>(
                    chunk,
                    deps.clone(),
                    options.entry.ttl,
                    Arc::clone(&loader),
                );
                let task = running.spawn(chunk_task.in_current_span());
                sizes.insert(task.id(), len);
            }
            let Some(joined) = running.join_next_with_id().await else {
                break;
            };
            let tally = match joined {
                Ok((id, tally)) => {
                    sizes.remove(&id);
                    tally
                }
                // The chunk's own code panicked (the loader's panics are
                // caught by the load): its keys were not warmed.
                Err(e) => Tally {
                    failed: sizes.remove(&e.id()).unwrap_or(0),
                    error: Some(Error::new(
                        ErrorKind::LoaderPanicked,
                        format!("a warm chunk failed: {e}"),
                    )),
                    ..Tally::default()
                },
            };
            if tally.failed > 0 {
                tracing::warn!(keys = tally.failed, "aside: warm: keys not loaded");
            }
            progress.add(tally);
            report(&progress);
        }
        Ok(progress)
    }

    /// One chunk: a batch read, one loader call for its misses, one fill.
    async fn warm_chunk<V, F, Fut, E>(
        self,
        names: Vec<String>,
        deps: Deps,
        ttl: Option<Duration>,
        loader: Arc<F>,
    ) -> Tally
    where
        V: Value,
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + Send + 'static,
    {
        let me = self.inner.flights.now();
        let mut slots: Vec<Slot<V>> = names.into_iter().map(|n| self.slot(n, &deps)).collect();
        self.read_many(&mut slots, &deps).await;
        let cached: Vec<bool> = slots.iter().map(|s| s.answer.is_some()).collect();
        let mut tally = Tally {
            cached_already: cached.iter().filter(|c| **c).count(),
            ..Tally::default()
        };
        if tally.cached_already == slots.len() {
            return tally;
        }
        // The keys of a failed loader call: with fail-safe, such a key is
        // answered with its expired value, which is no sign of a load.
        let failed_calls: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = Arc::clone(&failed_calls);
        let call = move |keys: Vec<String>| {
            let asked = keys.clone();
            let load = loader(keys);
            async move {
                let out = load.await;
                if out.is_err() {
                    record
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(asked);
                }
                out
            }
        };
        // Boxed: the miss path's state is large.
        Box::pin(self.load_many(&mut slots, &deps, ttl, me, call)).await;
        let failed: HashSet<String> =
            std::mem::take(&mut *failed_calls.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        let mut check = Vec::new();
        for (i, (slot, cached)) in slots.iter().zip(cached).enumerate() {
            if cached {
                continue;
            }
            match &slot.answer {
                Some(Ok(v)) if !failed.contains(&slot.name) => {
                    // Nothing is stored for a bypassed key, nor for a "not
                    // found" without negative caching: nothing to check.
                    if !slot.bypass && (v.is_some() || self.inner.entries.negative_ttl.is_some()) {
                        check.push(i);
                    } else {
                        tally.loaded += 1;
                    }
                }
                Some(Err(e)) => {
                    tally.failed += 1;
                    tally.error.get_or_insert_with(|| e.clone());
                }
                _ => tally.failed += 1,
            }
        }
        self.count_stored(&slots, &check, &mut tally).await;
        tally
    }

    /// Counts the loaded keys the backend now holds as loaded, the others
    /// as failed. A fill that the backend did not take (down, timed out,
    /// the key invalidated during the load) is only logged on the load
    /// path; warm reports what it left in the cache, so it reads the keys
    /// once more (one more request per chunk, the entries' presence only).
    async fn count_stored<V>(&self, slots: &[Slot<V>], check: &[usize], tally: &mut Tally) {
        for chunk in check.chunks(self.inner.s.batch_chunk_size) {
            let pks: Vec<String> = chunk.iter().map(|&i| slots[i].pk.clone()).collect();
            let guard = &self.inner.guard;
            let request = ReadRequest::new(&pks, &[]);
            let present = match guard.run(guard.backend().read(&request)).await {
                Ok(found) => found.entries.iter().filter(|e| e.is_some()).count(),
                Err(e) => {
                    tally.error.get_or_insert(e);
                    0
                }
            };
            tally.loaded += present;
            let missing = chunk.len().saturating_sub(present);
            if missing > 0 {
                tally.failed += missing;
                tally.error.get_or_insert_with(|| {
                    Error::new(
                        ErrorKind::Backend,
                        "loaded, but not left in the cache (the backend failed or timed out, \
                         or the key was invalidated during the load)",
                    )
                });
            }
        }
    }
}
