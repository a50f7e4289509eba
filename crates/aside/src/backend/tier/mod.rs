//! Two levels: an in-process copy (L1, moka) in front of a shared backend
//! (L2, Redis), kept honest by a backplane.
//!
//! # Design
//! - **L2 is the truth.** Tokens, conditional fills, leases: everything of
//!   the consistency promise happens in L2, exactly as without L1. L1 only
//!   keeps *copies* of what L2 answered (entries, and tag and namespace
//!   tokens), so an L1 hit costs no round trip, tagged entries included.
//! - **A copy never outlives its cause.** Copies are put under a guard taken
//!   before the L2 call, and evictions remove the guard (see `l1`): a read or
//!   fill that raced an invalidation cannot leave an old copy behind. An
//!   instance evicts its own copies after its L2 write and before its
//!   invalidation returns, so in that instance the promise holds as it does
//!   without L1.
//! - **Other instances hear it on the backplane.** Every invalidation, tag or
//!   namespace invalidation and `set` publishes a message (see `events`);
//!   the others evict their copies when it arrives (a few milliseconds on a
//!   LAN). Until then they may serve their copy: that window is the price of
//!   a round-trip-free hit, and it is bounded three ways:
//!   1. the backplane's delivery time, when it works;
//!   2. a **gap** (the subscription was lost, PING unanswered, a jump in a
//!      sender's message numbers, a message not understood) makes every copy
//!      stale at once (an epoch), and while the subscription is down L1 is
//!      not used at all;
//!   3. every copy lives at most [`max_l1_age`](TieredBackendBuilder::max_l1_age)
//!      and never past the entry's own TTL, even if every message is lost.
//! - **Other services** can publish the same messages (without `src`):
//!   instances apply them to L2 as well as to their copies.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    AcquireRequest, Acquired, Backend, Backplane, BackplaneListener, BackplaneSubscription,
    FillRequest, Found, Inspect, Leases, Profile, ReadRequest, SetRequest, Stored,
};
use crate::clock::{Clock, SystemClock};
use crate::error::{BackendError, Error};

mod batch;
mod events;
mod l1;

use events::{Message, Op};
use l1::L1;

/// A two-level backend: [`MemoryBackend`](super::MemoryBackend)-like copies
/// in process, in front of any backend (Redis), with an optional
/// [`Backplane`] to hear other instances' invalidations.
///
/// ```no_run
/// use aside::backend::{RedisBackend, TieredBackend};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// let redis = RedisBackend::new("redis://127.0.0.1:6379")?;
/// let backplane = redis.backplane("aside:events")?;
/// let tiered = TieredBackend::builder(redis)
///     .l1_max_entries(50_000)
///     .max_l1_age(Duration::from_secs(10))
///     .backplane(backplane)
///     .build()?;
/// let cache = aside::Cache::builder().namespace("shop").backend(tiered).build()?;
/// # let _ = cache; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TieredBackend {
    inner: Arc<Tier>,
}

struct Tier {
    l1: L1,
    l2: Arc<dyn Backend>,
    max_l1_age: Duration,
    backplane: Option<Arc<dyn Backplane>>,
    /// This instance's name on the backplane.
    id: String,
    /// Messages go out in number order through one task (see `publisher`).
    outbox: Option<mpsc::UnboundedSender<Message>>,
    /// Keeps the subscription (and its listener) alive.
    link: Mutex<Option<(Arc<Link>, BackplaneSubscription)>>,
    stats: Arc<Counters>,
    /// The time copies are judged by: an entry's expiry is on the writing
    /// cache's clock, so give this the cache's clock when it is not the
    /// system's.
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct Counters {
    l1_hits: AtomicU64,
    l1_misses: AtomicU64,
    published: AtomicU64,
    publish_errors: AtomicU64,
    received: AtomicU64,
    foreign: AtomicU64,
    gaps: AtomicU64,
}

/// A snapshot of a [`TieredBackend`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TieredStats {
    /// Reads answered by an in-process copy.
    pub l1_hits: u64,
    /// Reads that went to L2.
    pub l1_misses: u64,
    /// Messages sent on the backplane.
    pub published: u64,
    /// Messages that could not be sent (the others learn of it as a gap).
    pub publish_errors: u64,
    /// Messages heard from other instances or services.
    pub received: u64,
    /// Of those, messages from other services (applied to L2 too).
    pub foreign: u64,
    /// Gaps: every in-process copy was dropped at once.
    pub gaps: u64,
    /// In-process copies (approximate).
    pub l1_entries: u64,
    /// In-process copies removed to stay within `l1_max_entries`.
    pub l1_evictions: u64,
}

