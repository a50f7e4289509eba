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
//!   ([`Clock::boot_ns`](crate::clock::Clock::boot_ns)). Redis counts the
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
//!   their leases, plus the margin. A registry younger than one lease (it
//!   was evicted or lost with a failover and made again) may not list
//!   every instance still holding a lease: the writer waits until it is a
//!   lease old. Any step that cannot be done (Redis down) fails the write:
//!   it is not reported applied, and the cache retries it.
//! - **Coming back.** A renewal that finds the instance revoked (or the
//!   registry gone) drops every copy (an epoch) before it registers again:
//!   a writer that stopped waiting for it relied on its lease running out,
//!   not on its copies being current.
//! - **Joining.** A registration drops every copy too, once Redis has
//!   it: a writer that listed the members just before did not wait for
//!   this one, and its message may not have arrived yet; what is copied
//!   afterwards was read from L2 after that writer wrote it.
//! - **Clocks.** Leases are measured on each machine's clock; only their
//!   lengths cross machines. At each renewal the instance compares how far
//!   its clock and Redis's went since the last one: a difference beyond
//!   the margin (a clock running fast or slow, a process paused and
//!   resumed mid-renewal) stops its copies until a renewal agrees again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::Tier;
use crate::backend::{Backplane, Membership};
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
    /// differ by more than `drift_margin / member_lease` (5 % by default)
    /// are refused at renewal.
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
    /// `boot_ns` when the last renewal was sent, and Redis's time (ms) when
    /// it ran: the clock check's last reading.
    last: Mutex<Option<(u64, u64)>>,
    /// Acknowledgements heard: per member, the highest message number of
    /// ours it applied.
    acks: Mutex<HashMap<String, u64>>,
    acked: Notify,
}

impl Membered {
    pub(super) fn new(settings: Strict) -> Self {
        Membered {
            settings,
            registered: AtomicBool::new(false),
            renewing: AtomicBool::new(false),
            last: Mutex::new(None),
            acks: Mutex::new(HashMap::new()),
            acked: Notify::new(),
        }
    }

    fn nanos(d: Duration) -> u64 {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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
    }

    fn acked(&self, member: &str) -> u64 {
        let acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        acks.get(member).copied().unwrap_or(0)
    }

    /// Whether a heartbeat now should renew (or register): one is due
    /// every quarter lease, and none is running.
    pub(super) fn renewal_due(&self, now: u64) -> bool {
        if self.renewing.load(Ordering::Acquire) {
            return false;
        }
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let due = match *last {
            Some((sent, _)) => {
                now.saturating_sub(sent) >= Self::nanos(self.settings.member_lease) / 4
            }
            None => true,
        };
        due || !self.registered.load(Ordering::Acquire)
    }
}

/// Renews (or registers) `tier`'s membership after a heartbeat: in a task
/// on the backplane's runtime (where heartbeats are heard).
pub(super) fn renew(tier: &Arc<Tier>) {
    let Some((membered, members)) = tier.strict() else {
        return;
    };
    if membered.renewing.swap(true, Ordering::AcqRel) {
        return;
    }
    let tier = Arc::clone(tier);
    let lease = membered.settings.member_lease;
    let register = !membered.registered.load(Ordering::Acquire);
    // A heartbeat is heard on the backplane's runtime: the task runs there.
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        membered.renewing.store(false, Ordering::Release);
        return;
    };
    let _ = members;
    rt.spawn(async move {
        let Some((membered, members)) = tier.strict() else {
            return;
        };
        // Taken before the renewal is sent: Redis counts the lease from
        // later, so the local deadline ends first.
        let sent = tier.clock.boot_ns();
        let renewed = members.renew(&tier.id, lease, register).await;
        match renewed {
            Ok(Some(store_ms)) => renewed_at(&tier, membered, sent, store_ms, register),
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
                // The lease runs out on its own; the next heartbeat tries
                // again.
                tracing::debug!(error = %e, "aside: could not renew this instance's registration");
            }
        }
        membered.renewing.store(false, Ordering::Release);
    });
}

