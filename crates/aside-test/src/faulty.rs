//! A backend wrapper that injects faults per kind of operation.
//!
//! The [`Proxy`](crate::Proxy) and [`RedisServer::pause`](crate::RedisServer::pause)
//! break the connection: every operation fails alike. Most of the cache's
//! failure handling is about *one* operation failing while the others work
//! (a fill that fails after the load, an invalidation that does not land, a
//! read that times out), and about outcomes a network makes ambiguous (an
//! invalidation applied whose reply was lost). [`FaultyBackend`] wraps any
//! [`Backend`] and fails, delays or holds the operations of the kinds a
//! test picks, through a [`FaultControl`] it keeps while the cache runs.
//!
//! With nothing switched on it passes every call through unchanged, so the
//! conformance suite passes on it exactly when it passes on the wrapped
//! backend.
//!
//! ```
//! use std::time::Duration;
//! use aside::MemoryBackend;
//! use aside_test::{FaultyBackend, Op};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), aside::Error> {
//! // Seen as remote, so the cache times it and guards it with its breaker.
//! let backend = FaultyBackend::new(MemoryBackend::new()).as_remote();
//! let faults = backend.control();
//! let cache = aside::Cache::builder()
//!     .backend_timeout(Duration::from_millis(50))
//!     .backend(backend)
//!     .build()?;
//!
//! // The next read fails: `get_or_load` degrades to the loader.
//! faults.fail_next(Op::Read, 1);
//! let v: Option<u32> = cache
//!     .get_or_load("k", || async { Ok::<_, std::io::Error>(Some(7)) })
//!     .await?;
//! assert_eq!(v, Some(7));
//! assert_eq!(cache.stats().backend_errors, 1);
//! assert_eq!(faults.injected(Op::Read), 1);
//!
//! // Fills hang: the backend timeout cuts them, the caller still gets its value.
//! faults.hang(Op::Fill);
//! let v: Option<u32> = cache
//!     .get_or_load("other", || async { Ok::<_, std::io::Error>(Some(8)) })
//!     .await?;
//! assert_eq!(v, Some(8));
//! assert_eq!(cache.stats().backend_timeouts, 1);
//! faults.clear_all();
//! # Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;

use aside::{
    Backend, BackendError, BatchEntry, Capabilities, FillToken, FillWatch, Leases, Stored,
};

mod control;
pub use control::{Failure, FaultControl, InjectedFault, Op};

/// Wraps a [`Backend`] and injects the faults its [`FaultControl`] has
/// switched on; see the [module documentation](self).
///
/// Every method of [`Backend`] and [`Leases`] is forwarded, the batch ones
/// to the wrapped backend's own (not to the trait's loops), so a batch is
/// one call of its [`Op`]. `leases()` is `Some` exactly when the wrapped
/// backend's is. `get_now` answers through the wrapped backend only while
/// no [`Op::Read`] fault is switched on (and the backend is not
/// [`as_remote`](Self::as_remote)); otherwise it returns `None` and the
/// cache reads through `get`, where the fault applies (a call that must
/// answer at once cannot sleep or hang).
///
/// Clones share the switches.
#[derive(Debug, Clone)]
pub struct FaultyBackend<B> {
    inner: B,
    control: FaultControl,
    remote: bool,
}

impl<B: Backend> FaultyBackend<B> {
    /// Wraps `inner`, with a [`FaultControl`] of its own (nothing switched
    /// on, a fixed seed).
    pub fn new(inner: B) -> Self {
        Self::with_control(inner, FaultControl::new())
    }

    /// Wraps `inner` under `control`: backends made with one control share
    /// its switches and counters (a factory handing out fresh backends).
    pub fn with_control(inner: B, control: FaultControl) -> Self {
        FaultyBackend {
            inner,
            control,
            remote: false,
        }
    }

    /// Reports the capabilities of a remote backend (`remote: true`, the
    /// rest as the wrapped backend's), and answers no `get_now`. The cache
    /// bounds only a remote backend's operations with its `backend_timeout`
    /// and guards only them with its breaker, so this is how a test
    /// exercises those on an in-process backend.
    #[must_use]
    pub fn as_remote(mut self) -> Self {
        self.remote = true;
        self
    }

    /// The switches (a handle sharing them).
    pub fn control(&self) -> FaultControl {
        self.control.clone()
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Unwraps the backend.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// Runs `call` under the faults of `op`. `call` is a future not yet
    /// polled: nothing reaches the wrapped backend unless it is awaited.
    async fn run<T>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let Some(injected) = self.control.enter(op).await else {
            return call.await;
        };
        match injected.failure {
            Failure::Timeout => Err(BackendError::Timeout),
            Failure::AppliedThenError => {
                // Whatever the backend answered is lost on the way back.
                let _ = call.await;
                Err(BackendError::failed(injected.fault))
            }
            _ => Err(BackendError::failed(injected.fault)),
        }
    }

