//! Strict invalidation: a write returns `Applied` only once every live
//! instance has dropped its copies of what it changed, or can no longer
//! serve them.
//!
//! # How
//! - **Membership.** Each instance registers in the backplane's registry
//!   ([`Membership`]) with a lease (default 2 s), renewed only right after
//!   a heartbeat came back through its subscription, so a registered
//!   instance is one that hears the backplane. It serves copies only
//!   before its *local* lease deadline: the moment *before* it sent the
//!   renewal, plus the lease, minus a drift margin, on a clock that counts
//!   through a stopped process or a suspended machine
//!   ([`clock::boot_ns`](crate::clock::boot_ns)). Redis counts the
//!   same lease from when it ran the renewal, later: so when the registry
//!   says a lease is over, the instance stopped serving before.
//! - **Acknowledgements.** An instance that applies a writer's message
//!   (evicts the copies) sends the writer an acknowledgement of that
//!   message's number on the writer's own channel; numbers from one
//!   writer arrive in order, so an acknowledgement covers every message
//!   before it.
//! - **The write.** After L2 is written and its message accepted, the
//!   writer reads the live members (in Redis's time), waits up to the
//!   acknowledgement timeout for each to acknowledge, then revokes those
//!   that did not (they can no longer renew) and waits out what is left of
//!   their leases, plus the margin, on both clocks: its own (Redis's may
//!   step forward) and Redis's (its own may run fast). A registry younger
//!   than one lease (it was evicted or lost with a failover and made
//!   again) may not list every instance still holding a lease: the writer
//!   waits until it is a lease old; so it does when Redis's clock ran ahead
//!   of its own since its last renewal (a forward step makes every lease
//!   look shorter), or when its own clock check has not agreed yet. Any
//!   step that cannot be done (Redis down, the writer's own subscription
//!   down) fails the write: it is not reported applied, and the cache
//!   retries it.
//! - **Coming back.** A renewal that finds the instance revoked (or the
//!   registry gone) drops every copy (an epoch) before it registers again:
//!   a writer that stopped waiting for it relied on its lease running out,
//!   not on its copies being current.
//! - **Reconnecting.** A subscription that comes back has missed messages
//!   and dropped every copy; the instance says so (`rejoin`), and once it
//!   hears its own `rejoin` back (so it applied everything published
//!   before) it says `rejoined`: a writer counts that as the
//!   acknowledgement of each of its messages it had heard before the
//!   `rejoin`, instead of revoking an instance that only blinked.
//! - **Joining.** A registration drops every copy too, once Redis has
//!   it: a writer that listed the members just before did not wait for
//!   this one, and its message may not have arrived yet; what is copied
//!   afterwards was read from L2 after that writer wrote it.
//! - **Clocks.** Leases are measured on each machine's clock; only their
//!   lengths cross machines. At each renewal the instance compares how far
//!   its clock and Redis's went over the last two leases or so, counting
//!   each renewal's round trip against the agreement: copies are served
//!   only once they agree over at least one lease, within
//!   `drift_margin / (2 × member_lease)` (2.5 % by default). A rate off by
//!   more, a process paused mid-renewal, Redis's clock going back, or round
//!   trips too slow to tell, stop the copies until a renewal agrees again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::Tier;
use crate::backend::{Backplane, Membership};
use crate::clock::boot_ns;
use crate::error::BackendError;

/// Strict invalidation's settings (see [`TieredBackendBuilder::strict`]).
///
/// [`TieredBackendBuilder::strict`]: super::TieredBackendBuilder::strict
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Strict {
    /// How long a registration holds unless renewed (default 2 s). A
    /// writer waits out what is left of it for an instance that did not
    /// acknowledge: the worst write takes about `ack_timeout` plus this.
    pub member_lease: Duration,
    /// How long a writer waits for acknowledgements before it revokes the
    /// members that did not send one (default 500 ms).
    pub ack_timeout: Duration,
    /// Taken off every local lease deadline and added to every wait, for
    /// the clocks' disagreement (default 100 ms). Two clocks whose rates
    /// differ by more than `drift_margin / (2 × member_lease)` (2.5 % by
    /// default) over a lease are refused at renewal.
    pub drift_margin: Duration,
}