impl fmt::Debug for TieredBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredBackend")
            .field("l2", &self.inner.l2)
            .field("max_l1_age", &self.inner.max_l1_age)
            .field("backplane", &self.inner.backplane)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TieredBackend`].
#[must_use]
pub struct TieredBackendBuilder {
    l2: Arc<dyn Backend>,
    l1_max_entries: u64,
    max_l1_age: Duration,
    backplane: Option<Arc<dyn Backplane>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for TieredBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredBackendBuilder")
            .field("l1_max_entries", &self.l1_max_entries)
            .field("max_l1_age", &self.max_l1_age)
            .finish_non_exhaustive()
    }
}

impl TieredBackendBuilder {
    /// How many entries L1 keeps (default 10,000).
    pub fn l1_max_entries(mut self, n: u64) -> Self {
        self.l1_max_entries = n;
        self
    }

    /// The longest an in-process copy is served (default 10 s): the bound on
    /// staleness across instances if every backplane message were lost.
    pub fn max_l1_age(mut self, age: Duration) -> Self {
        self.max_l1_age = age;
        self
    }

    /// Hear other instances' invalidations (and tell them ours), for example
    /// [`RedisBackend::backplane`](crate::backend::RedisBackend::backplane). Without
    /// one, copies are only bounded by `max_l1_age`.
    pub fn backplane(mut self, backplane: impl Backplane + 'static) -> Self {
        self.backplane = Some(Arc::new(backplane));
        self
    }

    /// The clock copies are judged by (default: the system clock): how long
    /// a copy of an entry may live is the entry's expiry, which the cache
    /// that wrote it set on its own clock, minus this clock's now. Give it
    /// the clock the caches over this backend use
    /// ([`CacheBuilder::clock`](crate::CacheBuilder::clock)) when that is
    /// not the system's.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the backend and subscribes to the backplane.
    ///
    /// # Errors
    /// `Config` for a zero `max_l1_age` or L1 size, or outside a tokio runtime
    /// when there is a backplane (its subscription is a task).
    pub fn build(self) -> Result<TieredBackend, Error> {
        if self.max_l1_age.is_zero() || self.l1_max_entries == 0 {
            return Err(Error::config(
                "max_l1_age and l1_max_entries must be greater than zero",
            ));
        }
        if self.backplane.is_some() && tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "a TieredBackend with a backplane must be built inside a tokio runtime",
            ));
        }
        // Without a backplane there is nothing to wait for; with one, copies
        // are trusted only once the subscription is live.
        let trusted = self.backplane.is_none();
        let stats = Arc::new(Counters::default());
        let outbox = self.backplane.as_ref().map(|backplane| {
            let (tx, rx) = mpsc::unbounded_channel();
            crate::task::spawn(publisher(
                Arc::clone(backplane),
                rx,
                Arc::clone(&stats),
                self.max_l1_age,
            ));
            tx
        });
        let inner = Arc::new(Tier {
            l1: L1::new(
                self.l1_max_entries,
                trusted,
                self.max_l1_age,
                Arc::clone(&self.clock),
            ),
            l2: self.l2,
            max_l1_age: self.max_l1_age,
            backplane: self.backplane,
            id: format!("{:016x}", rand::random::<u64>()),
            outbox,
            link: Mutex::new(None),
            stats,
            clock: self.clock,
        });
        if let Some(backplane) = &inner.backplane {
            let link = Arc::new(Link {
                tier: Arc::downgrade(&inner),
                sources: Mutex::new(HashMap::new()),
            });
            let listener: Arc<dyn BackplaneListener> = link.clone();
            let subscription = backplane.subscribe(Arc::downgrade(&listener));
            *inner.link.lock().unwrap_or_else(PoisonError::into_inner) = Some((link, subscription));
        }
        Ok(TieredBackend { inner })
    }
}

impl TieredBackend {
    /// A builder over `l2`.
    pub fn builder(l2: impl Backend) -> TieredBackendBuilder {
        TieredBackendBuilder {
            l2: Arc::new(l2),
            l1_max_entries: 10_000,
            max_l1_age: Duration::from_secs(10),
            backplane: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TieredStats {
        let c = &self.inner.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TieredStats {
            l1_hits: get(&c.l1_hits),
            l1_misses: get(&c.l1_misses),
            published: get(&c.published),
            publish_errors: get(&c.publish_errors),
            received: get(&c.received),
            foreign: get(&c.foreign),
            gaps: get(&c.gaps),
            l1_entries: self.inner.l1.len(),
            l1_evictions: self.inner.l1.evictions(),
        }
    }
}

impl Tier {
    /// How long a copy of an entry read from L2 may be served: never past
    /// the entry's hard TTL (L2 keeps it through the stale and fail-safe
    /// windows, which the cache then checks itself), never past
    /// `max_l1_age`. Bytes that are not an entry are not copied.
    fn l1_ttl(&self, stored: &Stored) -> Duration {
        let Some(expires) = stored.expires_at_ms() else {
            return Duration::ZERO;
        };
        Duration::from_millis(expires.saturating_sub(self.clock.now_ms())).min(self.max_l1_age)
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Tells the other instances: queued for the one task that numbers and
    /// sends messages in order, retrying a failed send (see `publisher`).
    fn publish(&self, op: Op, keys: &[String]) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        // Numbered by the publisher, in the order it takes them: numbering
        // here could hand two racing callers numbers in the other order.
        let message = Message {
            v: events::VERSION,
            src: Some(self.id.clone()),
            seq: 0,
            op,
            keys: keys.to_vec(),
        };
        // Fails only once the publisher is gone, i.e. the backend is being
        // dropped: nobody is left to tell.
        let _ = outbox.send(message);
    }

    fn gap(&self) {
        self.count(&self.stats.gaps);
        self.l1.gap();
    }

    /// An entry read from L2, with the TTL its copy may live.
    fn read_copy(&self, stored: Option<&Stored>) -> Option<(Stored, Duration)> {
        stored.map(|s| (s.clone(), self.l1_ttl(s)))
    }
}

/// Sends messages in their number order, so receivers never mistake a
/// reordering for a loss. A failed send is retried with backoff for up to
/// `give_up_after` (the longest any copy lives: after that, no copy the
/// message was meant to evict can exist); a message given up on is a jump in
/// our numbers, which receivers treat as a gap. Ends when the backend is
/// dropped (the sender with it).
async fn publisher(
    backplane: Arc<dyn Backplane>,
    mut outbox: mpsc::UnboundedReceiver<Message>,
    stats: Arc<Counters>,
    give_up_after: Duration,
) {
    let mut seq = 0u64;
    while let Some(mut message) = outbox.recv().await {
        seq += 1;
        message.seq = seq;
        let bytes = message.encode();
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            match backplane.publish(&bytes).await {
                Ok(()) => {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                    if started.elapsed() >= give_up_after {
                        tracing::warn!(error = %e, "aside: gave up publishing an invalidation; receivers will see a gap");
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// The backplane's listener: applies what other instances and services say.
struct Link {
    tier: Weak<Tier>,
    /// The last message number heard from each instance.
    sources: Mutex<HashMap<String, u64>>,
}

/// Instances remembered at most; past it the map starts over (a gap, since a
/// jump could no longer be seen).
const MAX_SOURCES: usize = 10_000;

impl BackplaneListener for Link {
    fn connected(&self) {
        if let Some(tier) = self.tier.upgrade() {
            // Whatever was published while we were away is lost.
            tier.gap();
            tier.l1.set_trusted(true);
        }
    }

    fn disconnected(&self) {
        if let Some(tier) = self.tier.upgrade() {
            tier.l1.set_trusted(false);
            tier.gap();
        }
    }

    fn message(&self, payload: &[u8]) {
        let Some(tier) = self.tier.upgrade() else {
            return;
        };
        let Some(message) = Message::decode(payload) else {
            tracing::warn!(
                "aside: a backplane message was not understood; dropping in-process copies"
            );
            tier.gap();
            return;
        };
        match &message.src {
            Some(src) if *src == tier.id => return,
            Some(src) => {
                let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
                if sources.len() >= MAX_SOURCES && !sources.contains_key(src) {
                    sources.clear();
                    tier.gap();
                }
                let last = sources.insert(src.clone(), message.seq);
                // The first message heard from an instance must be its first
                // (or we may have missed some before it), later ones must
                // follow on.
                let expected = last.map_or(1, |l| l.wrapping_add(1));
                if message.seq != expected {
                    tracing::debug!(source = %src, "aside: backplane messages were lost");
                    tier.gap();
                }
            }
            None => {}
        }
        tier.count(&tier.stats.received);
        match message.op {
            Op::Keys => tier.l1.evict(&message.keys),
            Op::Versions => tier.l1.evict_versions(&message.keys),
            Op::Clear => tier.gap(),
        }
        if message.src.is_none() && message.op != Op::Clear {
            // From another service: nobody else applies it to L2.
            tier.count(&tier.stats.foreign);
            let tier = Arc::clone(&tier);
            crate::task::spawn(async move {
                // Retried like our own messages: for as long as a copy lives.
                let started = tokio::time::Instant::now();
                let mut pause = Duration::from_millis(10);
                loop {
                    let applied = match message.op {
                        Op::Versions => tier.l2.remove_versions(&message.keys).await,
                        _ => tier.l2.invalidate(&message.keys).await,
                    };
                    // Copies put while it ran were read before it landed.
                    match message.op {
                        Op::Versions => tier.l1.evict_versions(&message.keys),
                        _ => tier.l1.evict(&message.keys),
                    }
                    match applied {
                        Ok(()) => break,
                        Err(e) if started.elapsed() >= tier.max_l1_age => {
                            tracing::warn!(error = %e, "aside: could not apply another service's invalidation");
                            break;
                        }
                        Err(_) => {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            });
        }
    }
}

/// Runs a write in a task of its own and waits for it.
async fn to_the_end(
    write: impl std::future::Future<Output = Result<(), BackendError>> + Send + 'static,
) -> Result<(), BackendError> {
    crate::task::spawn(write).await.unwrap_or_else(|_| {
        Err(BackendError::failed(std::io::Error::other(
            "the write was cut off by the runtime shutting down",
        )))
    })
}

#[async_trait::async_trait]
impl Backend for TieredBackend {
    fn profile(&self) -> Profile {
        // Copies hand back the very `Stored` (decoded values kept), but what
        // comes from L2 may be kept there past its TTL (a persisted key, a
        // restored snapshot), and a copy's life is counted on this machine's
        // clock: the cache checks every entry's age.
        Profile {
            remote: self.inner.l2.profile().remote,
            shares_stored: true,
            exact_expiry: false,
        }
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Stored>, BackendError>> {
        let hit = self.inner.l1.get(key)?;
        self.inner.count(&self.inner.stats.l1_hits);
        Some(Ok(Some(hit)))
    }

    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        self.read_tiered(request).await
    }

    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        self.acquire_tiered(request).await
    }

    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        self.fill_tiered(request).await
    }

    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        self.set_tiered(request).await
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        let (t, keys) = (Arc::clone(&self.inner), keys.to_vec());
        to_the_end(async move {
            // L2 first, then our copies: a copy taken meanwhile finds its
            // guard gone (see `l1`).
            t.l2.invalidate(&keys).await?;
            t.l1.evict(&keys);
            t.publish(Op::Keys, &keys);
            Ok(())
        })
        .await
    }

    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        let (t, versions) = (Arc::clone(&self.inner), versions.to_vec());
        to_the_end(async move {
            t.l2.remove_versions(&versions).await?;
            t.l1.evict_versions(&versions);
            t.publish(Op::Versions, &versions);
            Ok(())
        })
        .await
    }

    /// L2's leases: what their acquisitions read goes through `acquire`,
    /// which copies it.
    fn leases(&self) -> Option<&dyn Leases> {
        self.inner.l2.leases()
    }

    /// The shared tier is the one other processes see.
    fn inspect(&self) -> Option<&dyn Inspect> {
        self.inner.l2.inspect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::Cache;
    use crate::backend::{MemoryBackend, TieredBackend};
    use crate::clock::{Clock, ManualClock};

    /// Two instances over one shared L2, on a clock that is not the
    /// system's (1970, here): what the second reads from L2 is copied for
    /// as long as the entry lives on that clock, so its next read is an L1
    /// hit. Judged by the system clock (as before), the copy's life was
    /// already over and nothing was copied.
    #[tokio::test]
    async fn copies_live_by_the_clock_they_are_given() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let l2 = MemoryBackend::new();
        let instance = || {
            let tier = TieredBackend::builder(l2.clone())
                .clock(clock.clone() as Arc<dyn Clock>)
                .build()
                .unwrap();
            let cache = Cache::builder()
                .namespace("clock")
                .ttl(Duration::from_secs(60))
                .clock(clock.clone())
                .backend(tier.clone())
                .build()
                .unwrap();
            (tier, cache)
        };
        let (_, writer) = instance();
        let (tier, reader) = instance();
        let load = |v: u32| move || async move { Ok::<_, std::io::Error>(Some(v)) };
        assert_eq!(writer.get_or_load("k", load(1)).await.unwrap(), Some(1));
        assert_eq!(reader.get_or_load("k", load(2)).await.unwrap(), Some(1));
        let copied = tier.stats();
        assert_eq!(reader.get_or_load("k", load(3)).await.unwrap(), Some(1));
        assert_eq!(
            tier.stats().l1_hits,
            copied.l1_hits + 1,
            "the second read must be an L1 hit: {:?}",
            tier.stats()
        );
    }
}
