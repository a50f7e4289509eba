//! The load path: single-flight in this process, the key's claim across
//! processes (see `protocol`), the loader under its timeouts and breaker,
//! the fill, and the fail-safe answers when it fails.
//!
//! One load of a key runs per process (the flight leader, in its own task);
//! across processes the leader first takes the key's lease in the backend,
//! and leaders that find it taken wait to be woken by the holder's fill
//! instead of loading. Every caller then gets the load's outcome, or its own
//! stale value when the outcome is a failure and fail-safe allows it.
//!
//! A caller takes a load's value only if it is proven current for that
//! caller (see `flight`): the leader's own caller always (its call began
//! before the load did), callers that joined before the fill the backend
//! accepted, or before the cache read that found the value. Callers that
//! joined a load whose fill was refused (an invalidation, perhaps from
//! another process, came in between) load again. That second load began
//! after they did, so it needs no proof and the retry happens at most once
//! in practice; a bound hands the rare further retry a private load.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::Cache;
use super::breaker::Transition;
use super::entry::{Deps, Fallback, Value};
use super::flight::{CatchUnwind, Done, Leader, Outcome, Role, Waiter};
use super::protocol::Claim;
use crate::backend::{Entry, FillRequest, FillToken};
use crate::error::{Error, ErrorKind};
use crate::loader::Loader;
use crate::stats::bump;

/// Why a load runs, which decides what it does when another process holds
/// the key's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Callers are waiting: wait for the holder's value.
    Foreground,
    /// A refresh of the entry written at this time (Unix ms), still being
    /// served: leave it to another holder, and to any newer entry.
    Background(u64),
    /// An invalidation of the key is queued: load without reading or
    /// filling the cache, under the same single-flight, timeouts and
    /// breaker as any load.
    Bypass,
}

/// Joins after which a caller that still could not take a shared load's
/// value runs a private one (see the module doc: one retry is the norm).
pub(super) const MAX_JOINS: u32 = 3;

/// Bypassed loads are shared among themselves only: a flight that reads
/// and fills the cache must never hand its value to a bypassed caller.
pub(super) fn bypass_flight_key(pk: &str) -> String {
    format!("\0bypass\0{pk}")
}

/// The most value bytes one fill request carries (an entry larger than
/// this goes alone): a request must reach the backend within
/// `backend_timeout`, and a thousand large values in one would not,
/// counting as a backend failure and caching nothing.
pub(super) const MAX_REQUEST_BYTES: usize = 4 << 20;