impl Default for Strict {
    fn default() -> Self {
        Strict {
            member_lease: Duration::from_secs(2),
            ack_timeout: Duration::from_millis(500),
            drift_margin: Duration::from_millis(100),
        }
    }
}

impl Strict {
    /// The defaults: a 2 s lease, a 500 ms acknowledgement timeout, a
    /// 100 ms drift margin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`member_lease`](Self::member_lease).
    #[must_use]
    pub fn member_lease(mut self, lease: Duration) -> Self {
        self.member_lease = lease;
        self
    }

    /// Sets [`ack_timeout`](Self::ack_timeout).
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Sets [`drift_margin`](Self::drift_margin).
    #[must_use]
    pub fn drift_margin(mut self, margin: Duration) -> Self {
        self.drift_margin = margin;
        self
    }

    /// How long a strict write may take at most: the acknowledgements, a
    /// lease waited out, the margin, and a settling registry.
    pub(super) fn longest_write(&self) -> Duration {
        self.ack_timeout
            .saturating_add(self.member_lease.saturating_mul(2))
            .saturating_add(self.drift_margin)
    }
}

/// Strict invalidation's state in one instance.
pub(super) struct Membered {
    pub(super) settings: Strict,
    /// Registered now (otherwise the next renewal registers).
    registered: AtomicBool,
    /// A renewal is running.
    renewing: AtomicBool,
    /// The renewals of about the last two leases: the clock check's
    /// readings.
    readings: Mutex<Readings>,
    /// The last clock check agreed (over a window of at least one lease).
    clock_agrees: AtomicBool,
    /// Acknowledgements heard: per member, the highest message number of
    /// ours it applied.
    acks: Mutex<HashMap<String, u64>>,
    acked: Notify,
    /// The highest number of our own messages heard back: every message of
    /// ours before it has been delivered ahead of whatever is heard next.
    own_heard: AtomicU64,
    /// Members that rejoined (see [`Membered::rejoining`]): the number of
    /// their `rejoin`, and our own message number heard when it arrived.
    rejoins: Mutex<HashMap<String, (u64, u64)>>,
    /// When (`boot_ns`) the latest of our own heartbeats that came back
    /// was sent: everything our subscription delivered before it has been
    /// applied (acknowledgements included).
    heartbeat: AtomicU64,
    heartbeats: Notify,
    /// Bumped at every (re)connection of our subscription: what the old
    /// connection had not delivered is lost, acknowledgements included.
    connections: AtomicU64,
}

impl Membered {
    pub(super) fn new(settings: Strict) -> Self {
        Membered {
            settings,
            registered: AtomicBool::new(false),
            renewing: AtomicBool::new(false),
            readings: Mutex::new(Readings::default()),
            clock_agrees: AtomicBool::new(false),
            acks: Mutex::new(HashMap::new()),
            acked: Notify::new(),
            own_heard: AtomicU64::new(0),
            rejoins: Mutex::new(HashMap::new()),
            heartbeat: AtomicU64::new(0),
            heartbeats: Notify::new(),
            connections: AtomicU64::new(0),
        }
    }

    /// Our subscription (re)connected.
    pub(super) fn connected(&self) {
        self.connections.fetch_add(1, Ordering::AcqRel);
    }

    /// A heartbeat of our subscription, sent at `sent` (`boot_ns`), came
    /// back.
    pub(super) fn heartbeat_back(&self, sent: u64) {
        self.heartbeat.fetch_max(sent, Ordering::AcqRel);
        self.heartbeats.notify_waiters();
    }

    /// Waits (up to `limit`) until a heartbeat sent at or after `since`
    /// has come back: then every acknowledgement our subscription received
    /// before it has been counted.
    async fn heard_since(&self, since: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now()
            .checked_add(limit)
            .unwrap_or_else(far_future);
        loop {
            let notified = self.heartbeats.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.heartbeat.load(Ordering::Acquire) >= since {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.heartbeat.load(Ordering::Acquire) >= since;
            }
        }
    }

    /// One of our own messages came back through our subscription.
    pub(super) fn heard_own(&self, seq: u64) {
        self.own_heard.fetch_max(seq, Ordering::AcqRel);
    }

