//! The read path: what the backend holds for a key, judged by the entry
//! codec ([`Lookup`]), and the remote reads under it.
//!
//! A key without dependencies is read alone (an in-process backend answers
//! at once, without a future); a key whose entry depends on tags or the
//! namespace is read with their current tokens in one round trip, and an
//! entry that turns out to record tags the caller did not name is read once
//! more with those. On a remote backend with
//! [`coalesce_reads`](crate::CacheBuilder::coalesce_reads), concurrent reads
//! of one key share a backend read (see `coalesce` for why each caller is
//! still answered by a read sent after it began).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use super::Cache;
use super::coalesce::{Answer, Coalescer};
use super::entry::{Deps, Lookup, Value};
use crate::backend::{Found, ReadRequest, Stored};
use crate::error::{Error, ErrorKind};
use crate::stats::bump;

/// What a read of one entry alone answers.
type Plain = Result<Option<Stored>, Error>;
/// What a read of one entry with the tokens asked for answers.
type Versioned = Result<Found, Error>;

/// A cache's shared reads (remote backends with `coalesce_reads` on):
/// callers reading the same entry (and the same tokens) share one.
pub(super) struct Reads {
    shared: Option<Shared>,
    namespace: Arc<str>,
}

struct Shared {
    plain: Arc<Coalescer<Plain>>,
    versioned: Arc<Coalescer<Versioned>>,
}

impl Reads {
    pub(super) fn new(namespace: &str, shared: bool) -> Self {
        Reads {
            shared: shared.then(|| Shared {
                plain: Arc::default(),
                versioned: Arc::default(),
            }),
            namespace: namespace.into(),
        }
    }

    /// The span of a key's reader task: its own (never a caller's), with
    /// the namespace only (keys may be personal data).
    fn span(&self) -> tracing::Span {
        tracing::debug_span!(parent: None, "aside.shared_read", namespace = %self.namespace)
    }

    /// How long a queued caller waits at most: the reader's read in flight
    /// and its own each time out after `timeout`; past twice that (and a
    /// margin), the reader is not being run at all.
    fn limit(timeout: Duration) -> Duration {
        timeout.saturating_mul(3)
    }
}

impl Cache {
    /// Whether an invalidation that concerns this read is still queued. A
    /// queued tag or namespace invalidation bypasses every read: any entry
    /// may carry that tag.
    pub(super) fn must_bypass(&self, pk: &str, deps: &Deps) -> bool {
        let pending = &self.inner.pending;
        !pending.is_empty()
            && (pending.has_versions()
                || pending.contains(pk)
                || deps.keys.iter().any(|k| pending.contains(k)))
    }

    /// Reads `pk` and judges what it found for a caller depending on `deps`.
    pub(super) async fn lookup<V: Value>(&self, pk: &str, deps: &Deps) -> Result<Lookup<V>, Error> {
        let entries = &self.inner.entries;
        if deps.is_empty() {
            // In-process backends answer without a boxed future.
            let stored = match self.inner.guard.backend().get_now(pk) {
                Some(read) => read.map_err(|e| self.inner.guard.failed(e))?,
                None => self.read_one(pk).await?,
            };
            let Some(stored) = stored else {
                return Ok(Lookup::Miss);
            };
            // The memory hit path: an in-process backend's expiry is exact,
            // so without time-based policies a plain entry needs no header
            // check at all. (Plain entries are this process's own fills and
            // sets, and copies a `shares_stored` backend hands back that a
            // first full check found plain: each kept for its TTL counted
            // here, so this holds for a tiered backend's copies too.)
            if let Some(v) = stored.plain_value::<V>()
                && !entries.policy.needs_clock()
            {
                return Ok(Lookup::Fresh(Some(v.clone()), None));
            }
            return match entries.check(pk, &stored, deps, &[]) {
                Lookup::Miss if entries.has_deps(&stored) => {
                    // The entry has tags of its own: check them.
                    self.lookup_with_deps(pk, &entries.entry_deps(&stored, deps))
                        .await
                }
                found => Ok(found),
            };
        }
        self.lookup_with_deps(pk, deps).await
    }

