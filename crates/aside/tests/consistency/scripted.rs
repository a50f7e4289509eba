//! Backends scripted for the moments Redis cannot be stopped at: memory
//! backends that claim to be remote (so leases, the breaker and the clock
//! checks are used) and hold one operation until the test lets it go.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aside::{Backend, BackendError, Capabilities, FillToken, Lease, Leases, MemoryBackend, Stored};
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
    fn capabilities(&self) -> Capabilities {
        Capabilities::remote()
    }
    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }
    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        self.inner.get(key).await
    }
    async fn get_with_versions(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
        self.inner.get_with_versions(key, versions).await
    }
    async fn get_for_fill(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        self.inner.get_for_fill(key, versions, marker_ttl).await
    }
    async fn fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        self.inner.fill(key, value, ttl, token, versions).await
    }
    async fn bump_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        self.inner.bump_versions(versions).await
    }
    async fn set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        versions: &[String],
    ) -> Result<(), BackendError> {
        self.inner.set(key, value, ttl, versions).await
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
    async fn get_for_fill_leased(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        _ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        let (stored, fill) = self.inner.get_for_fill(key, versions, marker_ttl).await?;
        if self.acquires.fetch_add(1, Ordering::SeqCst) == 0 {
            self.holding.store(true, Ordering::SeqCst);
            self.hold_first_acquire.notified().await;
            // Another process holds the lease.
            return Ok((stored, fill.with_lease(Lease::Busy(Duration::from_secs(5)))));
        }
        Ok((stored, fill.with_lease(Lease::Held(token.to_owned()))))
    }
    async fn renew_lease(
        &self,
        _key: &str,
        _token: &str,
        _ttl: Duration,
    ) -> Result<bool, BackendError> {
        Ok(true)
    }
    async fn release_lease(&self, _key: &str, _token: &str) -> Result<(), BackendError> {
        Ok(())
    }
    fn watch_fills(&self, _key: &str) -> Option<aside::FillWatch> {
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
    fn capabilities(&self) -> Capabilities {
        Capabilities::remote()
    }
    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }
    async fn get(&self, key: &str) -> Result<Option<Stored>, BackendError> {
        let got = self.inner.get(key).await;
        if self.hold_next_get.swap(false, Ordering::SeqCst) {
            self.get_held.notify_one();
            self.release_get.notified().await;
        }
        got
    }
    async fn get_with_versions(
        &self,
        key: &str,
        versions: &[String],
    ) -> Result<(Option<Stored>, Vec<u64>), BackendError> {
        self.inner.get_with_versions(key, versions).await
    }
    async fn get_for_fill(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        self.inner.get_for_fill(key, versions, marker_ttl).await
    }
    async fn fill(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> Result<bool, BackendError> {
        self.inner.fill(key, value, ttl, token, versions).await
    }
    async fn bump_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        self.inner.bump_versions(versions).await
    }
    async fn set(
        &self,
        key: &str,
        value: Stored,
        ttl: Duration,
        versions: &[String],
    ) -> Result<(), BackendError> {
        self.inner.set(key, value, ttl, versions).await
    }
    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        self.inner.invalidate(keys).await
    }
}

/// Leases as the tests script them: only the acquire is of interest.
#[async_trait::async_trait]
impl Leases for HeldGet {
    async fn get_for_fill_leased(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        _ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        let (stored, fill) = self.inner.get_for_fill(key, versions, marker_ttl).await?;
        let lease = if self.busy.load(Ordering::SeqCst) {
            Lease::Busy(Duration::from_secs(5))
        } else {
            Lease::Held(token.to_owned())
        };
        Ok((stored, fill.with_lease(lease)))
    }
    async fn renew_lease(
        &self,
        _key: &str,
        _token: &str,
        _ttl: Duration,
    ) -> Result<bool, BackendError> {
        Ok(true)
    }
    async fn release_lease(&self, _key: &str, _token: &str) -> Result<(), BackendError> {
        Ok(())
    }
    fn watch_fills(&self, _key: &str) -> Option<aside::FillWatch> {
        None
    }
}