    fn inner_leases(&self) -> Result<&dyn Leases, BackendError> {
        self.inner.leases().ok_or_else(|| {
            BackendError::failed(std::io::Error::other(
                "FaultyBackend: the wrapped backend has no leases",
            ))
        })
    }
}

#[async_trait::async_trait]
impl<B: Backend> Backend for FaultyBackend<B> {
    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        caps.remote |= self.remote;
        caps
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Stored>, BackendError>> {
        // The cache neither times nor guards `get_now` (only an in-process
        // backend can answer at once): seen as remote, every read goes
        // through `get`, as it would across a network.
        if self.remote || self.control.is_armed(Op::Read) {
            return None;
        }
        let answer = self.inner.get_now(key)?;
        self.control.count(Op::Read);
        Some(answer)
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        self.run(Op::Read, self.inner.get(key)).await
    }

    async fn get_for_fill(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        let call = self.inner.get_for_fill(key, versions, marker_ttl);
        self.run(Op::Acquire, call).await
    }

    async fn fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        let call = self.inner.fill(key, value, ttl, token, versions);
        self.run(Op::Fill, call).await
    }

    async fn set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        versions: &[String],
    ) -> Result<(), BackendError> {
        let call = self.inner.set(key, value, ttl, versions);
        self.run(Op::Set, call).await
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        self.run(Op::Invalidate, self.inner.invalidate(keys)).await
    }

    async fn get_with_versions(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
        let call = self.inner.get_with_versions(key, versions);
        self.run(Op::Read, call).await
    }

    async fn bump_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        let call = self.inner.bump_versions(versions);
        self.run(Op::BumpVersions, call).await
    }

    async fn get_many(
        &self,
        keys: &[String],
        versions: &[String],
    ) -> Result<(Vec<Option<Stored>>, Vec<u64>), BackendError> {
        self.run(Op::Read, self.inner.get_many(keys, versions))
            .await
    }

    async fn get_for_fill_many(
        &self,
        keys: &[String],
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<Vec<(Option<Stored>, FillToken)>, BackendError> {
        let call = self.inner.get_for_fill_many(keys, versions, marker_ttl);
        self.run(Op::Acquire, call).await
    }

    async fn fill_many(
        &self,
        fills: &[(BatchEntry, FillToken)],
        versions: &[String],
    ) -> Result<Vec<bool>, BackendError> {
        self.run(Op::Fill, self.inner.fill_many(fills, versions))
            .await
    }

    async fn set_many(
        &self,
        entries: &[BatchEntry],
        versions: &[String],
    ) -> Result<(), BackendError> {
        self.run(Op::Set, self.inner.set_many(entries, versions))
            .await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.run(Op::Ping, self.inner.ping()).await
    }

    fn storage_key(&self, key: &str) -> String {
        self.inner.storage_key(key)
    }

    async fn describe(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<aside::backend::StorageInfo, BackendError> {
        self.run(Op::Read, self.inner.describe(key, versions)).await
    }

    fn leases(&self) -> Option<&dyn Leases> {
        self.inner.leases().map(|_| self as &dyn Leases)
    }
}

/// The wrapped backend's leases, under the faults of [`Op::Acquire`] (taking
/// a lease is a load's first step) and [`Op::Lease`] (renewing, releasing).
/// Called on a backend whose wrapped one has no leases, each returns an
/// error.
#[async_trait::async_trait]
impl<B: Backend> Leases for FaultyBackend<B> {
    async fn get_for_fill_leased(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        let call = async {
            self.inner_leases()?
                .get_for_fill_leased(key, versions, marker_ttl, token, ttl)
                .await
        };
        self.run(Op::Acquire, call).await
    }

    async fn renew_lease(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let call = async { self.inner_leases()?.renew_lease(key, token, ttl).await };
        self.run(Op::Lease, call).await
    }

    async fn release_lease(&self, key: &str, token: &str) -> Result<(), BackendError> {
        let call = async { self.inner_leases()?.release_lease(key, token).await };
        self.run(Op::Lease, call).await
    }

    async fn get_for_fill_leased_many(
        &self,
        keys: &[String],
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        ttl: Duration,
    ) -> Result<Vec<(Option<Stored>, FillToken)>, BackendError> {
        let call = async {
            self.inner_leases()?
                .get_for_fill_leased_many(keys, versions, marker_ttl, token, ttl)
                .await
        };
        self.run(Op::Acquire, call).await
    }

    async fn renew_leases(
        &self,
        keys: &[String],
        token: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, BackendError> {
        let call = async { self.inner_leases()?.renew_leases(keys, token, ttl).await };
        self.run(Op::Lease, call).await
    }

    async fn release_leases(&self, keys: &[String], token: &str) -> Result<(), BackendError> {
        let call = async { self.inner_leases()?.release_leases(keys, token).await };
        self.run(Op::Lease, call).await
    }

    fn watch_fills(&self, key: &str) -> Option<FillWatch> {
        self.inner.leases()?.watch_fills(key)
    }
}
