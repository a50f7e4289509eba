//! The miss path: single-flight in this process, the key's lease across
//! processes, the loader under its timeouts and breaker, and the fail-safe
//! answers when it fails.
//!
//! One load of a key runs per process (the flight leader, in its own task);
//! across processes the leader first takes the key's lease in the backend,
//! and leaders that find it taken wait to be woken by the holder's fill
//! instead of loading. Every caller then gets the load's outcome, or its own
//! stale value when the outcome is a failure and fail-safe allows it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::deps::Deps;
use super::{Cache, Lookup, Value};
use crate::backend::{FillToken, Lease};
use crate::breaker::Transition;
use crate::error::{Error, ErrorKind};
use crate::flight::{CatchUnwind, Leader, Outcome, Role, Waiter};
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
}

/// The first pause of a waiter that cannot rely on notifications.
const FIRST_RECHECK: Duration = Duration::from_millis(5);
const MAX_RECHECK: Duration = Duration::from_millis(200);

impl Cache {
    /// Joins or leads the load of `pk` and waits for its outcome, falling
    /// back to `stale` (the caller's expired entry) where fail-safe allows.
    pub(super) async fn load<V, F, Fut, E>(
        &self,
        pk: String,
        deps: Deps,
        ttl: Option<Duration>,
        stale: Option<Option<V>>,
        loader: F,
    ) -> Outcome<V>
    where
        V: Value,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + Send + 'static,
    {
        let waiter = match self.inner.flights.join::<V>(&pk) {
            Role::Follower(waiter) => {
                bump(&self.inner.stats.coalesced);
                waiter
            }
            Role::Leader(leader) => {
                let waiter = leader.waiter();
                let cache = self.clone();
                let (key, fallback) = (pk.clone(), stale.clone());
                tokio::spawn(async move {
                    cache
                        .run_load(key, deps, ttl, leader, fallback, Mode::Foreground, loader)
                        .await;
                });
                waiter
            }
        };
        self.wait_outcome(&pk, waiter, stale).await
    }

    /// Starts a background refresh of `pk` unless one is already running in
    /// this process.
    pub(super) fn refresh<V, F, Fut, E>(
        &self,
        pk: &str,
        deps: Deps,
        ttl: Option<Duration>,
        written_at_ms: u64,
        loader: F,
    ) where
        V: Value,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + Send + 'static,
    {
        let Role::Leader(leader) = self.inner.flights.join::<V>(pk) else {
            return;
        };
        bump(&self.inner.stats.refreshes);
        let cache = self.clone();
        let pk = pk.to_owned();
        tokio::spawn(async move {
            cache
                .run_load(
                    pk,
                    deps,
                    ttl,
                    leader,
                    None,
                    Mode::Background(written_at_ms),
                    loader,
                )
                .await;
        });
    }

