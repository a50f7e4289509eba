//! The write path: `set` and `set_many` (update-on-write), `invalidate`
//! and its tag and namespace forms (invalidate-on-write), and the retry of
//! invalidations that failed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Cache;
use super::entry::{EntryOptions, Value};
use super::load::runs;
use super::pending::{Kind, Pending};
use crate::backend::{AcquireRequest, Entry, SetRequest};
use crate::error::{Error, ErrorKind};
use crate::stats::bump;

/// What became of an invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// The backend removed the keys.
    Applied,
    /// The backend could not be reached. The invalidation is kept and retried
    /// in the background; until it is applied, this process reads the keys
    /// from the loader and caches nothing under them. Wait for it with
    /// [`Cache::flush_invalidations`] (for example before shutting down).
    Queued,
}

impl Invalidation {
    /// Whether the backend has applied it.
    pub fn is_applied(self) -> bool {
        self == Invalidation::Applied
    }
}

/// How many queued keys one retry sends at most.
const RETRY_BATCH: usize = 512;

impl Cache {
    /// Writes `value` under `key` with the default TTL (update-on-write).
    ///
    /// Prefer [`invalidate`](Self::invalidate) after a database write: two
    /// concurrent writers can `set` in the opposite order to their database
    /// commits and leave the older value cached until the TTL, while a delete
    /// is idempotent and the next read loads the committed row. `set` is for
    /// values you computed yourself, or hot keys where a miss is too costly.
    /// A `set` removes the key's marker, so a load that began before it
    /// cannot overwrite it with what it read.
    ///
    /// # Errors
    /// `TooLarge`, `Encode`, `Backend` or `BackendTimeout`. When the backend could
    /// not be written, an invalidation of the key is queued (the entry it
    /// holds is older than the value you meant to write). Over a strict
    /// [`TieredBackend`](crate::backend::TieredBackend), a `set` that
    /// could not be confirmed (every other instance dropped its copy, or
    /// its lease ran out) is such a failure too: `Ok(())` means confirmed.
    pub async fn set<V: Value>(&self, key: impl AsRef<str>, value: V) -> Result<(), Error> {
        self.set_with(key, value, &EntryOptions::default()).await
    }

    /// Like [`set`](Self::set) with a TTL for this entry only (jitter applies).
    ///
    /// # Errors
    /// As `set`, and `Config` for a zero TTL.
    pub async fn set_with_ttl<V: Value>(
        &self,
        key: impl AsRef<str>,
        value: V,
        ttl: Duration,
    ) -> Result<(), Error> {
        self.set_with(key, value, &EntryOptions::new().ttl(ttl))
            .await
    }

    /// Like [`set`](Self::set) with tags and a TTL for this entry.
    ///
    /// # Errors
    /// As `set`, and `Config` for a zero TTL.
    #[tracing::instrument(level = "debug", name = "aside.set", skip_all, fields(namespace = %self.inner.entries.namespace))]
    pub async fn set_with<V: Value>(
        &self,
        key: impl AsRef<str>,
        value: V,
        options: &EntryOptions,
    ) -> Result<(), Error> {
        self.write([(key, value)], options).await
    }