impl Cache {
    /// Joins or leads the load of `pk` and waits for its outcome, falling
    /// back to `stale` (the caller's expired entry) where fail-safe allows.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn load<V, L>(
        &self,
        pk: String,
        deps: Deps,
        ttl: Option<Duration>,
        stale: Fallback<V>,
        mode: Mode,
        loader: L,
    ) -> Outcome<V>
    where
        V: Value,
        L: Loader<V>,
    {
        let flights = &self.inner.flights;
        let flight_key = match mode {
            Mode::Bypass => bypass_flight_key(&pk),
            _ => pk.clone(),
        };
        // This caller's moment: loads that began after it need no proof.
        let me = flights.now();
        let mut loader = Some(loader);
        let mut joins = 0;
        loop {
            joins += 1;
            let role = if joins <= MAX_JOINS {
                flights.join::<V>(&flight_key, &deps.keys)
            } else {
                Role::Leader(flights.private(&flight_key))
            };
            let waiter = match role {
                Role::Follower(waiter) => {
                    if joins == 1 {
                        bump(&self.inner.stats.joined);
                    }
                    waiter
                }
                Role::Leader(leader) => {
                    // A leader's caller always takes its outcome, so the
                    // loader is only ever needed once.
                    let Some(loader) = loader.take() else {
                        return Err(Error::new(
                            ErrorKind::LoaderPanicked,
                            "the load was abandoned before it finished",
                        ));
                    };
                    let waiter = leader.waiter();
                    let cache = self.clone();
                    let (key, deps, fallback) = (pk.clone(), deps.clone(), stale.clone());
                    crate::task::spawn(async move {
                        cache
                            .run_load(key, deps, ttl, leader, fallback, me, mode, loader)
                            .await;
                    });
                    waiter
                }
            };
            let Some(done) = self.wait_soft(me, waiter, &stale).await else {
                // The load goes on in its task and fills the cache.
                bump(&self.inner.stats.soft_timeouts);
                return Ok(stale.into_value());
            };
            if done.is_for(me) {
                return self.fail_safe(&pk, done.outcome, stale);
            }
            // The load this caller joined may predate an invalidation made
            // before this call began: load again.
            bump(&self.inner.stats.joins_retried);
        }
    }

    /// Starts a background refresh of `pk` unless one is already running in
    /// this process.
    pub(super) fn refresh<V, L>(
        &self,
        pk: &str,
        deps: Deps,
        ttl: Option<Duration>,
        written_at_ms: u64,
        loader: L,
    ) where
        V: Value,
        L: Loader<V>,
    {
        let Role::Leader(leader) = self.inner.flights.join_background::<V>(pk, &deps.keys) else {
            return;
        };
        bump(&self.inner.stats.refreshes);
        // The refresh's task runs in this span, a child of the caller's.
        let span = tracing::debug_span!("aside.refresh", namespace = %self.inner.s.namespace);
        let _entered = span.enter();
        let cache = self.clone();
        let pk = pk.to_owned();
        crate::task::spawn(async move {
            cache
                .run_load(
                    pk,
                    deps,
                    ttl,
                    leader,
                    Fallback::None,
                    0,
                    Mode::Background(written_at_ms),
                    loader,
                )
                .await;
        });
    }

    /// Joins the foreground load of `pk` running in this process, if any,
    /// before this caller reads the backend: `None` when there is none, or
    /// when its value is not proven current for this caller (which then
    /// reads and loads as usual).
    ///
    /// Only where reading costs a round trip, and only without fail-safe:
    /// a caller that reads first keeps its expired entry as a fallback (and
    /// waits at most the soft timeout then); one that joins blind has none.
    pub(super) fn follow_load<V: Value>(&self, pk: &str, deps: &Deps) -> Option<(u64, Waiter<V>)> {
        let remote = self.inner.guard.profile().remote;
        if !remote || self.inner.entries.policy.fail_safe.is_some() {
            return None;
        }
        self.inner.flights.follow_load::<V>(pk, &deps.keys)
    }

    /// Waits for a load joined by [`follow_load`](Self::follow_load) and
    /// takes its outcome if it is for this caller (moment `me`). A value
    /// answers the caller (counted as a miss); an error is left to the
    /// caller, which reads the cache before taking it.
    pub(super) async fn wait_joined<V: Value>(
        &self,
        me: u64,
        waiter: Waiter<V>,
    ) -> Option<Outcome<V>> {
        bump(&self.inner.stats.joined);
        let done = waiter.wait_as(me).await;
        if done.is_for(me) {
            if done.outcome.is_ok() {
                bump(&self.inner.stats.misses);
            }
            return Some(done.outcome);
        }
        // The load may predate an invalidation made before this call
        // began: read (and load) as if it had not been there.
        bump(&self.inner.stats.joins_retried);
        None
    }

    /// Waits for a load: at most the soft timeout when there is a stale
    /// value to fall back on (`None` when it ran out).
    async fn wait_soft<V: Value>(
        &self,
        me: u64,
        waiter: Waiter<V>,
        stale: &Fallback<V>,
    ) -> Option<Done<V>> {
        match self.inner.entries.policy.loader_soft_timeout {
            Some(soft) if stale.is_some() => {
                tokio::time::timeout(soft, waiter.wait_as(me)).await.ok()
            }
            _ => Some(waiter.wait_as(me).await),
        }
    }

    /// The caller's stale value instead of a failure, where fail-safe
    /// allows.
    pub(super) fn fail_safe<V: Value>(
        &self,
        pk: &str,
        outcome: Outcome<V>,
        stale: Fallback<V>,
    ) -> Outcome<V> {
        match (outcome, stale) {
            (Err(e), Fallback::Expired(fallback)) if fail_safe_covers(&e) => {
                bump(&self.inner.stats.fail_safe_served);
                let throttle = self.inner.entries.policy.fail_safe_throttle;
                self.inner.throttle.start(pk, throttle);
                tracing::debug!(key = %pk, error = %e, "aside: load failed; serving the stale value (fail-safe)");
                Ok(fallback)
            }
            (outcome, _) => outcome,
        }
    }

    /// The body of a load, in its own task: claim, loader, fill. `owner`
    /// is the moment of the caller that started it (0 for a refresh);
    /// `stale` is that caller's expired value.
    #[allow(clippy::too_many_arguments)]
    async fn run_load<V, L>(
        self,
        pk: String,
        deps: Deps,
        ttl: Option<Duration>,
        leader: Leader<V>,
        stale: Fallback<V>,
        owner: u64,
        mode: Mode,
        loader: L,
    ) where
        V: Value,
        L: Loader<V>,
    {
        let flights = &self.inner.flights;
        // Taken before the marker is read: whoever joined earlier began
        // before this load read anything.
        let began = flights.now();
        let token = if mode == Mode::Bypass {
            None
        } else {
            let refresh = match mode {
                Mode::Background(written_at) => Some(written_at),
                _ => None,
            };
            let keys = std::slice::from_ref(&pk);
            let claim = self.claim::<V>(keys, &[refresh], &deps).await.pop();
            match claim.unwrap_or(Claim::Load(None)) {
                Claim::Value(v, read_at) => {
                    return leader.publish(Done::before(Ok(v), read_at));
                }
                Claim::Leave => return leader.publish(Done::retry()),
                Claim::Fail(e) => return leader.publish(Done::to_all(Err(e))),
                Claim::ServeStale(_) => match stale {
                    // Read by the owner's own lookup, before it took its
                    // moment: current for it alone.
                    Fallback::Expired(v) => {
                        return leader.publish(Done::owner_only(Ok(v), owner));
                    }
                    Fallback::None => self.unleased_token(&pk, &deps).await,
                },
                Claim::Load(token) => token,
            }
        };
        let tokens = || token.iter().map(|t| (&pk, t));
        if let Some(breaker) = &self.inner.loader_breaker
            && !breaker.allow()
        {
            bump(&self.inner.stats.circuit_rejections);
            self.release_leases(tokens()).await;
            return leader.publish(Done::to_all(Err(Error::new(
                ErrorKind::CircuitOpen,
                "loader circuit breaker is open; the loader was not called",
            ))));
        }
        let renewal = self.keep_leases(tokens());
        let (outcome, took) = self.run_loader_timed(&pk, loader).await;
        self.record_breaker(&outcome);
        match outcome {
            Ok(value) => {
                if self.inner.s.fill_in_background && token.is_some() {
                    // Loaded after every caller that joined before `began`
                    // began: current for them whatever the fill finds.
                    leader.publish_early(Done::before(Ok(value.clone()), began));
                }
                let fills = [(&pk, token.as_ref(), &value)];
                let filled = self.fill_all(&fills, &deps, ttl, took).await;
                // Wake the waiters after the write: when `get_or_load`
                // returns, the value is readable (read-your-writes).
                let valid_from = filled.first().copied().flatten().unwrap_or(began);
                leader.publish(Done::before(Ok(value), valid_from));
            }
            Err(e) => {
                self.release_leases(tokens()).await;
                leader.publish(Done::to_all(Err(e)));
            }
        }
        // Renewed until the fill is written: encoding a large value can
        // take a while, and a fill whose lease lapsed is refused.
        drop(renewal);
    }

    /// Stores loaded values whose keys have a token, if no invalidation
    /// happened since the token was read, in requests of at most
    /// `batch_chunk_size` keys and `MAX_REQUEST_BYTES` of values, and
    /// counts what happened. Returns, per value, the moment from which its
    /// fill was accepted (`None`: not stored, so not proven current at the
    /// fill). Leases of values not stored are released.
    ///
    /// A run is encoded just before it is written, not every value first:
    /// encoding a thousand large values at once would hold the worker
    /// thread long enough to starve the task that renews the batch's leases
    /// (the later fills then find their lease lapsed and are refused), and
    /// would keep every encoded value in memory at once.
    pub(super) async fn fill_all<V: Value>(
        &self,
        fills: &[(&String, Option<&FillToken>, &Option<V>)],
        deps: &Deps,
        ttl: Option<Duration>,
        took: Duration,
    ) -> Vec<Option<u64>> {
        let mut accepted = vec![None; fills.len()];
        let mut unused = Vec::new();
        let mut run = Run::default();
        for (j, (pk, token, value)) in fills.iter().enumerate() {
            let Some(token) = token else { continue };
            if run.fills.is_empty() {
                // Taken before the run is checked and encoded: whoever
                // joined earlier began before the value was proven current.
                run.began = self.inner.flights.now();
            }
            if self.must_bypass(pk, deps) {
                // An invalidation is pending: the fill cannot be proven fresh.
                bump(&self.inner.stats.stale_fills_rejected);
                unused.push((*pk, *token));
                continue;
            }
            let stamp = deps.stamp(token.versions());
            let encoded =
                self.inner
                    .entries
                    .encode_or_skip(pk, (*value).clone(), ttl, &stamp, took);
            let Some((stored, ttl)) = encoded else {
                unused.push((*pk, *token));
                continue;
            };
            let size = stored.bytes().len();
            let full = run.fills.len() >= self.inner.s.batch_chunk_size
                || run.bytes + size > MAX_REQUEST_BYTES;
            if !run.fills.is_empty() && full {
                let began = self.inner.flights.now();
                let done = std::mem::replace(
                    &mut run,
                    Run {
                        began,
                        ..Run::default()
                    },
                );
                self.fill_run(done, deps, &mut accepted).await;
            }
            run.fills
                .push((Entry::new(pk.as_str(), stored, ttl), (*token).clone()));
            run.of.push(j);
            run.bytes += size;
        }
        if !run.fills.is_empty() {
            self.fill_run(run, deps, &mut accepted).await;
        }
        self.release_leases(unused).await;
        accepted
    }

    /// Writes one request's fills and records the accepted ones.
    async fn fill_run(&self, run: Run, deps: &Deps, accepted: &mut [Option<u64>]) {
        let guard = &self.inner.guard;
        let request = FillRequest::new(&run.fills, &deps.keys);
        let stored = match guard.run(guard.backend().fill(&request)).await {
            Ok(stored) => stored,
            Err(e) => {
                let keys = run.fills.len();
                tracing::debug!(keys, error = %e, "aside: could not cache loaded values");
                // A fill that failed did not release the leases (or did,
                // and its reply was lost: releasing again is a no-op then).
                // Left held, every load of the keys, in every process, would
                // wait for them to lapse.
                self.release_leases(run.fills.iter().map(|(entry, token)| (&entry.key, token)))
                    .await;
                return;
            }
        };
        for (&j, ok) in run.of.iter().zip(stored) {
            if ok {
                bump(&self.inner.stats.sets);
                accepted[j] = Some(run.began);
            } else {
                bump(&self.inner.stats.stale_fills_rejected);
                tracing::debug!("aside: fill dropped, the key was invalidated during the load");
            }
        }
    }

    /// The loader under the hard timeout.
    async fn run_loader_timed<V, L>(&self, pk: &str, loader: L) -> (Outcome<V>, Duration)
    where
        V: Value,
        L: Loader<V>,
    {
        self.run_timed(pk, async move { loader.load().await }).await
    }

    /// A loader's future (for one key, or a batch named `what`) under the
    /// hard timeout.
    pub(super) async fn run_timed<T, Fut, E>(
        &self,
        what: &str,
        load: Fut,
    ) -> (Result<T, Error>, Duration)
    where
        Fut: Future<Output = Result<T, E>> + Send,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let Some(hard) = self.inner.entries.policy.loader_hard_timeout else {
            return self.run_caught(what, load).await;
        };
        match tokio::time::timeout(hard, self.run_caught(what, load)).await {
            Ok(done) => done,
            Err(_) => {
                bump(&self.inner.stats.loader_timeouts);
                tracing::warn!(key = %what, timeout = ?hard, "aside: loader abandoned at the hard timeout");
                let e = Error::new(
                    ErrorKind::LoaderTimeout,
                    format!("loader did not finish within {hard:?}"),
                );
                (Err(e), hard)
            }
        }
    }

    /// Runs a loader's future, catching a panic, timing it and counting
    /// the outcome.
    async fn run_caught<T, Fut, E>(&self, what: &str, load: Fut) -> (Result<T, Error>, Duration)
    where
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let started = Instant::now();
        let outcome = CatchUnwind::new(load).await;
        let took = started.elapsed();
        self.inner.stats.record_load(took);
        #[cfg(feature = "metrics")]
        super::metrics::record_load(self, took);
        let outcome = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                bump(&self.inner.stats.load_errors);
                let source: std::sync::Arc<dyn std::error::Error + Send + Sync> =
                    std::sync::Arc::from(e.into());
                Err(Error::from_arc(ErrorKind::Loader, "loader failed", source))
            }
            Err(message) => {
                bump(&self.inner.stats.load_panics);
                tracing::error!(key = %what, panic = %message, "aside: loader panicked");
                Err(Error::new(
                    ErrorKind::LoaderPanicked,
                    format!("loader panicked: {message}"),
                ))
            }
        };
        (outcome, took)
    }

    pub(super) fn record_breaker<T>(&self, outcome: &Result<T, Error>) {
        let Some(breaker) = &self.inner.loader_breaker else {
            return;
        };
        let transition = if outcome.is_ok() {
            breaker.on_success()
        } else {
            breaker.on_failure()
        };
        match transition {
            Transition::Opened => tracing::warn!(
                namespace = %self.inner.s.namespace,
                "aside: loader circuit breaker opened; loads fail fast or serve stale values"
            ),
            Transition::Closed => tracing::info!(
                namespace = %self.inner.s.namespace,
                "aside: loader circuit breaker closed"
            ),
            Transition::None => {}
        }
    }
}