    /// Reads the entry and the current tokens of `deps` in one round trip.
    async fn lookup_with_deps<V: Value>(&self, pk: &str, deps: &Deps) -> Result<Lookup<V>, Error> {
        let entries = &self.inner.entries;
        let found = self.read(pk, &deps.keys).await?;
        let Some(stored) = first(found.entries) else {
            return Ok(Lookup::Miss);
        };
        Ok(match entries.check(pk, &stored, deps, &found.versions) {
            Lookup::Miss if entries.has_deps_beyond(&stored, deps) => {
                let all = entries.entry_deps(&stored, deps);
                let found = self.read(pk, &all.keys).await?;
                first(found.entries).map_or(Lookup::Miss, |s| {
                    entries.check(pk, &s, &all, &found.versions)
                })
            }
            found => found,
        })
    }

    /// The backend's read of `pk` alone, shared with concurrent callers
    /// when reads are coalesced.
    async fn read_one(&self, pk: &str) -> Plain {
        let guard = &self.inner.guard;
        let Some(shared) = &self.inner.reads.shared else {
            return guard.run(guard.backend().read_one(pk)).await;
        };
        let inline = || guard.run(guard.backend().read_one(pk));
        let reader = || {
            let (cache, pk) = (self.clone(), pk.to_owned());
            let read = move || {
                let (cache, pk) = (cache.clone(), pk.clone());
                async move {
                    let guard = &cache.inner.guard;
                    guard.run_shared(guard.backend().read_one(&pk)).await
                }
            };
            (read, self.inner.reads.span())
        };
        let limit = Reads::limit(guard.timeout());
        let answer = shared.plain.read(pk, inline, reader, limit).await;
        self.shared_answer(answer)
    }

    /// The backend's read of `pk` and the tokens `versions`, shared with
    /// concurrent callers asking for the same when reads are coalesced.
    async fn read(&self, pk: &str, versions: &[String]) -> Versioned {
        let guard = &self.inner.guard;
        let keys = [pk.to_owned()];
        let Some(shared) = &self.inner.reads.shared else {
            return guard
                .run(guard.backend().read(&ReadRequest::new(&keys, versions)))
                .await;
        };
        // Length prefixes keep two different (entry, tokens) pairs from
        // sharing a name, whatever bytes the keys hold.
        let mut name = format!("{}:{pk}", pk.len());
        for v in versions {
            // Writing to a String cannot fail.
            let _ = write!(name, "|{}:{v}", v.len());
        }
        let inline = || {
            let keys = &keys;
            async move {
                guard
                    .run(guard.backend().read(&ReadRequest::new(keys, versions)))
                    .await
            }
        };
        let reader = || {
            let (cache, keys, versions) = (self.clone(), keys.clone(), versions.to_vec());
            let read = move || {
                let (cache, keys, versions) = (cache.clone(), keys.clone(), versions.clone());
                async move {
                    let guard = &cache.inner.guard;
                    let request = ReadRequest::new(&keys, &versions);
                    guard.run_shared(guard.backend().read(&request)).await
                }
            };
            (read, self.inner.reads.span())
        };
        let limit = Reads::limit(guard.timeout());
        let answer = shared.versioned.read(&name, inline, reader, limit).await;
        self.shared_answer(answer)
    }

    /// A caller's answer, counted: a shared read's failure counts for every
    /// caller it answers (in the stats and the backend breaker, as each
    /// caller's own read would have; the read itself counts nothing), and
    /// a caller the reader did not answer within its limit timed out.
    fn shared_answer<T>(&self, answer: Answer<Result<T, Error>>) -> Result<T, Error> {
        let guard = &self.inner.guard;
        match answer {
            Answer::Own(r) => r,
            Answer::Shared(r) => {
                bump(&self.inner.stats.shared_reads);
                if let Err(e) = &r {
                    guard.shared_failure(e);
                }
                r
            }
            Answer::TimedOut => {
                let e = Error::new(
                    ErrorKind::BackendTimeout,
                    "cache backend did not answer in time (a shared read of the key)",
                );
                guard.shared_failure(&e);
                Err(e)
            }
        }
    }
}

/// The one entry a one-key read answered.
fn first(entries: Vec<Option<Stored>>) -> Option<Stored> {
    entries.into_iter().next().flatten()
}
