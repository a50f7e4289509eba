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

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{
    AcquireRequest, Acquired, Backend, Backplane, BackplaneListener, BackplaneSubscription,
    FillRequest, Found, Inspect, Leases, Profile, Publishing, ReadRequest, SetRequest, Stored,
};
use crate::clock::{Clock, SystemClock};
use crate::error::{BackendError, Error};

mod batch;
mod events;
mod l1;
mod link;
mod strict;

use strict::Membered;
pub use strict::Strict;

use events::{Message, Op};
use l1::L1;
use link::Link;

/// The in-process cache refuses (panics on) a longer time to live.
const LONGEST_L1_AGE: Duration = Duration::from_secs(1_000 * 365 * 24 * 3600);

/// Strict writes wait for acknowledgements and leases: an hour is already
/// far past any use, and keeps every deadline's arithmetic in range.
const LONGEST_STRICT_SETTING: Duration = Duration::from_secs(3600);

/// The default of [`TieredBackendBuilder::max_staleness`].
const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(100);

/// Strict invalidation needs heartbeats (renewals follow them) and a
/// registry of instances, and leases longer than their margin.
fn check_strict(backplane: Option<&dyn Backplane>, strict: &Strict) -> Result<(), Error> {
    let Some(backplane) = backplane else {
        return Err(Error::config(
            "strict invalidation needs a backplane (there are no other instances to wait for \
             without one)",
        ));
    };
    if backplane.heartbeat().is_none() || backplane.members().is_none() {
        return Err(Error::config(
            "strict invalidation needs a backplane with heartbeats and a registry of instances \
             (the Redis backplane on one Redis; a Redis Cluster backplane has neither)",
        ));
    }
    if strict.member_lease <= strict.drift_margin.saturating_mul(2)
        || strict.member_lease > LONGEST_STRICT_SETTING
        || strict.ack_timeout.is_zero()
        || strict.ack_timeout > LONGEST_STRICT_SETTING
        || strict.drift_margin.is_zero()
    {
        return Err(Error::config(
            "strict invalidation needs a member_lease over twice its drift_margin, a \
             drift_margin and an ack_timeout over zero, and a member_lease and an ack_timeout \
             of at most an hour (a write may wait for both)",
        ));
    }
    Ok(())
}

/// A bound on staleness needs heartbeats at most half as far apart.
fn check_heartbeat(heartbeat: Option<Duration>, bound: Duration) -> Result<(), Error> {
    match heartbeat {
        Some(h) if h.saturating_mul(2) <= bound => Ok(()),
        Some(h) => Err(Error::config(format!(
            "max_staleness {bound:?} needs a backplane heartbeat of at most half of it; \
             this one beats every {h:?} (RedisBackplane::heartbeat sets it)"
        ))),
        None => Err(Error::config(
            "max_staleness needs a backplane with heartbeats, which this one has not (a Redis \
             Cluster backplane has none: its messages reach other nodes over the cluster bus, \
             in no order against a heartbeat); build with max_staleness(None) to bound copies \
             by max_l1_age and the backplane's delivery only",
        )),
    }
}

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
    /// This instance's name on the backplane.
    id: String,
    /// Where messages go out, and the number of the last one: numbered and
    /// queued under this lock, so that they leave in number order.
    outbox: Option<(Arc<dyn Backplane>, Mutex<u64>)>,
    /// Keeps the subscription (and its listener) alive.
    link: Mutex<Option<(Arc<Link>, BackplaneSubscription)>>,
    stats: Arc<Counters>,
    /// Strict invalidation's state, when on.
    membered: Option<Membered>,
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
    revocations: AtomicU64,
    clock_drifts: AtomicU64,
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
    /// Strict invalidation: instances this one revoked because they did
    /// not acknowledge its write in time.
    pub revocations: u64,
    /// Strict invalidation: renewals at which this machine's clock and
    /// Redis's disagreed beyond the drift margin (copies stopped).
    pub clock_drifts: u64,
}