    /// Waits for a load's outcome: at most the soft timeout when there is a
    /// stale value to fall back on, and the stale value instead of a failure.
    async fn wait_outcome<V: Value>(
        &self,
        pk: &str,
        waiter: Waiter<V>,
        stale: Option<Option<V>>,
    ) -> Outcome<V> {
        let policy = &self.inner.s.policy;
        let outcome = match (policy.loader_soft_timeout, &stale) {
            (Some(soft), Some(fallback)) => {
                match tokio::time::timeout(soft, waiter.wait()).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        // The load goes on in its task and fills the cache.
                        bump(&self.inner.stats.soft_timeouts);
                        return Ok(fallback.clone());
                    }
                }
            }
            _ => waiter.wait().await,
        };
        match (outcome, stale) {
            (Err(e), Some(fallback)) if fail_safe_covers(&e) => {
                bump(&self.inner.stats.fail_safe_served);
                self.inner.throttle.start(pk, policy.fail_safe_throttle);
                tracing::debug!(key = %pk, error = %e, "aside: load failed; serving the stale value (fail-safe)");
                Ok(fallback)
            }
            (outcome, _) => outcome,
        }
    }

    /// The body of a load, in its own task: lease, re-check, loader, fill.
    #[allow(clippy::too_many_arguments)]
    async fn run_load<V, F, Fut, E>(
        self,
        pk: String,
        deps: Deps,
        ttl: Option<Duration>,
        leader: Leader<V>,
        stale: Option<Option<V>>,
        mode: Mode,
        loader: F,
    ) where
        V: Value,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + Send + 'static,
    {
        let token = match self.acquire::<V>(&pk, &deps, mode).await {
            Acquired::Value(v) => return leader.publish(Ok(v)),
            Acquired::Leave => return,
            Acquired::Fail(e) => return leader.publish(Err(e)),
            Acquired::ServeStale => match stale {
                Some(v) => return leader.publish(Ok(v)),
                None => self.unleased_token(&pk, &deps).await,
            },
            Acquired::Load(token) => token,
        };
        if let Some(breaker) = &self.inner.loader_breaker
            && !breaker.allow()
        {
            bump(&self.inner.stats.circuit_rejections);
            self.release(&pk, token.as_ref()).await;
            return leader.publish(Err(Error::new(
                ErrorKind::CircuitOpen,
                "loader circuit breaker is open; the loader was not called",
            )));
        }
        let renewal = self.keep_lease(&pk, token.as_ref());
        let (outcome, took) = self.run_loader_timed(&pk, loader).await;
        if let Some(renewal) = renewal {
            renewal.abort();
        }
        self.record_breaker(&outcome);
        match (outcome, token) {
            (Ok(value), Some(token)) => {
                self.fill(&pk, value.clone(), &deps, ttl, token, took).await;
                // Wake the waiters after the write: when `get_or_load`
                // returns, the value is readable (read-your-writes).
                leader.publish(Ok(value));
            }
            (Ok(value), None) => leader.publish(Ok(value)),
            (Err(e), token) => {
                self.release(&pk, token.as_ref()).await;
                leader.publish(Err(e));
            }
        }
    }

    /// Re-checks the key and takes its lease, waiting (bounded) while another
    /// process holds it.
    async fn acquire<V: Value>(&self, pk: &str, deps: &Deps, mode: Mode) -> Acquired<V> {
        let policy = &self.inner.s.policy;
        let leased = self.inner.remote && policy.leases;
        let deadline = Instant::now() + policy.lease_wait;
        let lease_token = if leased { lease_token() } else { String::new() };
        let mut recheck = FIRST_RECHECK;
        let mut waited = false;
        loop {
            // Registered before the attempt: a fill announced between the
            // attempt and the wait still wakes us.
            let mut watch = if leased {
                self.inner.backend.watch_fills(pk)
            } else {
                None
            };
            let read = if leased {
                self.guarded(self.inner.backend.get_for_fill_leased(
                    pk,
                    &deps.keys,
                    &lease_token,
                    policy.lease_ttl,
                ))
                .await
            } else {
                self.guarded(self.inner.backend.get_for_fill(pk, &deps.keys))
                    .await
            };
            // Without a generation the fill cannot be made safe: load, do not store.
            let Ok((stored, token)) = read else {
                return Acquired::Load(None);
            };
            // Re-check: a load that finished since our miss has filled the
            // key (the textbook lock holder skips this and loads twice).
            let found = stored.as_ref().map_or(Lookup::Miss, |s| {
                self.decode_checked::<V>(pk, s, deps, token.versions())
            });
            if let Lookup::Fresh(v, _) = found {
                match mode {
                    Mode::Foreground => {
                        self.release(pk, Some(&token)).await;
                        return Acquired::Value(v);
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
        self.guarded(self.inner.backend.get_for_fill(pk, &deps.keys))
            .await
            .ok()
            .map(|(_, token)| token)
    }

    /// Releases the lease `token` holds, if any (the load will not fill).
    pub(super) async fn release(&self, pk: &str, token: Option<&FillToken>) {
        if let Some(Lease::Held(t)) = token.map(FillToken::lease)
            && let Err(e) = self.guarded(self.inner.backend.release_lease(pk, t)).await
        {
            // It lapses by itself after `lease_ttl`.
            tracing::debug!(key = %pk, error = %e, "aside: could not release a lease");
        }
    }

    /// Renews a held lease every third of its TTL while the loader runs, so a
    /// slow but live load keeps it and a crashed one loses it.
    fn keep_lease(&self, pk: &str, token: Option<&FillToken>) -> Option<tokio::task::AbortHandle> {
        let Some(Lease::Held(t)) = token.map(FillToken::lease) else {
            return None;
        };
        let (cache, pk, t) = (self.clone(), pk.to_owned(), t.clone());
        let ttl = self.inner.s.policy.lease_ttl;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                match cache
                    .guarded(cache.inner.backend.renew_lease(&pk, &t, ttl))
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(_) => {}
                }
            }
        });
        Some(task.abort_handle())
    }

    /// The loader under the hard timeout.
    async fn run_loader_timed<V, F, Fut, E>(&self, pk: &str, loader: F) -> (Outcome<V>, Duration)
    where
        V: Value,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + Send + 'static,
    {
        let Some(hard) = self.inner.s.policy.loader_hard_timeout else {
            return self.run_loader(pk, loader).await;
        };
        match tokio::time::timeout(hard, self.run_loader(pk, loader)).await {
            Ok(done) => done,
            Err(_) => {
                bump(&self.inner.stats.loader_timeouts);
                tracing::warn!(key = %pk, timeout = ?hard, "aside: loader abandoned at the hard timeout");
                let e = Error::new(
                    ErrorKind::LoaderTimeout,
                    format!("loader did not finish within {hard:?}"),
                );
                (Err(e), hard)
            }
        }
    }

    /// Runs the loader, catching a panic, timing it and counting the outcome.
    pub(super) async fn run_loader<V, F, Fut, E>(
        &self,
        pk: &str,
        loader: F,
    ) -> (Outcome<V>, Duration)
    where
        V: Value,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + Send + 'static,
    {
        let started = Instant::now();
        let outcome = CatchUnwind::new(async move { loader().await }).await;
        let took = started.elapsed();
        self.inner.stats.record_load(took);
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
                tracing::error!(key = %pk, panic = %message, "aside: loader panicked");
                Err(Error::new(
                    ErrorKind::LoaderPanicked,
                    format!("loader panicked: {message}"),
                ))
            }
        };
        (outcome, took)
    }

    fn record_breaker<V>(&self, outcome: &Outcome<V>) {
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
    /// The key was filled meanwhile: here is its value.
    Value(Option<V>),
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

fn written_at(stored: &crate::backend::Stored) -> Option<u64> {
    crate::envelope::parse(stored.bytes())
        .ok()
        .map(|env| env.meta.written_at_ms)
}

/// A random lease token: 128 bits, so two loads never share one.
fn lease_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}
