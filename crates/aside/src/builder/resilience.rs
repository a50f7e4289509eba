//! The builder options for freshness and stampede protection: stale values,
//! fail-safe, loader timeouts, early refresh, the loader breaker and leases.
//! See [`policy`](crate::policy) for how the windows fit together.

use std::time::Duration;

use super::CacheBuilder;
use crate::error::Error;
use crate::policy::{LeaseTimeout, Policy};

impl CacheBuilder {
    /// Serves an entry for up to `window` past its TTL: the caller gets the
    /// stale value at once and one background refresh replaces it (one per
    /// key across all processes sharing the backend). After the TTL plus the
    /// window the entry is gone (a miss). `None` (the default) disables.
    pub fn stale_while_revalidate(mut self, window: Option<Duration>) -> Self {
        self.settings.policy.stale_while_revalidate = window;
        self
    }

    /// Keeps entries `max_stale` past their hard TTL, for use only when a
    /// load fails, times out or is refused by the open loader breaker: the
    /// caller then gets the old value instead of the error, and this process
    /// does not call the loader for that key again for
    /// [`fail_safe_throttle`](Self::fail_safe_throttle). `None` (the default)
    /// disables.
    pub fn fail_safe(mut self, max_stale: Option<Duration>) -> Self {
        self.settings.policy.fail_safe = max_stale;
        self
    }

    /// After fail-safe served a stale value for a key, how long this process
    /// keeps serving it without calling the loader again (default 10 s): a
    /// failing database is not asked once per request.
    pub fn fail_safe_throttle(mut self, pause: Duration) -> Self {
        self.settings.policy.fail_safe_throttle = pause;
        self
    }

    /// Probabilistic early refresh (XFetch): a hit refreshes the entry in the
    /// background with a probability that rises as expiry nears, and earlier
    /// for entries that took long to load (`beta` > 1 refreshes earlier, 1 is
    /// the optimum of the paper). A hot key is refreshed before it expires,
    /// so its callers never all miss at once. `None` (the default) disables.
    pub fn early_refresh(mut self, beta: Option<f64>) -> Self {
        self.settings.policy.early_refresh_beta = beta;
        self
    }

    /// When a load takes longer than this and a stale value exists, callers
    /// get the stale value; the load goes on in the background and updates
    /// the cache when it finishes. `None` (the default) disables.
    pub fn loader_soft_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.policy.loader_soft_timeout = timeout;
        self
    }

    /// A load still running after this is abandoned (its future dropped):
    /// callers get a stale value if fail-safe has one, or a `LoaderTimeout`
    /// error. Default 30 s, so that a hung loader never hangs its callers;
    /// `None` waits for ever.
    pub fn loader_hard_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.policy.loader_hard_timeout = timeout;
        self
    }

    /// A circuit breaker on the loader: after `failures` consecutive failed
    /// loads (errors, panics, hard timeouts) the loader is not called for
    /// `cool_down`; loads are answered from fail-safe's stale values or fail
    /// fast with a `CircuitOpen` error. Then one load probes the loader: its
    /// success closes the breaker, its failure opens it again. Off by default.
    pub fn loader_circuit_breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.settings.policy.loader_breaker = Some((failures, cool_down));
        self
    }

    /// Whether a load on a shared backend first takes the key's lease, so
    /// that one process loads and the others wait for its value (on by
    /// default; the memory backend needs none).
    pub fn leases(mut self, on: bool) -> Self {
        self.settings.policy.leases = on;
        self
    }

    /// How long a lease lasts if its holder stops renewing it (default 5 s).
    /// A live load renews it every third of this; a crashed holder blocks
    /// the key for at most this long.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.settings.policy.lease_ttl = ttl;
        self
    }

    /// How long a load waits for another process's load of the same key
    /// (default 10 s) before doing what
    /// [`on_lease_timeout`](Self::on_lease_timeout) says.
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.settings.policy.lease_wait = wait;
        self
    }

    /// What a load does when its lease wait runs out.
    pub fn on_lease_timeout(mut self, then: LeaseTimeout) -> Self {
        self.settings.policy.on_lease_timeout = then;
        self
    }
}

/// Rejects nonsense among the policy options.
pub(super) fn validate(p: &Policy) -> Result<(), Error> {
    let zero = |d: Option<Duration>| d.is_some_and(|d| d.is_zero());
    if zero(p.stale_while_revalidate) || zero(p.fail_safe) {
        return Err(Error::config(
            "stale_while_revalidate and fail_safe windows must be greater than zero (use None to disable)",
        ));
    }
    if zero(p.loader_soft_timeout) || zero(p.loader_hard_timeout) {
        return Err(Error::config(
            "loader timeouts must be greater than zero (use None to disable)",
        ));
    }
    if let (Some(soft), Some(hard)) = (p.loader_soft_timeout, p.loader_hard_timeout)
        && soft >= hard
    {
        return Err(Error::config(
            "loader_soft_timeout must be shorter than loader_hard_timeout",
        ));
    }
    if let Some(beta) = p.early_refresh_beta
        && !(beta.is_finite() && beta > 0.0)
    {
        return Err(Error::config(format!(
            "early_refresh beta must be a positive number, got {beta}"
        )));
    }
    if let Some((failures, cool_down)) = p.loader_breaker
        && (failures == 0 || cool_down.is_zero())
    {
        return Err(Error::config(
            "loader_circuit_breaker needs at least 1 failure and a cool-down above zero",
        ));
    }
    if p.fail_safe_throttle.is_zero() || p.lease_ttl.is_zero() || p.lease_wait.is_zero() {
        return Err(Error::config(
            "fail_safe_throttle, lease_ttl and lease_wait must be greater than zero",
        ));
    }
    if p.lease_ttl < Duration::from_millis(30) {
        return Err(Error::config(
            "lease_ttl must be at least 30 ms (it is renewed every third of it)",
        ));
    }
    Ok(())
}