    /// `member` (re)subscribed and dropped every copy, then sent `rejoin`:
    /// every message of ours heard before it was published before its
    /// `rejoin`. Each of those either reached it once it was subscribed
    /// again (it applies them in order before it hears its own `rejoin`)
    /// or was published before it subscribed, so before it dropped its
    /// copies. Remembered until it says it heard its `rejoin` back.
    pub(super) fn rejoining(&self, member: &str, rejoin: u64) {
        let heard = self.own_heard.load(Ordering::Acquire);
        let mut rejoins = self.rejoins.lock().unwrap_or_else(PoisonError::into_inner);
        rejoins.insert(member.to_owned(), (rejoin, heard));
    }

    /// `member` heard its `rejoin` numbered `answers` back: it has applied
    /// what came before it, so it acknowledges our messages up to what we
    /// had heard then (a reconnection during a write is not a reason to
    /// revoke it). A `rejoined` that answers another `rejoin` than the
    /// last one heard (a late one, sent before a reconnection) counts for
    /// nothing.
    pub(super) fn rejoined(&self, member: &str, answers: Option<u64>) {
        let mut rejoins = self.rejoins.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(&(rejoin, heard)) = rejoins.get(member) else {
            return;
        };
        if answers != Some(rejoin) {
            return;
        }
        rejoins.remove(member);
        drop(rejoins);
        self.ack(member, heard);
    }

    /// Records that `member` applied our messages up to `seq`.
    pub(super) fn ack(&self, member: &str, seq: u64) {
        let mut acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        let at = acks.entry(member.to_owned()).or_default();
        *at = (*at).max(seq);
        drop(acks);
        self.acked.notify_waiters();
    }

    /// Forgets the acknowledgements of instances no longer registered
    /// (the map would otherwise grow with every instance ever started).
    fn forget_others(&self, live: &[(String, Duration)]) {
        let mut acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        if acks.len() > live.len() {
            acks.retain(|id, _| live.iter().any(|(l, _)| l == id));
        }
        drop(acks);
        let mut rejoins = self.rejoins.lock().unwrap_or_else(PoisonError::into_inner);
        if rejoins.len() > live.len() {
            rejoins.retain(|id, _| live.iter().any(|(l, _)| l == id));
        }
    }

    fn acked(&self, member: &str) -> u64 {
        let acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        acks.get(member).copied().unwrap_or(0)
    }

    fn last_reading(&self) -> Option<Reading> {
        let readings = self.readings.lock().unwrap_or_else(PoisonError::into_inner);
        readings.0.back().copied()
    }

    /// Whether a heartbeat now should renew (or register): one is due
    /// every quarter lease, and none is running.
    pub(super) fn renewal_due(&self, now: u64) -> bool {
        if self.renewing.load(Ordering::Acquire) {
            return false;
        }
        let due = self.last_reading().is_none_or(|last| {
            now.saturating_sub(last.sent) >= nanos(self.settings.member_lease) / 4
        });
        due || !self.registered.load(Ordering::Acquire)
    }

