//! The miss path: single-flight in this process, the key's lease across
//! processes, the loader under its timeouts and breaker, and the fail-safe
//! answers when it fails.
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

use crate::loader::Loader;
use std::time::Duration;

use tokio::time::Instant;

use super::deps::Deps;
use super::lease::may_have_run;
use super::{Cache, Lookup, Value};
use crate::backend::{FillToken, Lease};
use crate::breaker::Transition;
use crate::error::{Error, ErrorKind};
use crate::flight::{CatchUnwind, Done, Leader, Outcome, Role, Waiter};
use crate::policy::LeaseTimeout;
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

/// The first pause of a waiter that cannot rely on notifications.
pub(super) const FIRST_RECHECK: Duration = Duration::from_millis(5);
pub(super) const MAX_RECHECK: Duration = Duration::from_millis(200);

impl Cache {
    /// Joins or leads the load of `pk` and waits for its outcome, falling
    /// back to `stale` (the caller's expired entry) where fail-safe allows.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn load<V, L>(
        &self,
        pk: String,
        deps: Deps,
        ttl: Option<Duration>,
        stale: Option<Option<V>>,
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
                        bump(&self.inner.stats.coalesced);
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
            let Some(done) = self.wait_soft(waiter, &stale).await else {
                // The load goes on in its task and fills the cache.
                bump(&self.inner.stats.soft_timeouts);
                return Ok(stale.flatten());
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
                    None,
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
        if !self.inner.caps.remote || self.inner.s.policy.fail_safe.is_some() {
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
        bump(&self.inner.stats.coalesced);
        let done = waiter.wait().await;
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
        waiter: Waiter<V>,
        stale: &Option<Option<V>>,
    ) -> Option<Done<V>> {
        match (self.inner.s.policy.loader_soft_timeout, stale) {
            (Some(soft), Some(_)) => tokio::time::timeout(soft, waiter.wait()).await.ok(),
            _ => Some(waiter.wait().await),
        }
    }

    /// The caller's stale value instead of a failure, where fail-safe
    /// allows.
    pub(super) fn fail_safe<V: Value>(
        &self,
        pk: &str,
        outcome: Outcome<V>,
        stale: Option<Option<V>>,
    ) -> Outcome<V> {
        match (outcome, stale) {
            (Err(e), Some(fallback)) if fail_safe_covers(&e) => {
                bump(&self.inner.stats.fail_safe_served);
                let throttle = self.inner.s.policy.fail_safe_throttle;
                self.inner.throttle.start(pk, throttle);
                tracing::debug!(key = %pk, error = %e, "aside: load failed; serving the stale value (fail-safe)");
                Ok(fallback)
            }
            (outcome, _) => outcome,
        }
    }

    /// The body of a load, in its own task: lease, re-check, loader, fill.
    /// `owner` is the moment of the caller that started it (0 for a
    /// refresh); `stale` is that caller's expired value.
    #[allow(clippy::too_many_arguments)]
    async fn run_load<V, L>(
        self,
        pk: String,
        deps: Deps,
        ttl: Option<Duration>,
        leader: Leader<V>,
        stale: Option<Option<V>>,
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
            match self.acquire::<V>(&pk, &deps, mode).await {
                Acquired::Value(v, read_at) => {
                    return leader.publish(Done::before(Ok(v), read_at));
                }
                Acquired::Leave => return leader.publish(Done::retry()),
                Acquired::Fail(e) => return leader.publish(Done::to_all(Err(e))),
                Acquired::ServeStale => match stale {
                    // Read by the owner's own lookup, before it took its
                    // moment: current for it alone.
                    Some(v) => return leader.publish(Done::owner_only(Ok(v), owner)),
                    None => self.unleased_token(&pk, &deps).await,
                },
                Acquired::Load(token) => token,
            }
        };
        if let Some(breaker) = &self.inner.loader_breaker
            && !breaker.allow()
        {
            bump(&self.inner.stats.circuit_rejections);
            self.release(&pk, token.as_ref()).await;
            return leader.publish(Done::to_all(Err(Error::new(
                ErrorKind::CircuitOpen,
                "loader circuit breaker is open; the loader was not called",
            ))));
        }
        let renewal = self.keep_lease(&pk, token.as_ref());
        let (outcome, took) = self.run_loader_timed(&pk, loader).await;
        self.record_breaker(&outcome);
        match (outcome, token) {
            (Ok(value), Some(token)) => {
                let filling = flights.now();
                let stored = self.fill(&pk, value.clone(), &deps, ttl, token, took).await;
                // Wake the waiters after the write: when `get_or_load`
                // returns, the value is readable (read-your-writes).
                leader.publish(Done::before(
                    Ok(value),
                    if stored { filling } else { began },
                ));
            }
            (Ok(value), None) => leader.publish(Done::before(Ok(value), began)),
            (Err(e), token) => {
                self.release(&pk, token.as_ref()).await;
                leader.publish(Done::to_all(Err(e)));
            }
        }
        // Renewed until the fill is written: encoding a large value can
        // take a while, and a fill whose lease lapsed is refused.
        drop(renewal);
    }