/// Failures a stale value may stand in for.
fn fail_safe_covers(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Loader
            | ErrorKind::LoaderPanicked
            | ErrorKind::LoaderTimeout
            | ErrorKind::CircuitOpen
    )
}

/// A fill request being put together, the values its entries belong to,
/// and the moment its proof counts from.
#[derive(Default)]
struct Run {
    fills: Vec<(Entry, FillToken)>,
    of: Vec<usize>,
    bytes: usize,
    began: u64,
}

/// Splits `items` into runs of at most `max_keys` items and, past a run's
/// first item, at most `MAX_REQUEST_BYTES` of `bytes`.
pub(super) fn runs<T>(
    items: &[T],
    max_keys: usize,
    bytes: impl Fn(&T) -> usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let b = bytes(item);
        if i > start && (i - start >= max_keys || size + b > MAX_REQUEST_BYTES) {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += b;
    }
    if start < items.len() {
        out.push(start..items.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{MAX_REQUEST_BYTES, runs};

    #[test]
    fn runs_are_bounded_by_keys_and_bytes() {
        let small = vec![10usize; 25];
        assert_eq!(runs(&small, 10, |b| *b), [0..10, 10..20, 20..25]);
        let half = MAX_REQUEST_BYTES / 2;
        let large = [half, half, half, MAX_REQUEST_BYTES * 3, 1];
        assert_eq!(runs(&large, 10, |b| *b), [0..2, 2..3, 3..4, 4..5]);
        assert!(runs(&Vec::<usize>::new(), 10, |b| *b).is_empty());
    }
}