    /// Whether this instance can vouch that the store's clock, at
    /// `store_ms` (answered before `heard`, on our boot clock), has not
    /// stepped forward since our last renewal: our clocks agreed then, and
    /// the store's went no further than ours since (within the check's
    /// tolerance and half the margin). A forward step shortens every lease
    /// in the registry: its members may hold leases it no longer lists.
    fn vouches_for(&self, heard: u64, store_ms: u64) -> bool {
        if !self.clock_agrees.load(Ordering::Acquire) {
            return false;
        }
        let Some(last) = self.last_reading() else {
            return false;
        };
        let ours = u128::from(heard.saturating_sub(last.sent));
        let lease = u128::from(nanos(self.settings.member_lease)).max(1);
        let margin = u128::from(nanos(self.settings.drift_margin));
        let allowed = ours + ours * margin / (2 * lease) + margin / 2;
        let store = u128::from(store_ms.saturating_sub(last.store_ms)) * 1_000_000;
        store <= allowed
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Renews (or registers) `tier`'s membership after a heartbeat: in a task
/// on the backplane's runtime (where heartbeats are heard).
pub(super) fn renew(tier: &Arc<Tier>) {
    let Some((membered, _)) = tier.strict() else {
        return;
    };
    if membered.renewing.swap(true, Ordering::AcqRel) {
        return;
    }
    let lease = membered.settings.member_lease;
    let register = !membered.registered.load(Ordering::Acquire);
    // A heartbeat is heard on the backplane's runtime: the task runs there.
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        membered.renewing.store(false, Ordering::Release);
        return;
    };
    let tier = Arc::clone(tier);
    rt.spawn(async move {
        let Some((membered, members)) = tier.strict() else {
            return;
        };
        // Taken before the renewal is sent: Redis counts the lease from
        // later, so the local deadline ends first.
        let sent = boot_ns();
        let renewed = members.renew(&tier.id, lease, register).await;
        let received = boot_ns();
        match renewed {
            Ok(Some(store_ms)) => {
                let reading = Reading {
                    sent,
                    received,
                    store_ms,
                };
                renewed_at(&tier, membered, reading, register);
            }
            Ok(None) => {
                // Revoked, or the registry was lost: whatever we hold may
                // be what a writer no longer waited for.
                tracing::warn!(
                    "aside: this instance's registration was revoked; dropping its copies"
                );
                membered.registered.store(false, Ordering::Release);
                tier.l1.set_lease_until(0);
                tier.gap();
            }
            Err(e) => {
                // The lease runs out on its own (nothing is served past
                // it); the next heartbeat tries again. A warning: while
                // this lasts, no copy is served and strict writes wait.
                tracing::warn!(error = %e, "aside: could not renew this instance's registration");
            }
        }
        membered.renewing.store(false, Ordering::Release);
    });
}

/// A renewal that held: checks the clocks, then extends the local lease
/// if they agree over at least one lease.
fn renewed_at(tier: &Tier, membered: &Membered, reading: Reading, registering: bool) {
    let settings = &membered.settings;
    let verdict = membered
        .readings
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .add(reading, settings);
    membered
        .clock_agrees
        .store(verdict == Verdict::Agree, Ordering::Release);
    membered.registered.store(true, Ordering::Release);
    if registering {
        // A writer that listed the instances just before this registration
        // did not wait for us, and its message may still be on its way
        // here: nothing copied before now is served (the copies taken from
        // now on read L2 after that writer wrote it).
        tier.gap();
    }
    match verdict {
        Verdict::Agree => tier
            .l1
            .set_lease_until(local_deadline(reading.sent, settings)),
        // Too short a window, or round trips too slow to tell: a rate
        // that just changed looks like this too, so nothing is served on
        // the last agreement either until one agrees again.
        Verdict::Unsure => tier.l1.set_lease_until(0),
        Verdict::Disagree => {
            tier.count(&tier.stats.clock_drifts);
            tracing::error!(
                "aside: this machine's clock and Redis's disagree beyond the drift margin; \
                 in-process copies are not served until they agree over a lease"
            );
            tier.l1.set_lease_until(0);
        }
    }
}

/// Until when (`boot_ns`) an instance whose renewal was sent at `sent` may
/// serve its copies: the lease from before it was sent, less the margin.
pub(super) fn local_deadline(sent: u64, settings: &Strict) -> u64 {
    sent.saturating_add(nanos(settings.member_lease))
        .saturating_sub(nanos(settings.drift_margin))
}

/// One renewal: our boot clock when it was sent and when its answer came,
/// and the store's time (ms) when it ran, in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reading {
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) store_ms: u64,
}

/// What the clock check made of a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Over at least one lease, the clocks went at the same rate, within
    /// `drift_margin / (2 × member_lease)` (2.5 % by default), even
    /// counting the round trips against them.
    Agree,
    /// Not known: less than a lease of readings, or round trips too slow
    /// to tell (or a rate that just changed). No copy is served on it.
    Unsure,
    /// Surely not: one clock ran faster than the other beyond the
    /// tolerance, or the store's went back.
    Disagree,
}

/// The renewals of about the last two leases (a window at least one lease
/// long once there are enough): a rate measured over a lease is what a
/// lease relies on, and a sudden change shows within the window.
#[derive(Debug, Default)]
pub(super) struct Readings(VecDeque<Reading>);