    /// Re-checks the key and takes its lease, waiting (bounded) while another
    /// process holds it.
    async fn acquire<V: Value>(&self, pk: &str, deps: &Deps, mode: Mode) -> Acquired<V> {
        let policy = &self.inner.s.policy;
        let backend = &*self.inner.backend;
        let leases = backend.leases().filter(|_| policy.leases);
        let deadline = Instant::now() + policy.lease_wait;
        let lease_token = if leases.is_some() {
            lease_token()
        } else {
            String::new()
        };
        let mut recheck = FIRST_RECHECK;
        let mut waited = false;
        loop {
            // Registered before the attempt: a fill announced between the
            // attempt and the wait still wakes us.
            let mut watch = leases.and_then(|l| l.watch_fills(pk));
            let read_at = self.inner.flights.now();
            let marker_ttl = self.inner.s.marker_ttl;
            let read = match leases {
                Some(l) => {
                    self.guarded(l.get_for_fill_leased(
                        pk,
                        &deps.keys,
                        marker_ttl,
                        &lease_token,
                        policy.lease_ttl,
                    ))
                    .await
                }
                None => {
                    self.guarded(backend.get_for_fill(pk, &deps.keys, marker_ttl))
                        .await
                }
            };
            // Without a marker the fill cannot be made safe: load, do not store.
            let (stored, token) = match read {
                Ok(read) => read,
                Err(e) => {
                    if leases.is_some() && may_have_run(&e) {
                        // Timed out here, or the connection dropped with the
                        // request in flight: it may have run on the server
                        // and taken the lease, and others would wait for it
                        // until `lease_ttl`.
                        self.release_later(vec![pk.to_owned()], lease_token);
                    }
                    return Acquired::Load(None);
                }
            };
            // Re-check: a load that finished since our miss has filled the
            // key (the textbook lock holder skips this and loads twice).
            let found = stored.as_ref().map_or(Lookup::Miss, |s| {
                self.decode_checked::<V>(pk, s, deps, token.versions())
            });
            if let Lookup::Fresh(v, _) = found {
                match mode {
                    Mode::Foreground | Mode::Bypass => {
                        self.release(pk, Some(&token)).await;
                        return Acquired::Value(v, read_at);
                    }
                    // An early refresh finds its entry still fresh: go on,
                    // unless another refresh already replaced it.
                    Mode::Background(seen) if stored.as_ref().and_then(written_at) > Some(seen) => {
                        self.release(pk, Some(&token)).await;
                        return Acquired::Leave;
                    }
                    Mode::Background(_) => {}
                }
            }
            let Lease::Busy(remaining) = token.lease() else {
                return Acquired::Load(Some(token));
            };
            if matches!(mode, Mode::Background(_)) {
                return Acquired::Leave;
            }
            if !waited {
                waited = true;
                bump(&self.inner.stats.lease_waits);
            }
            let now = Instant::now();
            if now >= deadline {
                bump(&self.inner.stats.lease_timeouts);
                tracing::debug!(key = %pk, "aside: gave up waiting for another process's load");
                return match policy.on_lease_timeout {
                    LeaseTimeout::Fail => Acquired::Fail(Error::new(
                        ErrorKind::LoaderTimeout,
                        "another process's load of this key did not finish within lease_wait",
                    )),
                    LeaseTimeout::ServeStale => Acquired::ServeStale,
                    _ => Acquired::Load(Some(token.with_lease(Lease::None))),
                };
            }
            // Woken by the holder's fill; failing that, try again when its
            // lease lapses (a crashed holder). Without reliable notifications,
            // re-check on a short backoff instead.
            let pause = match &watch {
                Some(w) if w.is_reliable() => *remaining + Duration::from_millis(5),
                _ => {
                    let p = recheck;
                    recheck = (recheck * 2).min(MAX_RECHECK);
                    p.min(*remaining + Duration::from_millis(5))
                }
            };
            let pause = pause.min(deadline - now);
            match watch.as_mut() {
                Some(w) => {
                    let _ = tokio::time::timeout(pause, w.notified()).await;
                }
                None => tokio::time::sleep(pause).await,
            }
        }
    }

    /// A fill token without a lease, for loading after a lease wait ran out.
    async fn unleased_token(&self, pk: &str, deps: &Deps) -> Option<FillToken> {
        let marker_ttl = self.inner.s.marker_ttl;
        self.guarded(self.inner.backend.get_for_fill(pk, &deps.keys, marker_ttl))
            .await
            .ok()
            .map(|(_, token)| token)
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
        let Some(hard) = self.inner.s.policy.loader_hard_timeout else {
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

/// What taking the lease came to.
enum Acquired<V> {
    /// The key was filled meanwhile: here is its value, read at this moment.
    Value(Option<V>, u64),
    /// Load, with this token (`None`: the backend failed, do not store).
    Load(Option<FillToken>),
    /// A background refresh found another load running: nothing to do.
    Leave,
    /// The lease wait ran out and the policy is to serve the stale value.
    ServeStale,
    /// The lease wait ran out and the policy is to fail.
    Fail(Error),
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

pub(super) fn written_at(stored: &crate::backend::Stored) -> Option<u64> {
    crate::envelope::parse(stored.bytes())
        .ok()
        .map(|env| env.meta.written_at_ms)
}

/// A random lease token: 128 bits, so two loads never share one.
pub(super) fn lease_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}