/// A renewal that held: checks the clocks (not on a registration: nothing
/// to compare with), then extends the local lease.
fn renewed_at(tier: &Tier, membered: &Membered, sent: u64, store_ms: u64, registering: bool) {
    let settings = &membered.settings;
    let mut last = membered.last.lock().unwrap_or_else(PoisonError::into_inner);
    let previous = last.replace((sent, store_ms));
    drop(last);
    if let Some(previous) = previous
        && !registering
        && !clocks_agree(previous, (sent, store_ms), settings)
    {
        tier.count(&tier.stats.clock_drifts);
        tracing::error!(
            "aside: this machine's clock and Redis's disagree beyond the drift margin; \
             in-process copies are not served until they agree"
        );
        tier.l1.set_lease_until(0);
        return;
    }
    if registering {
        // A writer that listed the instances just before this registration
        // did not wait for us, and its message may still be on its way
        // here: nothing copied before now is served (the copies taken from
        // now on read L2 after that writer wrote it).
        tier.gap();
    }
    membered.registered.store(true, Ordering::Release);
    tier.l1.set_lease_until(local_deadline(sent, settings));
}

/// Until when (`boot_ns`) an instance whose renewal was sent at `sent` may
/// serve its copies: the lease from before it was sent, less the margin.
pub(super) fn local_deadline(sent: u64, settings: &Strict) -> u64 {
    sent.saturating_add(Membered::nanos(settings.member_lease))
        .saturating_sub(Membered::nanos(settings.drift_margin))
}

/// Whether two renewals (each: `boot_ns` when sent, Redis's time in ms
/// when run) show this clock and Redis's moving together: the intervals
/// may differ by the margin for every lease of time between them (their
/// rates by `drift_margin / member_lease`), plus one margin for the round
/// trips' spread.
pub(super) fn clocks_agree(before: (u64, u64), now: (u64, u64), settings: &Strict) -> bool {
    let local = now.0.saturating_sub(before.0);
    let store = now.1.saturating_sub(before.1).saturating_mul(1_000_000);
    let lease = Membered::nanos(settings.member_lease).max(1);
    let margin = Membered::nanos(settings.drift_margin);
    let allowed =
        u64::try_from(u128::from(local.max(store)) * u128::from(margin) / u128::from(lease))
            .unwrap_or(u64::MAX)
            .saturating_add(margin);
    // Redis's clock going back is a disagreement too.
    now.1 >= before.1 && local.abs_diff(store) <= allowed
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
        let live = members.live(settings.member_lease).await?;
        let others: Vec<(String, Duration)> = live
            .members
            .into_iter()
            .filter(|(id, _)| *id != self.id)
            .collect();
        membered.forget_others(&others);
        let deadline = tokio::time::Instant::now() + settings.ack_timeout;
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
        let mut wait = live.settling;
        for (id, listed) in &others {
            if membered.acked(id) >= seq {
                continue;
            }
            self.count(&self.stats.revocations);
            tracing::warn!(member = %id, "aside: an instance did not acknowledge an invalidation in time; revoked");
            // Not registered any more: it left, or the registry was lost
            // since it was listed; its lease may still run, as listed.
            let left = members.revoke(id).await?.unwrap_or(*listed);
            wait = wait.max(left);
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait.saturating_add(settings.drift_margin)).await;
        }
        Ok(())
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

    #[test]
    fn clocks_that_move_together_agree_and_drift_or_a_jump_does_not() {
        let s = Strict::new(); // 2 s lease, 100 ms margin: 5 %
        let before = (1_000 * MS, 50_000);
        // 500 ms on both, with 20 ms of round-trip spread.
        assert!(clocks_agree(before, (1_500 * MS, 50_520), &s));
        // 4 % slow over 10 s: within 5 % plus the margin.
        assert!(clocks_agree(before, (11_000 * MS, 59_600), &s));
        // 10 % slow over 10 s: 1 s apart, more than 500 ms + 100 ms.
        assert!(!clocks_agree(before, (11_000 * MS, 59_000), &s));
        // This process stood still (stopped mid-renewal) while Redis went
        // on 3 s: its lease would have run past what Redis counted.
        assert!(!clocks_agree(before, (1_500 * MS, 53_500), &s));
        // Redis's clock went back (a failover to a host behind).
        assert!(!clocks_agree(before, (1_500 * MS, 49_000), &s));
    }
}