impl Readings {
    /// Adds `now` and judges the clocks over the window it ends. A
    /// disagreement starts the window again.
    pub(super) fn add(&mut self, now: Reading, settings: &Strict) -> Verdict {
        let window = millis(settings.member_lease).saturating_mul(2);
        while self.0.len() > 1 && now.store_ms.saturating_sub(self.0[1].store_ms) >= window {
            self.0.pop_front();
        }
        let verdict = self
            .0
            .front()
            .map_or(Verdict::Unsure, |first| judge(*first, now, settings));
        if verdict == Verdict::Disagree {
            self.0.clear();
        }
        self.0.push_back(now);
        verdict
    }
}

/// Whether our clock and the store's went at one rate from `first` to
/// `now`. The store ran each renewal at some moment between its `sent` and
/// `received`: our clock went at least `now.sent - first.received` and at
/// most `now.received - first.sent` between the two runs.
pub(super) fn judge(first: Reading, now: Reading, settings: &Strict) -> Verdict {
    if now.store_ms < first.store_ms {
        return Verdict::Disagree;
    }
    let store = u128::from(now.store_ms - first.store_ms) * 1_000_000;
    let least = u128::from(now.sent.saturating_sub(first.received));
    let most = u128::from(now.received.saturating_sub(first.sent));
    let lease = u128::from(nanos(settings.member_lease)).max(1);
    let tolerance = store * u128::from(nanos(settings.drift_margin)) / (2 * lease);
    if least > store + tolerance || most + tolerance < store {
        return Verdict::Disagree;
    }
    if store < lease || least + tolerance < store || most > store + tolerance {
        return Verdict::Unsure;
    }
    Verdict::Agree
}

/// Waits until the leases that end by `until` (the store's ms; the store
/// said `as_of` when asked) are over, plus the margin, on both clocks: ours
/// (the store's may step forward) and the store's (ours may run fast).
async fn wait_out(
    members: &dyn Membership,
    settings: &Strict,
    (as_of, listed_at): (u64, tokio::time::Instant),
    until: u64,
) -> Result<(), BackendError> {
    if until <= as_of {
        return Ok(());
    }
    let target = until.saturating_add(millis(settings.drift_margin));
    // Counted from when the store answered `as_of` (the time spent waiting
    // for acknowledgements since is part of it, not added to it); the loop
    // below checks the store's own clock before returning.
    let wake = listed_at
        .checked_add(Duration::from_millis(target - as_of))
        .unwrap_or_else(far_future);
    tokio::time::sleep_until(wake).await;
    let give_up = tokio::time::Instant::now()
        .checked_add(settings.longest_write())
        .unwrap_or_else(far_future);
    loop {
        let now = members.live(settings.member_lease).await?.as_of;
        if now >= target {
            return Ok(());
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(BackendError::failed(std::io::Error::other(
                "the registry's clock did not reach the end of the leases a strict write waited for",
            )));
        }
        tokio::time::sleep(Duration::from_millis(target - now)).await;
    }
}

/// A deadline past any wait (a year: tokio's timer needs a finite one).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

impl Drop for Tier {
    /// Unregisters, so that writers do not wait out this instance's lease.
    fn drop(&mut self) {
        if let Some((_, members)) = self.strict() {
            members.leave(&self.id);
        }
    }
}

impl Tier {
    /// Strict invalidation's state and the registry, if strict.
    pub(super) fn strict(&self) -> Option<(&Membered, &dyn Membership)> {
        let membered = self.membered.as_ref()?;
        let (backplane, _) = self.outbox.as_ref()?;
        Some((membered, backplane.members()?))
    }

