//! Retrying a failing loader, with exponential backoff and jitter.
//!
//! A loader that reads a database over the network fails now and then for
//! reasons that go away by themselves: a dropped connection, a failover, a lock
//! timeout. One load's outcome is handed to every caller waiting on it (see
//! [`Cache::get_or_load`](crate::Cache::get_or_load)), so a transient failure
//! is an error for all of them; retrying it a couple of times, a little apart,
//! turns it into a slightly slower success instead.
//!
//! The pause doubles after each failure, so that a source that is really down
//! is not hammered, and is capped, so that a caller's wait stays bounded. Each
//! pause is also shortened by a random fraction (jitter): processes that failed
//! together (the database restarted) would otherwise retry together, in waves
//! that hit the source at the same instant.
//!
//! The loader `get_or_load` takes is `FnOnce` (so it can move what it
//! captures), and an `FnOnce` cannot be run twice: [`RetryPolicy::wrap`] takes
//! a loader that can be re-run and turns it into the `FnOnce` that
//! `get_or_load` wants.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The future of a whole retry sequence, as [`RetryPolicy::wrap`] returns it.
type Attempts<V, E> = Pin<Box<dyn Future<Output = Result<Option<V>, E>> + Send>>;

/// Retries a failing loader with exponential backoff and jitter.
///
/// Attempt `n + 1` starts [`delay(n, r)`](Self::delay) after attempt `n`
/// failed, where `r` is uniform in `0..1`: the base delay doubles with each
/// retry up to the maximum delay, then is shortened by a random fraction of at
/// most `jitter`. `Ok(None)` ("no such row") is an answer, not a failure, and
/// is not retried. When every attempt fails, the last attempt's error is
/// returned.
///
/// Defaults ([`RetryPolicy::default`]): 3 attempts, backoff from 50 ms doubling
/// up to 1 s, jitter 0.5.
///
/// ```
/// use aside::RetryPolicy;
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// let cache = aside::Cache::builder().build()?;
/// let policy = RetryPolicy::new(3).backoff(Duration::from_millis(10), Duration::from_millis(100));
///
/// // A flaky source: the first call fails, the second one answers.
/// let calls = Arc::new(AtomicU32::new(0));
/// let counter = Arc::clone(&calls);
/// let price: Option<u32> = cache
///     .get_or_load(
///         "price:42",
///         policy.wrap(move || {
///             let counter = Arc::clone(&counter);
///             async move {
///                 if counter.fetch_add(1, Ordering::SeqCst) == 0 {
///                     Err(std::io::Error::other("connection reset"))
///                 } else {
///                     Ok(Some(1999))
///                 }
///             }
///         }),
///     )
///     .await?;
/// assert_eq!(price, Some(1999));
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    /// In `0..=1`.
    jitter: f64,
}

impl Default for RetryPolicy {
    /// 3 attempts, backoff from 50 ms doubling up to 1 s, jitter 0.5.
    fn default() -> Self {
        Self::new(3)
    }
}

impl RetryPolicy {
    /// Runs the loader up to `attempts` times in all: `1` means no retry, and
    /// `0` counts as `1` (the loader always runs at least once). Backoff and
    /// jitter are the defaults: from 50 ms doubling up to 1 s, jitter 0.5.
    #[must_use]
    pub fn new(attempts: u32) -> Self {
        Self {
            attempts: attempts.max(1),
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            jitter: 0.5,
        }
    }