impl fmt::Debug for TieredBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredBackend")
            .field("l2", &self.inner.l2)
            .field("max_l1_age", &self.inner.max_l1_age)
            .field("backplane", &self.inner.outbox.as_ref().map(|(b, _)| b))
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
    max_staleness: Option<Duration>,
    strict: Option<Strict>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for TieredBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredBackendBuilder")
            .field("l1_max_entries", &self.l1_max_entries)
            .field("max_l1_age", &self.max_l1_age)
            .field("max_staleness", &self.max_staleness)
            .field("strict", &self.strict)
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

    /// How far behind the other instances' invalidations this instance's
    /// copies may be (default 100 ms; `None`: no bound but the backplane's
    /// delivery and [`max_l1_age`](Self::max_l1_age)), with a backplane.
    ///
    /// A copy is served only while the subscription has proven, less than
    /// `max_staleness` ago, that it had delivered (and this instance
    /// applied) every message published until then: the backplane's
    /// heartbeats pass through Redis on the subscription's own connection,
    /// so they queue behind the messages (see
    /// [`Backplane::heartbeat`]). Past it, reads go to L2 until the
    /// subscription catches up. So no read that begins more than
    /// `max_staleness` after another instance's invalidation returned
    /// `Applied` returns what it removed, however busy this process's
    /// runtime or this machine is, and whether or not the subscription is
    /// half-open. The backplane must have a heartbeat of at most half of
    /// it; a Redis Cluster backplane has none (build with `None` there).
    pub fn max_staleness(mut self, bound: Option<Duration>) -> Self {
        self.max_staleness = bound;
        self
    }

    /// Strict invalidation (off by default): `invalidate`, its batch, tag
    /// and namespace forms and `set` return only once every live instance
    /// has dropped its copies of what they changed, or can no longer serve
    /// them (see [`Strict`] for how, and for its settings). Needs a
    /// backplane with heartbeats and a registry of instances (the Redis
    /// backplane on one Redis). A write that cannot be confirmed (Redis
    /// unreachable) is not reported applied: the cache queues and retries
    /// it. Every instance sharing the backplane must use the same settings.
    pub fn strict(mut self, strict: Strict) -> Self {
        self.strict = Some(strict);
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
    /// `Config` for a zero `max_l1_age` or L1 size, a `max_l1_age` over
    /// 1,000 years, outside a tokio runtime when there is a backplane (its
    /// subscription is a task), a `max_staleness` the backplane's heartbeat
    /// cannot keep, or strict settings it cannot carry (see
    /// [`strict`](Self::strict)).
    pub fn build(self) -> Result<TieredBackend, Error> {
        if self.max_l1_age.is_zero() || self.l1_max_entries == 0 {
            return Err(Error::config(
                "max_l1_age and l1_max_entries must be greater than zero",
            ));
        }
        if self.max_l1_age > LONGEST_L1_AGE {
            return Err(Error::config(
                "max_l1_age must be at most 1,000 years (the in-process cache's limit)",
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
        // With a backplane, copies are served only while the subscription
        // proves it is at most `max_staleness` behind (see `l1`).
        let bound = match (&self.backplane, self.max_staleness) {
            (Some(backplane), Some(bound)) => {
                check_heartbeat(backplane.heartbeat(), bound)?;
                Some(bound)
            }
            _ => None,
        };
        if let Some(strict) = &self.strict {
            check_strict(self.backplane.as_deref(), strict)?;
        }
        let inner = Arc::new(Tier {
            l1: L1::new(
                self.l1_max_entries,
                trusted,
                self.max_l1_age,
                bound,
                self.strict.is_some(),
                Arc::clone(&self.clock),
            ),
            l2: self.l2,
            max_l1_age: self.max_l1_age,
            id: format!("{:016x}", rand::random::<u64>()),
            outbox: self.backplane.map(|b| (b, Mutex::new(0))),
            link: Mutex::new(None),
            stats: Arc::new(Counters::default()),
            membered: self.strict.map(Membered::new),
            clock: self.clock,
        });
        if let Some((backplane, _)) = &inner.outbox {
            let link = Arc::new(Link::new(Arc::downgrade(&inner)));
            let listener: Arc<dyn BackplaneListener> = link.clone();
            let subscription = backplane.subscribe(&inner.id, Arc::downgrade(&listener));
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
            max_staleness: Some(DEFAULT_MAX_STALENESS),
            strict: None,
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
            revocations: get(&c.revocations),
            clock_drifts: get(&c.clock_drifts),
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

    /// Tells the other instances, and waits until the backplane accepted
    /// the message: a write reports `Applied` only once every instance
    /// subscribed can hear of it. Numbered and queued under one lock, so
    /// messages leave in number order and receivers never mistake a
    /// reordering for a loss; a message that could not be sent leaves a
    /// jump in the numbers, which the receivers treat as a gap, and fails
    /// the write (the cache retries it).
    async fn publish(&self, op: Op, keys: &[String]) -> Result<(), BackendError> {
        let Some((seq, sending)) = self.send(op, keys) else {
            return Ok(());
        };
        match sending.await {
            Ok(()) => {
                self.count(&self.stats.published);
                self.confirm(seq).await
            }
            Err(e) => {
                self.count(&self.stats.publish_errors);
                tracing::warn!(error = %e, "aside: an invalidation message was not sent; the write is retried");
                Err(e)
            }
        }
    }

    /// Numbers `op` as this instance's next message and queues it, under
    /// one lock, so that messages leave in number order.
    fn send(&self, op: Op, keys: &[String]) -> Option<(u64, Publishing)> {
        let (backplane, last) = self.outbox.as_ref()?;
        let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
        *last += 1;
        let message = Message {
            v: events::VERSION,
            src: Some(self.id.clone()),
            seq: *last,
            op,
            keys: keys.to_vec(),
            ack: self.membered.is_some(),
        };
        Some((*last, backplane.publish(message.encode())))
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
            write_grace: self
                .inner
                .membered
                .as_ref()
                .map_or(Duration::ZERO, |m| m.settings.longest_write()),
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
            t.publish(Op::Keys, &keys).await
        })
        .await
    }

    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        let (t, versions) = (Arc::clone(&self.inner), versions.to_vec());
        to_the_end(async move {
            t.l2.remove_versions(&versions).await?;
            t.l1.evict_versions(&versions);
            t.publish(Op::Versions, &versions).await
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