    /// Writes several values with the default TTL, in one backend request
    /// (per [`batch_chunk_size`](crate::CacheBuilder::batch_chunk_size)
    /// keys or 4 MiB of values), each with its own jittered TTL. As [`set`](Self::set) for each
    /// key: loads that began before it do not overwrite it.
    ///
    /// # Errors
    /// As `set`. A value that cannot be encoded (too large) fails the call
    /// before anything is written. When the backend cannot be written, an
    /// invalidation of every key is queued.
    pub async fn set_many<K: AsRef<str>, V: Value>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), Error> {
        self.set_many_with(items, &EntryOptions::default()).await
    }

    /// [`set_many`](Self::set_many) with tags and a TTL for every entry. With
    /// tags (or namespace invalidation), their tokens are read first: one
    /// more request.
    ///
    /// # Errors
    /// As `set_many`, and `Config` for a zero TTL.
    #[tracing::instrument(level = "debug", name = "aside.set_many", skip_all, fields(namespace = %self.inner.entries.namespace))]
    pub async fn set_many_with<K: AsRef<str>, V: Value>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
        options: &EntryOptions,
    ) -> Result<(), Error> {
        self.write(items, options).await
    }

    /// The writes of `set` and `set_many`: the entries record the tokens of
    /// their tags as they are now, then go in requests of at most
    /// `batch_chunk_size` keys and 4 MiB of values.
    async fn write<K: AsRef<str>, V: Value>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
        options: &EntryOptions,
    ) -> Result<(), Error> {
        if options.ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("ttl must be greater than zero"));
        }
        let items: Vec<(String, V)> = items
            .into_iter()
            .map(|(k, v)| (self.backend_key(k.as_ref()), v))
            .collect();
        let Some((first, _)) = items.first() else {
            return Ok(());
        };
        let pks: Vec<String> = items.iter().map(|(pk, _)| pk.clone()).collect();
        for pk in &pks {
            self.inner.flights.forget(pk);
        }
        let deps = self.inner.entries.deps(&options.tags);
        let guard = &self.inner.guard;
        // Every entry records the counters' tokens as they are now (created
        // if absent: an entry must never record "absent"), read once for
        // all: they are the same counters. An invalidation of a tag right
        // after makes them unreadable, as it should.
        let stamp = if deps.is_empty() {
            Vec::new()
        } else {
            let keys = std::slice::from_ref(first);
            let request = AcquireRequest::new(keys, &deps.keys, self.inner.s.marker_ttl);
            match guard.run(guard.backend().acquire(&request)).await {
                Ok(mut read) => {
                    let token = read.pop().map(|a| a.token).unwrap_or_default();
                    deps.stamp(token.versions())
                }
                Err(e) => {
                    // The entries held are older than the values meant
                    // for them.
                    let _ = self.queue_invalidation(pks, Kind::Key);
                    return Err(e);
                }
            }
        };
        let mut entries = Vec::with_capacity(items.len());
        for (pk, value) in items {
            let encoded =
                self.inner
                    .entries
                    .encode(Some(value), options.ttl, &stamp, Duration::ZERO)?;
            if let Some((stored, ttl)) = encoded {
                entries.push(Entry::new(pk, stored, ttl));
            }
        }
        let size = |entry: &Entry| entry.value.bytes().len();
        for run in runs(&entries, self.inner.s.batch_chunk_size, size) {
            let chunk = &entries[run];
            let request = SetRequest::new(chunk, &deps.keys);
            if let Err(e) = guard.run_write(guard.backend().set(&request)).await {
                // Old entries may still be there: have them removed.
                let _ = self.queue_invalidation(pks, Kind::Key);
                return Err(e);
            }
            for _ in chunk {
                bump(&self.inner.stats.sets);
            }
        }
        Ok(())
    }

    /// Makes every entry tagged `tag` unreadable, at once, with one write
    /// whatever the number of entries (it removes the tag's token). A
    /// load that began before and finishes after is not cached either.
    ///
    /// # Errors
    /// As [`invalidate`](Self::invalidate) (a failed tag invalidation is
    /// queued, and this process bypasses the cache until it is applied).
    pub async fn invalidate_tag(&self, tag: impl AsRef<str>) -> Result<Invalidation, Error> {
        self.invalidate_tags([tag]).await
    }

    /// Invalidates several tags in one backend operation.
    ///
    /// # Errors
    /// As [`invalidate_tag`](Self::invalidate_tag).
    #[tracing::instrument(level = "debug", name = "aside.invalidate_tags", skip_all, fields(namespace = %self.inner.entries.namespace))]
    pub async fn invalidate_tags<T: AsRef<str>>(
        &self,
        tags: impl IntoIterator<Item = T>,
    ) -> Result<Invalidation, Error> {
        let names: Vec<String> = tags.into_iter().map(|t| t.as_ref().to_owned()).collect();
        if let Some(bad) = names.iter().find(|t| t.is_empty() || t.len() > 255) {
            return Err(Error::config(format!(
                "tag {bad:?} must be 1 to 255 bytes long"
            )));
        }
        bump_by(&self.inner.stats.tag_invalidations, names.len());
        let mut versions = self.inner.entries.deps(&names).keys;
        self.remove_versions(versions.split_off(self.namespace_dep_len()))
            .await
    }

    /// Makes every entry of this cache's namespace unreadable, in O(1) (it
    /// removes the namespace's token; nothing is scanned or deleted, and
    /// old entries expire on their own).
    ///
    /// # Errors
    /// `Config` unless the cache was built with
    /// [`namespace_invalidation(true)`](crate::CacheBuilder::namespace_invalidation):
    /// without it, entries do not record the namespace version and could not
    /// be invalidated this way.
    #[tracing::instrument(level = "debug", name = "aside.invalidate_namespace", skip_all, fields(namespace = %self.inner.entries.namespace))]
    pub async fn invalidate_namespace(&self) -> Result<Invalidation, Error> {
        if !self.inner.entries.namespace_invalidation() {
            return Err(Error::config(
                "invalidate_namespace needs the cache built with namespace_invalidation(true)",
            ));
        }
        bump(&self.inner.stats.namespace_invalidations);
        self.remove_versions(self.inner.entries.deps(&[]).keys)
            .await
    }

    fn namespace_dep_len(&self) -> usize {
        usize::from(self.inner.entries.namespace_invalidation())
    }

    async fn remove_versions(&self, keys: Vec<String>) -> Result<Invalidation, Error> {
        self.inner
            .stats
            .invalidations
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        self.run_invalidation(Kind::Version, keys).await
    }

    /// Removes `key` (invalidate-on-write): call it after the database write
    /// commits, and the next read loads the new row.
    ///
    /// The key's marker goes with it, so a load that read the row
    /// before your write and finishes after it does not cache what it read.
    ///
    /// # Concurrent calls and cancellation
    /// Once called, the invalidation runs to the end in a task of its own:
    /// dropping the returned future (a request timeout, a client gone) does
    /// not stop it between your committed write and the cache.
    ///
    /// # Errors
    /// A backend that cannot be reached gives `Ok(Invalidation::Queued)`,
    /// and the invalidation is retried until it is applied. It did not
    /// happen when it could neither be applied nor queued: an error of kind
    /// `QueueFull` when the queue is full (see
    /// [`CacheBuilder::max_queued_invalidations`](crate::CacheBuilder::max_queued_invalidations)),
    /// of kind `Backend` when the runtime is shutting down.
    pub async fn invalidate(&self, key: impl AsRef<str>) -> Result<Invalidation, Error> {
        self.invalidate_many([key]).await
    }

    /// Removes several keys in one backend operation.
    ///
    /// # Errors
    /// As [`invalidate`](Self::invalidate).
    #[tracing::instrument(level = "debug", name = "aside.invalidate", skip_all, fields(namespace = %self.inner.entries.namespace))]
    pub async fn invalidate_many<K: AsRef<str>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Invalidation, Error> {
        let pks: Vec<String> = keys
            .into_iter()
            .map(|k| self.backend_key(k.as_ref()))
            .collect();
        if pks.is_empty() {
            return Ok(Invalidation::Applied);
        }
        self.inner
            .stats
            .invalidations
            .fetch_add(pks.len() as u64, Ordering::Relaxed);
        if let Some(delay) = self.inner.s.double_delete_after {
            let cache = self.clone();
            let again = pks.clone();
            crate::task::spawn(async move {
                tokio::time::sleep(delay).await;
                bump_by(&cache.inner.stats.double_deletes, again.len());
                let _ = cache.run_invalidation(Kind::Key, again).await;
            });
        }
        self.run_invalidation(Kind::Key, pks).await
    }

    /// Runs an invalidation to the end in a task of its own, so a caller that
    /// stops waiting cannot leave it half done.
    async fn run_invalidation(&self, kind: Kind, keys: Vec<String>) -> Result<Invalidation, Error> {
        // Callers arriving from now on start a new load rather than join one
        // that may have read the old row. Done before anything can be
        // cancelled.
        match kind {
            Kind::Key => {
                for pk in &keys {
                    self.inner.flights.forget(pk);
                    self.inner
                        .flights
                        .forget(&super::load::bypass_flight_key(pk));
                }
            }
            Kind::Version => self.inner.flights.forget_dependents(&keys),
        }
        let running = self.inner.pending.start();
        let cache = self.clone();
        let task = crate::task::spawn(async move {
            let _running = running;
            cache.apply_invalidation(kind, keys).await
        });
        task.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Backend,
                "the invalidation was cut off by the runtime shutting down; it may not have been applied",
            ))
        })
    }

    /// Sends an invalidation to the backend, queueing it when that fails.
    async fn apply_invalidation(
        &self,
        kind: Kind,
        keys: Vec<String>,
    ) -> Result<Invalidation, Error> {
        let guard = &self.inner.guard;
        let result = match kind {
            Kind::Key => guard.run_write(guard.backend().invalidate(&keys)).await,
            Kind::Version => {
                guard
                    .run_write(guard.backend().remove_versions(&keys))
                    .await
            }
        };
        match result {
            Ok(()) => {
                // The backend answers: anything still queued can go now.
                self.ensure_retry_worker();
                Ok(Invalidation::Applied)
            }
            Err(e) => {
                tracing::warn!(keys = keys.len(), error = %e, "aside: invalidation queued for retry");
                self.queue_invalidation(keys, kind)
            }
        }
    }

    /// Loads running in this process now, one per key (a gauge for
    /// monitoring: it returns to 0 when nothing is loading).
    pub fn loads_in_flight(&self) -> usize {
        self.inner.flights.len()
    }

    /// Invalidations not yet applied by the backend.
    pub fn pending_invalidations(&self) -> usize {
        self.inner.pending.len()
    }

    /// Waits until every invalidation started so far has been applied by the
    /// backend (queued ones are retried at once), for at most `within`. Call
    /// it before a process exits: the queue lives in memory.
    ///
    /// # Errors
    /// `BackendTimeout` when some are still queued after `within`; the message says
    /// how many, and [`pending_invalidations`](Self::pending_invalidations)
    /// too. They stay queued (and retried) for as long as this cache lives.
    pub async fn flush_invalidations(&self, within: Duration) -> Result<(), Error> {
        let pending = &self.inner.pending;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = pending.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a change right after it still wakes us.
            changed.as_mut().enable();
            if pending.is_settled() {
                return Ok(());
            }
            self.ensure_retry_worker();
            pending.kick.notify_one();
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(Error::new(
                    ErrorKind::BackendTimeout,
                    format!(
                        "{} invalidations still queued after {within:?}",
                        pending.len()
                    ),
                ));
            }
        }
    }

    /// Checks that the backend answers, within the backend timeout. Unlike
    /// other operations it ignores the backend's "marked down" state, so a
    /// health check sees the backend itself.
    ///
    /// # Errors
    /// `Backend` or `BackendTimeout`.
    pub async fn ping(&self) -> Result<(), Error> {
        self.inner.guard.ping().await
    }

    /// Queues a failed invalidation for retry (see `max_queued_invalidations`
    /// for what happens when the queue is full).
    pub(super) fn queue_invalidation(
        &self,
        keys: Vec<String>,
        kind: Kind,
    ) -> Result<Invalidation, Error> {
        let pending = &self.inner.pending;
        let max = self.inner.s.max_queued_invalidations;
        if !pending.add(&keys, kind, max) {
            if !self.inner.entries.namespace_invalidation() {
                bump_by(&self.inner.stats.invalidations_refused, keys.len());
                tracing::error!(
                    keys = keys.len(),
                    max,
                    "aside: invalidation failed and the retry queue is full; it was not applied"
                );
                return Err(Error::new(
                    ErrorKind::QueueFull,
                    format!(
                        "the cache backend is unreachable and {max} invalidations are already \
                         queued; this one was not applied"
                    ),
                ));
            }
            // One namespace invalidation covers everything queued and this.
            let namespace = self.inner.entries.deps(&[]).keys;
            if let Some(counter) = namespace.first() {
                tracing::warn!(
                    max,
                    "aside: invalidation queue full; collapsed into a namespace invalidation"
                );
                pending.collapse_to(counter);
                self.inner.flights.forget_dependents(&namespace);
            }
        }
        bump_by(&self.inner.stats.invalidations_queued, keys.len());
        self.ensure_retry_worker();
        Ok(Invalidation::Queued)
    }

    /// Starts the retry task if something is queued and none runs. Called
    /// wherever a queue may be left without one: a worker dies with the
    /// runtime it was spawned on (its flag is cleared by its guard), so the
    /// next failure, flush or invalidation starts another.
    fn ensure_retry_worker(&self) {
        let pending = &self.inner.pending;
        if !pending.is_empty() && !pending.worker.swap(true, Ordering::AcqRel) {
            let cache = self.clone();
            crate::task::spawn(async move { cache.retry_invalidations().await });
        }
    }

    /// Re-sends queued invalidations with backoff until none is left.
    async fn retry_invalidations(self) {
        // Clears the running flag if this task is dropped mid-way (its
        // runtime shut down), so that another can be started.
        let mut flag = WorkerFlag(Some(Arc::clone(&self.inner.pending)));
        let base = self.inner.s.invalidation_retry;
        let mut pause = base;
        loop {
            // A flush waiting on the queue cuts the pause short.
            let _ = tokio::time::timeout(pause, self.inner.pending.kick.notified()).await;
            let batch = self.inner.pending.snapshot(RETRY_BATCH);
            if !batch.is_empty() {
                let of = |kind| -> Vec<String> {
                    batch
                        .iter()
                        .filter(|(_, _, k)| *k == kind)
                        .map(|(key, _, _)| key.clone())
                        .collect()
                };
                let (keys, versions) = (of(Kind::Key), of(Kind::Version));
                let guard = &self.inner.guard;
                let result = async {
                    if !keys.is_empty() {
                        guard.run_write(guard.backend().invalidate(&keys)).await?;
                    }
                    if !versions.is_empty() {
                        guard
                            .run_write(guard.backend().remove_versions(&versions))
                            .await?;
                    }
                    Ok::<(), Error>(())
                }
                .await;
                match result {
                    Ok(()) => {
                        // Counted before the queue shrinks: `applied` wakes
                        // `flush_invalidations`, whose caller may read the
                        // stats at once.
                        bump_by(&self.inner.stats.invalidations_retried, batch.len());
                        self.inner.pending.applied(&batch);
                        tracing::info!(keys = batch.len(), "aside: queued invalidations applied");
                        pause = base;
                    }
                    Err(_) => pause = (pause * 2).min(base * 16),
                }
            }
            if self.inner.pending.is_empty() {
                self.inner.pending.worker.store(false, Ordering::Release);
                // A failure queued between the check and the store would have
                // found the worker still marked running: take it over.
                if self.inner.pending.is_empty()
                    || self.inner.pending.worker.swap(true, Ordering::AcqRel)
                {
                    flag.0 = None;
                    return;
                }
            }
        }
    }
}

/// See `retry_invalidations`.
struct WorkerFlag(Option<Arc<Pending>>);

impl Drop for WorkerFlag {
    fn drop(&mut self) {
        if let Some(pending) = self.0.take() {
            pending.worker.store(false, Ordering::Release);
        }
    }
}

fn bump_by(c: &std::sync::atomic::AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    #[test]
    fn queued_is_not_applied() {
        assert!(super::Invalidation::Applied.is_applied());
        assert!(!super::Invalidation::Queued.is_applied());
    }
}