    /// The pause before the first retry (`base`), and the most any pause can
    /// be (`max`). Each further retry waits twice as long as the previous one,
    /// until `max`. A `max` below `base` makes every pause `max`.
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_delay = base;
        self.max_delay = max;
        self
    }

    /// Each pause is multiplied by a random factor in `1 - jitter ..= 1`, so
    /// that callers that failed together do not retry together. `0` makes
    /// pauses exact; `1` is "full jitter" (anything from no pause to the whole
    /// one). Clamped to `0..=1`; NaN counts as `0`.
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The pause after the `retry`-th failed attempt (1-based: `delay(1, _)`
    /// comes between the first and the second attempt), given `random`, a
    /// number in `0..=1` that the policy draws uniformly when it runs (values
    /// outside are clamped, NaN counts as `0`).
    ///
    /// `min(max, base * 2^(retry - 1)) * (1 - jitter * random)`; `retry == 0`
    /// (before the first attempt) is no pause. Deterministic, so that a
    /// schedule can be checked without sleeping:
    ///
    /// ```
    /// use aside::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let p = RetryPolicy::new(5).backoff(Duration::from_millis(100), Duration::from_millis(300));
    /// assert_eq!(p.delay(1, 0.0), Duration::from_millis(100));
    /// assert_eq!(p.delay(2, 0.0), Duration::from_millis(200));
    /// assert_eq!(p.delay(3, 0.0), Duration::from_millis(300)); // capped
    /// assert_eq!(p.delay(3, 1.0), Duration::from_millis(150)); // jitter 0.5 at most halves it
    /// ```
    #[must_use]
    pub fn delay(&self, retry: u32, random: f64) -> Duration {
        if retry == 0 {
            return Duration::ZERO;
        }
        // 2^(retry - 1), saturating: past 2^31 the cap applies anyway.
        let doubling = 1_u32.checked_shl(retry - 1).unwrap_or(u32::MAX);
        let capped = self.base_delay.saturating_mul(doubling).min(self.max_delay);
        let random = if random.is_nan() {
            0.0
        } else {
            random.clamp(0.0, 1.0)
        };
        let factor = 1.0 - self.jitter * random;
        if factor >= 1.0 {
            // Exact: `mul_f64` goes through floating-point seconds.
            return capped;
        }
        // `factor` is in `0..1`, so this neither overflows nor panics.
        capped.mul_f64(factor)
    }

    /// Turns a loader that can be re-run into one for
    /// [`Cache::get_or_load`](crate::Cache::get_or_load) that runs it up to
    /// `attempts` times, pausing between attempts as [`delay`](Self::delay)
    /// says.
    ///
    /// `loader` is called once per attempt, so it clones what each attempt's
    /// future needs (a pool handle, an id) instead of moving it. The pauses are
    /// `tokio::time::sleep`s: they do not block a thread, and with tokio's
    /// paused test clock they take no real time. The whole retry sequence is
    /// one load: callers waiting on it (single-flight) wait for the sequence,
    /// and only its final outcome is cached or returned.
    ///
    /// An attempt that returns `Ok(_)`, including `Ok(None)`, ends the
    /// sequence; an attempt that panics ends it too (the cache turns the panic
    /// into an error). After the last failed attempt its error is returned.
    ///
    /// The attempts run in one boxed future: `impl FnOnce() -> impl Future`
    /// cannot be written on stable Rust yet, and one allocation per load (not
    /// per hit) is noise next to a round trip to the source.
    #[must_use = "the wrapped loader runs nothing until it is passed to `get_or_load`"]
    pub fn wrap<F, Fut, V, E>(&self, loader: F) -> impl FnOnce() -> Attempts<V, E> + Send + 'static
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        V: Send + 'static,
        E: Send + 'static,
    {
        let policy = self.clone();
        move || Box::pin(policy.run(loader))
    }

    async fn run<F, Fut, V, E>(self, mut loader: F) -> Result<Option<V>, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let mut attempt = 1;
        loop {
            let outcome = loader().await;
            if outcome.is_ok() || attempt >= self.attempts {
                return outcome;
            }
            // The failed attempt's error is not kept across the pause: only
            // the last one is returned.
            drop(outcome);
            let delay = self.delay(attempt, rand::random::<f64>());
            tracing::debug!(
                attempt,
                attempts = self.attempts,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "aside: loader failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::Instant;

    type Load = std::future::Ready<Result<Option<u32>, std::io::Error>>;

    /// A loader that fails (with "failure n") for its first `failures` calls,
    /// then answers the number of the call; `calls` counts the calls.
    fn flaky(failures: u32, calls: &Arc<AtomicU32>) -> impl FnMut() -> Load + Send + 'static {
        let counter = Arc::clone(calls);
        move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(if n <= failures {
                Err(std::io::Error::other(format!("failure {n}")))
            } else {
                Ok(Some(n))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fails_twice_then_succeeds_after_jittered_pauses() {
        let policy = RetryPolicy::default();
        let calls = Arc::new(AtomicU32::new(0));
        let loader = flaky(2, &calls);
        let start = Instant::now();
        let v = policy.wrap(loader)().await;
        assert_eq!(v.ok().flatten(), Some(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Pauses of 50 ms and 100 ms, each shortened by up to half; tokio's
        // timer rounds each deadline up to the next millisecond.
        let slept = start.elapsed();
        let shortest = policy.delay(1, 1.0) + policy.delay(2, 1.0);
        let longest = policy.delay(1, 0.0) + policy.delay(2, 0.0);
        assert_eq!(shortest, Duration::from_millis(75));
        assert_eq!(longest, Duration::from_millis(150));
        assert!(
            slept >= shortest && slept <= longest + Duration::from_millis(2),
            "slept {slept:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn always_failing_returns_the_last_error_after_all_attempts() {
        let policy = RetryPolicy::new(4).backoff(Duration::from_millis(10), Duration::from_secs(1));
        let calls = Arc::new(AtomicU32::new(0));
        let loader = flaky(u32::MAX, &calls);
        let v = policy.wrap(loader)().await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        match v {
            Err(e) => assert_eq!(e.to_string(), "failure 4"),
            Ok(v) => panic!("expected the last error, got {v:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn none_is_an_answer_and_is_not_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let start = Instant::now();
        let v = RetryPolicy::new(5).wrap(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<Option<u32>, std::io::Error>(None))
        })()
        .await;
        assert!(matches!(v, Ok(None)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn one_attempt_or_zero_means_no_retry() {
        for attempts in [0, 1] {
            let calls = Arc::new(AtomicU32::new(0));
            let loader = flaky(1, &calls);
            let v = RetryPolicy::new(attempts).wrap(loader)().await;
            assert!(v.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn schedule_doubles_and_caps_at_max() {
        let p = RetryPolicy::new(10)
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
            .jitter(0.0);
        let schedule: Vec<u64> = (0..=7)
            .map(|n| u64::try_from(p.delay(n, 0.5).as_millis()).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(schedule, [0, 100, 200, 400, 800, 1000, 1000, 1000]);
        // Far past the point where 2^(n-1) overflows: still the cap, no panic.
        assert_eq!(p.delay(40, 0.5), Duration::from_secs(1));
        assert_eq!(p.delay(u32::MAX, 0.5), Duration::from_secs(1));
        // A max below base caps the first pause too.
        let p = p.backoff(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(p.delay(1, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_shortens_by_at_most_its_fraction_and_is_clamped() {
        let p = RetryPolicy::new(3).backoff(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(50));
        let mid = p.delay(1, 0.5);
        assert!(mid > Duration::from_millis(74) && mid < Duration::from_millis(76));
        // `random` outside 0..=1 (or NaN) is clamped.
        assert_eq!(p.delay(1, 7.0), Duration::from_millis(50));
        assert_eq!(p.delay(1, -1.0), Duration::from_millis(100));
        assert_eq!(p.delay(1, f64::NAN), Duration::from_millis(100));
        // Full jitter can remove the pause entirely; jitter above 1 is 1.
        assert_eq!(p.clone().jitter(1.0).delay(1, 1.0), Duration::ZERO);
        assert_eq!(p.clone().jitter(3.0).delay(1, 1.0), Duration::ZERO);
        assert_eq!(
            p.clone().jitter(-3.0).delay(1, 1.0),
            Duration::from_millis(100)
        );
        assert_eq!(p.jitter(f64::NAN).delay(1, 1.0), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_jitter_is_exact() {
        let policy = RetryPolicy::new(3)
            .backoff(Duration::from_millis(50), Duration::from_secs(1))
            .jitter(0.0);
        for random in [0.0, 0.3, 1.0] {
            assert_eq!(policy.delay(2, random), Duration::from_millis(100));
        }
        let calls = Arc::new(AtomicU32::new(0));
        let loader = flaky(2, &calls);
        let start = Instant::now();
        let v = policy.wrap(loader)().await;
        assert_eq!(v.ok().flatten(), Some(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(start.elapsed(), Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn wrapped_loader_works_with_get_or_load() -> crate::Result<()> {
        let cache = crate::Cache::builder().build()?;
        let calls = Arc::new(AtomicU32::new(0));
        let loader = flaky(1, &calls);
        let v: Option<u32> = cache
            .get_or_load("retry:1", RetryPolicy::default().wrap(loader))
            .await?;
        assert_eq!(v, Some(2));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Cached: a second load is not run.
        let calls = Arc::new(AtomicU32::new(0));
        let loader = flaky(0, &calls);
        let again: Option<u32> = cache
            .get_or_load("retry:1", RetryPolicy::default().wrap(loader))
            .await?;
        assert_eq!(again, Some(2));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        Ok(())
    }
}
