//! A two-level backend whose L2 and backplane the test scripts: L2 is a
//! `MemoryBackend` behind a wrapper ([`Gated`]) that can hold one `get`,
//! `fill` or `set` after it reached the shared store, or fail `invalidate`;
//! the backplane is an in-process bus ([`Bus`]) that can drop a publish,
//! reorder two, or go down. With them a test forces the exact interleaving
//! it is about.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use aside::backend::{
    AcquireRequest, Acquired, Backend, BackendError, Backplane, BackplaneListener,
    BackplaneSubscription, FillRequest, Found, MemoryBackend, Profile, Publishing, ReadRequest,
    SetRequest, TieredBackend,
};
use aside::{Cache, EntryOptions};
use aside_test::fixtures::DbError;
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------
// A scripted L2
// ---------------------------------------------------------------------------

/// One point where an operation can be held: armed once, it signals
/// `reached` and waits for `release`.
#[derive(Default)]
pub struct Pause {
    armed: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl fmt::Debug for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pause")
    }
}

impl Pause {
    /// Holds the next operation through this point: returns (reached, release).
    pub fn arm(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.armed.lock().unwrap() = Some((reached_tx, release_rx));
        (reached_rx, release_tx)
    }

    async fn point(&self) {
        let taken = self.armed.lock().unwrap().take();
        if let Some((reached, release)) = taken {
            let _ = reached.send(());
            let _ = release.await;
        }
    }
}

#[derive(Debug, Default)]
pub struct Ctl {
    /// Held after the shared store answered / was written.
    pub get: Pause,
    pub get_with_versions: Pause,
    pub fill: Pause,
    pub set: Pause,
    /// How many of the next `invalidate` calls fail (before touching L2).
    pub fail_invalidate: AtomicUsize,
    pub invalidate_calls: AtomicUsize,
}

/// A `MemoryBackend` (shared by every clone) with scripted pauses.
#[derive(Debug, Clone)]
pub struct Gated {
    pub inner: MemoryBackend,
    pub ctl: Arc<Ctl>,
}

impl Gated {
    pub fn new() -> Self {
        Gated {
            inner: MemoryBackend::new(),
            ctl: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Backend for Gated {
    fn profile(&self) -> Profile {
        self.inner.profile()
    }

    /// A read stops at the `get` point, or at `get_with_versions` when it
    /// reads version tokens too.
    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        let r = self.inner.read(request).await;
        if request.versions.is_empty() {
            self.ctl.get.point().await;
        } else {
            self.ctl.get_with_versions.point().await;
        }
        r
    }

    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        self.inner.acquire(request).await
    }

    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        let r = self.inner.fill(request).await;
        self.ctl.fill.point().await;
        r
    }

    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        let r = self.inner.set(request).await;
        self.ctl.set.point().await;
        r
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        self.ctl.invalidate_calls.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .ctl
            .fail_invalidate
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(BackendError::failed(std::io::Error::other(
                "scripted failure",
            )));
        }
        self.inner.invalidate(keys).await
    }

    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        self.inner.remove_versions(versions).await
    }
}

// ---------------------------------------------------------------------------
// A scripted backplane
// ---------------------------------------------------------------------------

#[derive(Default)]
pub struct BusState {
    pub listeners: Mutex<Vec<Weak<dyn BackplaneListener>>>,
    /// While down, messages are lost.
    pub down: AtomicBool,
    /// How many of the next publishes fail (nothing is sent).
    pub fail_publishes: AtomicUsize,
    /// When set, the next publish is held back and delivered right after
    /// the one that follows it (two concurrent publishes, reordered).
    pub reorder_next: AtomicBool,
    pub held: Mutex<VecDeque<Vec<u8>>>,
}

/// An in-process backplane whose delivery the test controls.
#[derive(Clone, Default)]
pub struct Bus(pub Arc<BusState>);

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bus")
    }
}

impl Bus {
    pub fn listeners(&self) -> Vec<Arc<dyn BackplaneListener>> {
        self.0
            .listeners
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    pub fn live_listeners(&self) -> usize {
        self.listeners().len()
    }

    pub fn connect_all(&self) {
        self.0.down.store(false, Ordering::SeqCst);
        for l in self.listeners() {
            l.connected();
        }
    }

    pub fn disconnect_all(&self) {
        self.0.down.store(true, Ordering::SeqCst);
        for l in self.listeners() {
            l.disconnected();
        }
    }

    /// Delivers `payload` to every live subscriber (what another service's
    /// PUBLISH does).
    pub fn deliver(&self, payload: &[u8]) {
        if self.0.down.load(Ordering::SeqCst) {
            return;
        }
        for l in self.listeners() {
            l.message(payload);
        }
    }
}

impl Backplane for Bus {
    /// Delivered (or failed) at the call, so in call order.
    fn publish(&self, message: Vec<u8>) -> Publishing {
        let sent = self.send(&message);
        Box::pin(async move { sent })
    }

    fn subscribe(
        &self,
        _instance: &str,
        listener: Weak<dyn BackplaneListener>,
    ) -> BackplaneSubscription {
        self.0.listeners.lock().unwrap().push(listener);
        BackplaneSubscription::new(())
    }
}

impl Bus {
    fn send(&self, message: &[u8]) -> Result<(), BackendError> {
        let s = &self.0;
        if s.fail_publishes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(BackendError::failed(std::io::Error::other(
                "scripted publish failure",
            )));
        }
        if s.reorder_next.swap(false, Ordering::SeqCst) {
            s.held.lock().unwrap().push_back(message.to_vec());
            return Ok(());
        }
        self.deliver(message);
        let held: Vec<_> = s.held.lock().unwrap().drain(..).collect();
        for m in held {
            self.deliver(&m);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

pub const NS: &str = "rv";

pub fn cache_over(backend: impl Backend) -> Cache {
    Cache::builder()
        .namespace(NS)
        .ttl(Duration::from_secs(60))
        .ttl_jitter(0.0)
        .backend(backend)
        .build()
        .unwrap()
}

/// A cache over a `TieredBackend` over `l2`, with `bus` as its backplane.
pub fn tiered(l2: &Gated, bus: Option<&Bus>) -> (Cache, TieredBackend) {
    // The scripted bus has no heartbeats: its copies are bounded by its
    // own delivery and the age, as these tests expect.
    let mut b = TieredBackend::builder(l2.clone())
        .max_l1_age(Duration::from_secs(60))
        .max_staleness(None);
    if let Some(bus) = bus {
        b = b.backplane(bus.clone());
    }
    let backend = b.build().unwrap();
    (cache_over(backend.clone()), backend)
}

pub async fn load(cache: &Cache, key: &str, value: &str) -> Option<String> {
    let value = value.to_owned();
    cache
        .get_or_load(key, move || async move { Ok::<_, DbError>(Some(value)) })
        .await
        .unwrap()
}

pub async fn load_tagged(cache: &Cache, key: &str, tag: &str, value: &str) -> Option<String> {
    let value = value.to_owned();
    cache
        .get_or_load_with(key, &EntryOptions::new().tag(tag), move || async move {
            Ok::<_, DbError>(Some(value))
        })
        .await
        .unwrap()
}

pub async fn get(cache: &Cache, key: &str) -> Option<String> {
    cache.get::<String>(key).await.unwrap()
}

/// Polls `check` for up to 2 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(2);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 2 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
