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
//! use aside::backend::MemoryBackend;
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

use aside::backend::{
    AcquireRequest, Acquired, Backend, BackendError, FillRequest, FillWatch, Found, Inspect,
    LeaseAsk, Leases, Profile, ReadRequest, SetRequest, StorageInfo, Stored,
};

mod control;
pub use control::{Failure, FaultControl, InjectedFault, Op};

/// Wraps a [`Backend`] and injects the faults its [`FaultControl`] has
/// switched on; see the [module documentation](self).
///
/// Every method of [`Backend`], [`Leases`] and [`Inspect`] is forwarded,
/// so a request (one key or a batch) is one call of its [`Op`]. `leases()`
/// and `inspect()` are `Some` exactly when the wrapped backend's are.
/// `get_now` answers through the wrapped backend only while no [`Op::Read`]
/// fault is switched on (and the backend is not
/// [`as_remote`](Self::as_remote)); otherwise it returns `None` and the
/// cache reads through `read`, where the fault applies (a call that must
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

    /// Reports the profile of a remote backend (`remote: true`, the rest as
    /// the wrapped backend's), and answers no `get_now`. The cache
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
}

#[async_trait::async_trait]
impl<B: Backend> Backend for FaultyBackend<B> {
    fn profile(&self) -> Profile {
        let mut profile = self.inner.profile();
        profile.remote |= self.remote;
        profile
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Stored>, BackendError>> {
        // The cache neither times nor guards `get_now` (only an in-process
        // backend can answer at once): seen as remote, every read goes
        // through `read`, as it would across a network.
        if self.remote || self.control.is_armed(Op::Read) {
            return None;
        }
        let answer = self.inner.get_now(key)?;
        self.control.count(Op::Read);
        Some(answer)
    }

    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        self.run(Op::Read, self.inner.read(request)).await
    }

    async fn read_one(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        self.run(Op::Read, self.inner.read_one(key)).await
    }

    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        self.run(Op::Acquire, self.inner.acquire(request)).await
    }

    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        self.run(Op::Fill, self.inner.fill(request)).await
    }

    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        self.run(Op::Set, self.inner.set(request)).await
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        self.run(Op::Invalidate, self.inner.invalidate(keys)).await
    }

    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        let call = self.inner.remove_versions(versions);
        self.run(Op::RemoveVersions, call).await
    }

    fn leases(&self) -> Option<&dyn Leases> {
        self.inner.leases().map(|_| self as &dyn Leases)
    }

    /// Always: a health check and an inspection go through the faults of
    /// `Op::Ping` and `Op::Read` whatever the wrapped backend offers.
    fn inspect(&self) -> Option<&dyn Inspect> {
        Some(self)
    }
}

/// The wrapped backend's leases, under the faults of [`Op::Lease`]
/// (renewing, releasing). Taking a lease is part of an acquisition
/// ([`Op::Acquire`]).
#[async_trait::async_trait]
impl<B: Backend> Leases for FaultyBackend<B> {
    async fn renew(&self, keys: &[String], lease: LeaseAsk<'_>) -> Result<Vec<bool>, BackendError> {
        let leases = self.inner_leases()?;
        self.run(Op::Lease, leases.renew(keys, lease)).await
    }

    async fn release(&self, keys: &[String], token: &str) -> Result<(), BackendError> {
        let leases = self.inner_leases()?;
        self.run(Op::Lease, leases.release(keys, token)).await
    }

    fn watch_fills(&self, key: &str) -> Option<FillWatch> {
        self.inner.leases()?.watch_fills(key)
    }
}

/// The wrapped backend's inspection (or, if it has none, what the cache
/// assumes of such a backend: the keys as given, always answering), with
/// `describe` under the faults of [`Op::Read`] and `ping` under
/// [`Op::Ping`].
#[async_trait::async_trait]
impl<B: Backend> Inspect for FaultyBackend<B> {
    fn storage_key(&self, key: &str) -> String {
        self.inner
            .inspect()
            .map_or_else(|| key.to_owned(), |i| i.storage_key(key))
    }

    async fn describe(&self, key: &str, versions: &[String]) -> Result<StorageInfo, BackendError> {
        let call = async {
            match self.inner.inspect() {
                Some(inspect) => inspect.describe(key, versions).await,
                None => Ok(StorageInfo::new(key).token_keys(versions.to_vec())),
            }
        };
        self.run(Op::Read, call).await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let call = async {
            match self.inner.inspect() {
                Some(inspect) => inspect.ping().await,
                None => Ok(()),
            }
        };
        self.run(Op::Ping, call).await
    }
}

impl<B: Backend> FaultyBackend<B> {
    fn inner_leases(&self) -> Result<&dyn Leases, BackendError> {
        self.inner.leases().ok_or_else(|| {
            BackendError::failed(std::io::Error::other(
                "FaultyBackend: the wrapped backend has no leases",
            ))
        })
    }
}
