//! Backends scripted for the moments Redis cannot be stopped at: memory
//! backends that claim to be remote (so leases, the breaker and the clock
//! checks are used) and hold one operation until the test lets it go.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aside::backend::{
    AcquireRequest, Acquired, Backend, BackendError, FillRequest, Found, Lease, LeaseAsk, Leases,
    MemoryBackend, Profile, ReadRequest, SetRequest,
};
use tokio::sync::Notify;

/// A memory backend that claims to be remote (so leases are used), can hold
/// the first leased acquire and answer "busy", and can fail invalidations
/// after a delay.
#[derive(Debug, Clone)]
pub struct HeldAcquire {
    pub inner: MemoryBackend,
    pub hold_first_acquire: Arc<Notify>,
    pub holding: Arc<AtomicBool>,
    pub acquires: Arc<AtomicUsize>,
    pub fail_invalidations_after: Option<Duration>,
}

impl HeldAcquire {
    pub fn new() -> Self {
        HeldAcquire {
            inner: MemoryBackend::new(),
            hold_first_acquire: Arc::new(Notify::new()),
            holding: Arc::new(AtomicBool::new(false)),
            acquires: Arc::new(AtomicUsize::new(0)),
            fail_invalidations_after: None,
        }
    }
}

#[async_trait::async_trait]
impl Backend for HeldAcquire {
    fn profile(&self) -> Profile {
        Profile::remote()
    }
    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }
    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        self.inner.read(request).await
    }
    /// The first leased acquire is held until `hold_first_acquire` is
    /// notified and then finds the lease held elsewhere; later ones take it.
    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        let mut got = self.inner.acquire(request).await?;
        let Some(lease) = request.lease else {
            return Ok(got);
        };
        for a in &mut got {
            if self.acquires.fetch_add(1, Ordering::SeqCst) == 0 {
                self.holding.store(true, Ordering::SeqCst);
                self.hold_first_acquire.notified().await;
                // Another process holds the lease.
                a.token = a
                    .token
                    .clone()
                    .with_lease(Lease::Busy(Duration::from_secs(5)));
            } else {
                a.token = a
                    .token
                    .clone()
                    .with_lease(Lease::Held(lease.token.to_owned()));
            }
        }
        Ok(got)
    }
    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        self.inner.fill(request).await
    }
    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        self.inner.remove_versions(versions).await
    }
    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        self.inner.set(request).await
    }
    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        if let Some(after) = self.fail_invalidations_after {
            tokio::time::sleep(after).await;
            return Err(BackendError::failed(std::io::Error::other("link down")));
        }
        self.inner.invalidate(keys).await
    }
}

/// Leases as the tests script them: only the acquire is of interest.
#[async_trait::async_trait]
impl Leases for HeldAcquire {
    async fn renew(&self, keys: &[String], _: LeaseAsk<'_>) -> Result<Vec<bool>, BackendError> {
        Ok(vec![true; keys.len()])
    }
    async fn release(&self, _keys: &[String], _token: &str) -> Result<(), BackendError> {
        Ok(())
    }
    fn watch_fills(&self, _key: &str) -> Option<aside::backend::FillWatch> {
        None
    }
}

/// A memory backend that claims to be remote and can hold one read, answer
/// leased acquires with "busy", and count acquires.
#[derive(Debug, Clone, Default)]
pub struct HeldGet {
    pub inner: MemoryBackend,
    /// The next `get` reads, then waits for `release_get` before answering.
    pub hold_next_get: Arc<AtomicBool>,
    pub get_held: Arc<Notify>,
    pub release_get: Arc<Notify>,
    /// Leased acquires answer "held elsewhere".
    pub busy: Arc<AtomicBool>,
    pub acquires: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Backend for HeldGet {
    fn profile(&self) -> Profile {
        Profile::remote()
    }
    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }
    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        let got = self.inner.read(request).await;
        if request.versions.is_empty() && self.hold_next_get.swap(false, Ordering::SeqCst) {
            self.get_held.notify_one();
            self.release_get.notified().await;
        }
        got
    }
    /// Leased acquires are counted and answer "held elsewhere" while
    /// `busy`.
    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        let mut got = self.inner.acquire(request).await?;
        if let Some(lease) = request.lease {
            for a in &mut got {
                self.acquires.fetch_add(1, Ordering::SeqCst);
                let held = if self.busy.load(Ordering::SeqCst) {
                    Lease::Busy(Duration::from_secs(5))
                } else {
                    Lease::Held(lease.token.to_owned())
                };
                a.token = a.token.clone().with_lease(held);
            }
        }
        Ok(got)
    }
    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        self.inner.fill(request).await
    }
    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        self.inner.remove_versions(versions).await
    }
    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        self.inner.set(request).await
    }
    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        self.inner.invalidate(keys).await
    }
}

/// Leases as the tests script them: only the acquire is of interest.
#[async_trait::async_trait]
impl Leases for HeldGet {
    async fn renew(&self, keys: &[String], _: LeaseAsk<'_>) -> Result<Vec<bool>, BackendError> {
        Ok(vec![true; keys.len()])
    }
    async fn release(&self, _keys: &[String], _token: &str) -> Result<(), BackendError> {
        Ok(())
    }
    fn watch_fills(&self, _key: &str) -> Option<aside::backend::FillWatch> {
        None
    }
}
