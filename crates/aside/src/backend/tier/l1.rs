//! The in-process level of a [`TieredBackend`](super::TieredBackend): entries
//! and version tokens copied from L2, and the rules that keep a copy from
//! outliving what it copies.
//!
//! Two races matter, and each has one rule:
//!
//! - **A late copy.** A read of L2 returns an entry, an invalidation removes
//!   it from L2 and evicts it here, and only then the read puts its copy
//!   here: a stale copy that nothing will evict. So every copy is taken
//!   under a *guard*: a token created before the L2 read; eviction removes
//!   it, and the copy is put (under the key's compute lock, which eviction
//!   also takes) only while the guard is still there.
//! - **A gap.** Messages that were never heard (the subscription was down)
//!   may have evicted anything. A gap bumps the *epoch*: every copy records
//!   the epoch it was put in, and a copy of an older epoch is a miss. O(1),
//!   however many entries there are. While the subscription is down the
//!   level is not *trusted* at all: reads go to L2 and nothing is copied.
//! - **A late subscription.** A message on its way (a busy machine, a slow
//!   or half-open connection) has not evicted anything yet. With a bound
//!   (`max_staleness`), the level serves copies only while the backplane's
//!   last heartbeat proves it had applied everything published less than
//!   the bound ago: the heartbeat's time plus the bound is kept in one
//!   atomic (`fresh_until`, on the system's boot clock), and every hit
//!   compares it with one clock reading. Past it, reads go to L2 (copies
//!   are still put: they are L2's current answer, and the messages that
//!   arrive later evict them) until a heartbeat comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;

use crate::backend::Stored;
use crate::backend::memory::count_size_evictions;
use crate::clock::Clock;

/// A copy lives `max_l1_age` (the caches' own time-to-live), or less when
/// what it copies expires sooner: then it carries a deadline of its own.
/// (Most copies live the full age; a per-entry expiry policy in moka would
/// cost every read a clock reading and timer-wheel bookkeeping, measured at
/// about a tenth of an L1 hit.)
#[derive(Clone, Debug)]
struct Copy<T> {
    value: T,
    epoch: u64,
    /// On the clock's monotonic reading.
    deadline: Option<Instant>,
}

impl<T> Copy<T> {
    fn live(&self, epoch: u64, clock: &dyn Clock) -> bool {
        self.epoch == epoch && self.deadline.is_none_or(|d| clock.monotonic() < d)
    }
}

/// The right to put one copy: see the module doc.
#[derive(Debug, Clone, Copy)]
pub(super) struct Guard {
    token: u64,
    epoch: u64,
}

/// How long a guard waits for its copy at most (an L2 read is far shorter;
/// a guard that lapses only refuses a copy).
const GUARD_TTL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) struct L1 {
    entries: moka::sync::Cache<String, Copy<Stored>>,
    versions: moka::sync::Cache<String, Copy<u64>>,
    /// Guards of entries (`e` + key) and versions (`v` + key).
    guards: moka::sync::Cache<String, u64>,
    /// Copies removed to make room (not expiries nor evictions by events).
    evictions: Arc<AtomicU64>,
    epoch: AtomicU64,
    trusted: AtomicBool,
    next: AtomicU64,
    max_age: Duration,
    /// With a staleness bound: copies are served only while the boot clock
    /// is below `fresh_until` (the last heartbeat plus the bound).
    bound: Option<u64>,
    fresh_until: AtomicU64,
    /// With strict invalidation: copies are served only while `boot_ns` is
    /// below the local lease deadline (`u64::MAX` without).
    lease_until: AtomicU64,
    /// The boot clock the bound and the lease are counted on (the system's;
    /// a fake one in unit tests).
    boot: fn() -> u64,
    clock: Arc<dyn Clock>,
}