    /// After the message numbered `seq` was accepted: waits until every
    /// live member has acknowledged it, or has been revoked and its lease
    /// has run out.
    pub(super) async fn confirm(&self, seq: u64) -> Result<(), BackendError> {
        let Some((membered, members)) = self.strict() else {
            return Ok(());
        };
        let settings = membered.settings;
        if !self.l1.is_trusted() {
            // Acknowledgements come through our own subscription: without
            // it, every other instance would be revoked and waited out.
            // The cache queues the write and retries it once it is back.
            return Err(BackendError::failed(std::io::Error::other(
                "this instance's backplane subscription is down: acknowledgements cannot reach it",
            )));
        }
        let connection = membered.connections.load(Ordering::Acquire);
        let live = members.live(settings.member_lease).await?;
        let listed_at = tokio::time::Instant::now();
        let heard = boot_ns();
        // Every lease waited for ends by `until`, in the store's time (ms).
        let mut until = live.as_of.saturating_add(millis(live.settling));
        if !membered.vouches_for(heard, live.as_of) {
            // Our clock has not agreed with the store's yet (we just
            // started, or they disagree), or the store's stepped forward:
            // the registry may not list every lease still held.
            until = until.max(live.as_of.saturating_add(millis(settings.member_lease)));
        }
        let others: Vec<(String, Duration)> = live
            .members
            .into_iter()
            .filter(|(id, _)| *id != self.id)
            .collect();
        membered.forget_others(&others);
        let deadline = tokio::time::Instant::now()
            .checked_add(settings.ack_timeout)
            .unwrap_or_else(far_future);
        loop {
            let notified = membered.acked.notified();
            tokio::pin!(notified);
            // Registered before the check: an acknowledgement right after it
            // still wakes us.
            notified.as_mut().enable();
            if others.iter().all(|(id, _)| membered.acked(id) >= seq) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let missing = others.iter().any(|(id, _)| membered.acked(id) < seq);
        // At least a few heartbeats long, whatever the timeout.
        let beat = self
            .outbox
            .as_ref()
            .and_then(|(backplane, _)| backplane.heartbeat())
            .unwrap_or_default();
        let listen = settings.ack_timeout.max(beat.saturating_mul(4));
        if missing
            && (!membered.heard_since(boot_ns(), listen).await
                // A reconnection lost what the old connection still held.
                || membered.connections.load(Ordering::Acquire) != connection)
        {
            // Missing, or only not heard yet? Our subscription answers a
            // heartbeat after everything it delivered before; one sent from
            // now on that does not come back means acknowledgements may be
            // stuck on their way to us (a lagging or half-open
            // subscription not yet noticed): revoking would drop every
            // healthy instance's copies. The cache queues the write and
            // retries it.
            return Err(BackendError::failed(std::io::Error::other(
                "this instance's backplane subscription is not keeping up (or reconnected): \
                 acknowledgements could not be heard",
            )));
        }
        for (id, listed) in &others {
            if membered.acked(id) >= seq {
                continue;
            }
            self.count(&self.stats.revocations);
            tracing::warn!(member = %id, "aside: an instance did not acknowledge an invalidation in time; revoked");
            // Not registered any more: it left, or the registry was lost
            // since it was listed; its lease may still run, as listed.
            let ends = members
                .revoke(id, settings.member_lease)
                .await?
                .unwrap_or(0)
                .max(live.as_of.saturating_add(millis(*listed)));
            until = until.max(ends);
        }
        wait_out(members, &settings, (live.as_of, listed_at), until).await
    }

    /// Acknowledges a writer's message to it (strict only; fire and forget:
    /// a lost acknowledgement only makes the writer wait out our lease).
    pub(super) fn acknowledge(&self, backplane: &Arc<dyn Backplane>, writer: &str, seq: u64) {
        if self.membered.is_none() {
            return;
        }
        let message = super::events::Message {
            v: super::events::VERSION,
            src: Some(self.id.clone()),
            seq,
            op: super::events::Op::Ack,
            keys: Vec::new(),
            ack: false,
        };
        // Queued now, in order; nobody waits for it.
        drop(backplane.send_to(writer, message.encode()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_rejoined_counts_only_for_the_rejoin_it_answers() {
        let m = Membered::new(Strict::new());
        m.heard_own(3);
        m.rejoining("b", 7);
        // A late `rejoined`, answering an earlier `rejoin`, or one that
        // names none: B may not have applied our messages up to 3 yet.
        m.rejoined("b", Some(5));
        m.rejoined("b", None);
        assert_eq!(m.acked("b"), 0);
        m.rejoined("b", Some(7));
        assert_eq!(m.acked("b"), 3);
    }

    #[test]
    fn the_local_deadline_ends_a_margin_before_the_lease() {
        let s = Strict::new();
        // Sent at 10 s: served until 10 s + 2 s - 100 ms.
        assert_eq!(local_deadline(10_000 * MS, &s), 11_900 * MS);
        let tight = Strict::new()
            .member_lease(Duration::from_millis(50))
            .drift_margin(Duration::from_millis(100));
        assert_eq!(
            local_deadline(0, &tight),
            0,
            "a margin over the lease serves nothing"
        );
    }

    /// A reading `ms` into a run on both clocks, with a 1 ms round trip;
    /// our clock goes at `rate` of the store's.
    fn at(ms: u64, rate: f64) -> Reading {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let ours = |ms: u64| (ms as f64 * rate * 1e6) as u64;
        Reading {
            sent: ours(ms),
            received: ours(ms + 1),
            store_ms: 50_000 + ms,
        }
    }

    #[test]
    fn clocks_that_move_together_agree_once_the_window_is_a_lease_long() {
        let s = Strict::new(); // 2 s lease, 100 ms margin: 2.5 %
        let mut readings = Readings::default();
        let verdicts: Vec<Verdict> = (0..12)
            .map(|k| readings.add(at(k * 500, 1.0), &s))
            .collect();
        // 0 to 1.5 s: not a lease yet; from 2 s on, they agree.
        assert_eq!(&verdicts[..4], &[Verdict::Unsure; 4]);
        assert!(
            verdicts[4..].iter().all(|v| *v == Verdict::Agree),
            "{verdicts:?}"
        );
        // 2 % slow: within the 2.5 %.
        let mut readings = Readings::default();
        assert!((0..12).any(|k| readings.add(at(k * 500, 0.98), &s) == Verdict::Agree));
    }

    #[test]
    fn a_clock_20_percent_slow_is_refused_before_it_outlives_its_lease() {
        let s = Strict::new();
        let mut readings = Readings::default();
        // A renewal a quarter lease apart on this (slow) clock: 625 ms.
        for k in 0..16 {
            let verdict = readings.add(at(k * 625, 0.8), &s);
            assert_ne!(
                verdict,
                Verdict::Agree,
                "renewal {k}: a clock 20 % slow agreed"
            );
        }
        // 5 % slow, or 5 % fast, is refused once the window is long enough.
        for rate in [0.95, 1.05] {
            let mut readings = Readings::default();
            let verdicts: Vec<Verdict> = (0..12)
                .map(|k| readings.add(at(k * 500, rate), &s))
                .collect();
            assert!(
                !verdicts.contains(&Verdict::Agree),
                "rate {rate}: {verdicts:?}"
            );
        }
    }

    #[test]
    fn a_clock_that_changes_rate_is_refused_within_a_window() {
        let s = Strict::new();
        let mut readings = Readings::default();
        for k in 0..20 {
            assert_ne!(readings.add(at(k * 500, 1.0), &s), Verdict::Disagree);
        }
        // From 10 s on, this clock runs 20 % slow: the first renewal after
        // it stops the copies (no agreement), and the clocks are refused
        // outright within a window.
        let base = at(9_500, 1.0);
        let mut verdicts = Vec::new();
        for k in 1..=8 {
            let slow = Reading {
                sent: base.sent + k * 400_000_000,
                received: base.sent + k * 400_000_000 + 1_000_000,
                store_ms: base.store_ms + k * 500,
            };
            verdicts.push(readings.add(slow, &s));
        }
        assert!(!verdicts.contains(&Verdict::Agree), "{verdicts:?}");
        assert!(verdicts.contains(&Verdict::Disagree), "{verdicts:?}");
    }

    #[test]
    fn slow_round_trips_leave_it_unsure_and_a_step_back_disagrees() {
        let s = Strict::new();
        let mut readings = Readings::default();
        for k in 0..4 {
            readings.add(at(k * 500, 1.0), &s);
        }
        // A renewal that took 300 ms: the store ran it somewhere in there.
        let mut slow = at(2_000, 1.0);
        slow.received += 300_000_000;
        slow.store_ms += 150;
        assert_eq!(readings.add(slow, &s), Verdict::Unsure);
        // Redis's clock went back (a failover to a host behind).
        let mut back = at(2_500, 1.0);
        back.store_ms = 49_000;
        assert_eq!(readings.add(back, &s), Verdict::Disagree);
    }
}