impl L1 {
    pub fn new(
        max_entries: u64,
        trusted: bool,
        max_age: Duration,
        bound: Option<Duration>,
        leased: bool,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        L1 {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(max_age)
                .eviction_listener(count_size_evictions(&evictions))
                .build(),
            evictions,
            // Few: one per tag in use.
            versions: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(max_age)
                .build(),
            // Bounded like the copies: a guard evicted early only refuses a
            // copy, never lets a stale one in.
            guards: moka::sync::Cache::builder()
                .max_capacity(max_entries.saturating_mul(2).max(1024))
                .time_to_live(GUARD_TTL)
                .build(),
            epoch: AtomicU64::new(0),
            trusted: AtomicBool::new(trusted),
            next: AtomicU64::new(1),
            max_age,
            bound: bound.map(|b| u64::try_from(b.as_nanos()).unwrap_or(u64::MAX)),
            fresh_until: AtomicU64::new(0),
            lease_until: AtomicU64::new(if leased { 0 } else { u64::MAX }),
            boot: crate::clock::boot_ns,
            clock,
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Whether copies may be served now: trusted, and within the bound of
    /// the last heartbeat (one atomic load and one clock reading).
    fn serves(&self) -> bool {
        if !self.is_trusted() {
            return false;
        }
        if self.bound.is_none() && self.lease_until.load(Ordering::Relaxed) == u64::MAX {
            return true;
        }
        let now = (self.boot)();
        (self.bound.is_none() || now < self.fresh_until.load(Ordering::Acquire))
            && now < self.lease_until.load(Ordering::Acquire)
    }

    /// Strict invalidation: copies may be served until `until` (`boot_ns`);
    /// 0 stops them at once.
    pub fn set_lease_until(&self, until: u64) {
        self.lease_until.store(until, Ordering::Release);
    }

    /// The backplane proved it had delivered everything published before
    /// `as_of` (`boot_ns`): copies may be served until `as_of` plus the
    /// bound.
    pub fn caught_up(&self, as_of: u64) {
        if let Some(bound) = self.bound {
            self.fresh_until
                .fetch_max(as_of.saturating_add(bound), Ordering::AcqRel);
        }
    }

    pub fn set_trusted(&self, trusted: bool) {
        self.trusted.store(trusted, Ordering::Release);
    }

    /// Everything copied before now is stale.
    pub fn gap(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn get(&self, key: &str) -> Option<Stored> {
        if !self.serves() {
            return None;
        }
        let epoch = self.epoch();
        self.entries
            .get(key)
            .filter(|c| c.live(epoch, &*self.clock))
            .map(|c| c.value)
    }

    /// The copied tokens of all of `keys`, or `None` if any is missing.
    pub fn versions(&self, keys: &[String]) -> Option<Vec<u64>> {
        // No token to serve, no check: an untagged hit reads the clock once
        // (in `get`), not twice.
        if keys.is_empty() {
            return Some(Vec::new());
        }
        if !self.serves() {
            return None;
        }
        let epoch = self.epoch();
        keys.iter()
            .map(|k| {
                self.versions
                    .get(k)
                    .filter(|c| c.live(epoch, &*self.clock))
                    .map(|c| c.value)
            })
            .collect()
    }

    pub fn guard(&self, key: &str) -> Guard {
        self.guard_of(&format!("e{key}"))
    }

    pub fn guard_version(&self, key: &str) -> Guard {
        self.guard_of(&format!("v{key}"))
    }

    fn guard_of(&self, gkey: &str) -> Guard {
        let epoch = self.epoch();
        let fresh = self.next.fetch_add(1, Ordering::Relaxed);
        let token = *self
            .guards
            .entry_by_ref(gkey)
            .or_insert_with(|| fresh)
            .value();
        Guard { token, epoch }
    }

    /// Puts a copy of an entry if its guard still holds.
    pub fn put(&self, key: &str, guard: Guard, value: Stored, ttl: Duration) {
        put_guarded(
            &self.entries,
            &self.guards,
            key,
            &format!("e{key}"),
            guard,
            self,
            value,
            ttl,
        );
    }

    /// Puts a copy of a version token if its guard still holds.
    pub fn put_version(&self, key: &str, guard: Guard, token: u64, ttl: Duration) {
        if token == 0 {
            return;
        }
        put_guarded(
            &self.versions,
            &self.guards,
            key,
            &format!("v{key}"),
            guard,
            self,
            token,
            ttl,
        );
    }

    pub fn evict(&self, keys: &[String]) {
        for key in keys {
            evict_guarded(&self.entries, &self.guards, key, &format!("e{key}"));
        }
    }

    pub fn evict_versions(&self, keys: &[String]) {
        for key in keys {
            evict_guarded(&self.versions, &self.guards, key, &format!("v{key}"));
        }
    }

    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Copies removed to stay within the capacity.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[allow(clippy::too_many_arguments)]
fn put_guarded<T: Clone + Send + Sync + 'static>(
    cache: &moka::sync::Cache<String, Copy<T>>,
    guards: &moka::sync::Cache<String, u64>,
    key: &str,
    gkey: &str,
    guard: Guard,
    l1: &L1,
    value: T,
    ttl: Duration,
) {
    if ttl.is_zero() || !l1.is_trusted() || l1.epoch() != guard.epoch {
        return;
    }
    let deadline = (ttl < l1.max_age).then(|| l1.clock.monotonic() + ttl);
    cache.entry_by_ref(key).and_compute_with(|_| {
        if guards.get(gkey) == Some(guard.token) {
            // Spent: the next copy takes a guard of its own.
            guards.invalidate(gkey);
            Op::Put(Copy {
                value,
                epoch: guard.epoch,
                deadline,
            })
        } else {
            Op::Nop
        }
    });
}

fn evict_guarded<T: Clone + Send + Sync + 'static>(
    cache: &moka::sync::Cache<String, Copy<T>>,
    guards: &moka::sync::Cache<String, u64>,
    key: &str,
    gkey: &str,
) {
    // Under the key's compute lock, like `put_guarded`: a put either lands
    // before (and is removed here) or finds its guard gone.
    cache.entry_by_ref(key).and_compute_with(|_| {
        guards.invalidate(gkey);
        Op::Remove
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Stored {
        Stored::new(vec![1u8])
    }

    #[test]
    fn a_copy_taken_before_an_eviction_is_not_put() {
        let l1 = L1::new(
            100,
            true,
            Duration::from_secs(60),
            None,
            false,
            Arc::new(crate::clock::SystemClock),
        );
        let g = l1.guard("k");
        l1.evict(&["k".to_owned()]);
        l1.put("k", g, stored(), Duration::from_secs(10));
        assert!(l1.get("k").is_none());
        let g = l1.guard("k");
        l1.put("k", g, stored(), Duration::from_secs(10));
        assert!(l1.get("k").is_some());
    }

    #[test]
    fn a_gap_makes_every_copy_stale_and_untrusted_reads_miss() {
        let l1 = L1::new(
            100,
            true,
            Duration::from_secs(60),
            None,
            false,
            Arc::new(crate::clock::SystemClock),
        );
        let g = l1.guard("k");
        l1.put("k", g, stored(), Duration::from_secs(10));
        let gv = l1.guard_version("t");
        l1.put_version("t", gv, 7, Duration::from_secs(10));
        assert_eq!(l1.versions(&["t".to_owned()]), Some(vec![7]));
        l1.gap();
        assert!(l1.get("k").is_none());
        assert_eq!(l1.versions(&["t".to_owned()]), None);
        // A guard taken before the gap cannot put after it.
        let g = l1.guard("j");
        l1.gap();
        l1.put("j", g, stored(), Duration::from_secs(10));
        assert!(l1.get("j").is_none());
        l1.set_trusted(false);
        let g = l1.guard("k");
        l1.put("k", g, stored(), Duration::from_secs(10));
        assert!(l1.get("k").is_none());
    }

    #[test]
    fn a_copy_shorter_than_the_max_age_expires_on_its_own_deadline() {
        let l1 = L1::new(
            100,
            true,
            Duration::from_secs(60),
            None,
            false,
            Arc::new(crate::clock::SystemClock),
        );
        let g = l1.guard("short");
        l1.put("short", g, stored(), Duration::from_millis(30));
        let g = l1.guard("long");
        l1.put("long", g, stored(), Duration::from_secs(60));
        assert!(l1.get("short").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(l1.get("short").is_none(), "outlived its entry");
        assert!(l1.get("long").is_some());
    }

    /// A fake boot clock (ms), for the one test that moves it.
    static BOOT_MS: AtomicU64 = AtomicU64::new(1_000);

    fn fake_boot() -> u64 {
        BOOT_MS.load(Ordering::SeqCst) * 1_000_000
    }

    fn advance_boot(ms: u64) {
        BOOT_MS.fetch_add(ms, Ordering::SeqCst);
    }

    #[test]
    fn with_a_bound_copies_are_served_only_within_it_of_the_last_heartbeat() {
        let bound = Duration::from_millis(100);
        let mut l1 = L1::new(
            100,
            true,
            Duration::from_secs(60),
            Some(bound),
            false,
            Arc::new(crate::clock::SystemClock),
        );
        l1.boot = fake_boot;
        let g = l1.guard("k");
        l1.put("k", g, stored(), Duration::from_secs(10));
        assert!(l1.get("k").is_none(), "no heartbeat yet");
        l1.caught_up(fake_boot());
        assert!(l1.get("k").is_some());
        advance_boot(99);
        assert!(l1.get("k").is_some(), "99 ms after the heartbeat");
        advance_boot(1);
        assert!(l1.get("k").is_none(), "100 ms after it: bypassed");
        // An older heartbeat arriving late does not move the bound back.
        l1.caught_up(fake_boot() - 50_000_000);
        assert!(l1.get("k").is_some());
        l1.caught_up(0);
        assert!(l1.get("k").is_some());
        advance_boot(50);
        assert!(l1.get("k").is_none());
    }
}
