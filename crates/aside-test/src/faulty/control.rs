//! The switches of a [`FaultyBackend`](super::FaultyBackend): what to inject
//! into which kind of operation, changed while the backend is in use.
//!
//! Everything is an atomic behind one `Arc`, so a test flips a switch from
//! any task (or thread) while the cache runs, and an operation pays a few
//! relaxed loads when nothing is switched on.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The kinds of backend operation a [`FaultyBackend`](super::FaultyBackend)
/// tells apart. A batch operation is one call of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Reads: `read`, `read_one`, `get_now`, `describe`.
    Read,
    /// A load's first step: `acquire` (leases taken included).
    Acquire,
    /// `fill`.
    Fill,
    /// `set`.
    Set,
    /// `invalidate`.
    Invalidate,
    /// `remove_versions` (tag and namespace invalidations).
    RemoveVersions,
    /// `Leases::renew`, `Leases::release`.
    Lease,
    /// `ping`.
    Ping,
}

impl Op {
    /// Every kind, in declaration order.
    pub const ALL: [Op; 8] = [
        Op::Read,
        Op::Acquire,
        Op::Fill,
        Op::Set,
        Op::Invalidate,
        Op::RemoveVersions,
        Op::Lease,
        Op::Ping,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// What an injected failure looks like to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Failure {
    /// `BackendError::Failed` with an [`InjectedFault`]; the wrapped backend
    /// is not called (a refused connection, an error reply).
    #[default]
    Error,
    /// `BackendError::Timeout`, at once; the wrapped backend is not called.
    Timeout,
    /// The wrapped backend **is** called and its answer thrown away: the
    /// caller gets `BackendError::Failed` although the operation took
    /// effect. A reply lost on its way back, the ambiguous outcome every
    /// network has: the caller cannot tell it from [`Failure::Error`].
    AppliedThenError,
}

impl Failure {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Failure::Timeout,
            2 => Failure::AppliedThenError,
            _ => Failure::Error,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Failure::Error => 0,
            Failure::Timeout => 1,
            Failure::AppliedThenError => 2,
        }
    }
}

/// The error of an injected failure: the source of the
/// `BackendError::Failed` the caller gets, so a test can tell an injected
/// failure from a real one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InjectedFault {
    /// The kind of operation that failed.
    pub op: Op,
    /// Which call of that kind it was (1-based, as [`FaultControl::calls`]
    /// counts them).
    pub call: u64,
    /// Whether the wrapped backend applied the operation anyway
    /// ([`Failure::AppliedThenError`]).
    pub applied: bool,
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected fault: {:?} call {} failed", self.op, self.call)?;
        if self.applied {
            f.write_str(" after the backend applied it")?;
        }
        Ok(())
    }
}

impl std::error::Error for InjectedFault {}

/// The switches of one kind of operation.
#[derive(Debug, Default)]
struct OpState {
    calls: AtomicU64,
    injected: AtomicU64,
    fail_next: AtomicU64,
    always: AtomicBool,
    /// An `f64` in `0..=1`, as bits (0.0 is all zero bits).
    probability: AtomicU64,
    failure: AtomicU8,
    latency_nanos: AtomicU64,
    hang: AtomicBool,
}

#[derive(Debug)]
struct Shared {
    ops: [OpState; Op::ALL.len()],
    /// SplitMix64 state: one `fetch_add` per draw, so draws need no lock and
    /// a given seed gives the same sequence of draws.
    rng: AtomicU64,
    /// Wakes hung operations when a hang is released.
    released: Notify,
}

/// What [`FaultControl::enter`] decided for one call.
pub(super) struct Injected {
    pub fault: InjectedFault,
    pub failure: Failure,
}

/// The run-time switches of a [`FaultyBackend`](super::FaultyBackend), per
/// kind of operation ([`Op`]), and its call counters.
///
/// Cheap to clone: every clone (and every backend made
/// [`with_control`](super::FaultyBackend::with_control) it) shares the same
/// switches. A call first waits out the [`latency`](Self::latency), then any
/// [`hang`](Self::hang), then fails if one of the triggers says so
/// ([`fail_next`](Self::fail_next) first, then
/// [`fail_always`](Self::fail_always), then
/// [`fail_with_probability`](Self::fail_with_probability)), in the way
/// [`failure`](Self::failure) says.
#[derive(Debug, Clone)]
pub struct FaultControl(Arc<Shared>);

impl Default for FaultControl {
    fn default() -> Self {
        Self::new()
    }
}

/// The seed of [`FaultControl::new`]: runs are reproducible unless a test
/// asks otherwise.
const DEFAULT_SEED: u64 = 0x5eed_a51d_e000_0001;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl FaultControl {
    /// Switches with nothing switched on, and a fixed seed.
    pub fn new() -> Self {
        Self::with_seed(DEFAULT_SEED)
    }

    /// Switches whose [`fail_with_probability`](Self::fail_with_probability)
    /// draws come from `seed`: the same seed and the same sequence of calls
    /// fail the same calls.
    pub fn with_seed(seed: u64) -> Self {
        FaultControl(Arc::new(Shared {
            ops: Default::default(),
            rng: AtomicU64::new(seed),
            released: Notify::new(),
        }))
    }

    fn op(&self, op: Op) -> &OpState {
        &self.0.ops[op.index()]
    }

    /// Restarts the random draws from `seed`.
    pub fn reseed(&self, seed: u64) {
        self.0.rng.store(seed, Ordering::Relaxed);
    }

    /// Fails every call of `op` until [`clear`](Self::clear)ed.
    pub fn fail_always(&self, op: Op) {
        self.op(op).always.store(true, Ordering::Release);
    }

    /// Fails the next `n` calls of `op` (added to any still to fail).
    pub fn fail_next(&self, op: Op, n: u64) {
        self.op(op).fail_next.fetch_add(n, Ordering::AcqRel);
    }

    /// Fails each call of `op` with probability `p` (clamped to `0..=1`;
    /// NaN is 0), drawn from the seeded generator.
    pub fn fail_with_probability(&self, op: Op, p: f64) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.op(op)
            .probability
            .store(p.to_bits(), Ordering::Release);
    }

    /// How the failures of `op` look ([`Failure::Error`] unless set).
    pub fn failure(&self, op: Op, failure: Failure) {
        self.op(op)
            .failure
            .store(failure.to_u8(), Ordering::Release);
    }

    /// Delays every call of `op` by `delay` (a tokio sleep, so a paused test
    /// clock skips it) before it goes on; `Duration::ZERO` removes it.
    pub fn latency(&self, op: Op, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.op(op).latency_nanos.store(nanos, Ordering::Release);
    }

    /// Holds every call of `op` (those waiting and those to come) until
    /// [`release`](Self::release): a backend that accepted the request and
    /// never answers. Only the caller giving up (the cache's
    /// `backend_timeout` dropping the call) ends it; a call dropped so never
    /// reaches the wrapped backend.
    pub fn hang(&self, op: Op) {
        self.op(op).hang.store(true, Ordering::Release);
    }

    /// Ends a [`hang`](Self::hang): held calls of `op` go on.
    pub fn release(&self, op: Op) {
        self.op(op).hang.store(false, Ordering::Release);
        self.0.released.notify_waiters();
    }

    /// Switches off every fault of `op` (releasing a hang); the counters
    /// stay.
    pub fn clear(&self, op: Op) {
        let s = self.op(op);
        s.fail_next.store(0, Ordering::Release);
        s.always.store(false, Ordering::Release);
        s.probability.store(0, Ordering::Release);
        s.failure.store(Failure::Error.to_u8(), Ordering::Release);
        s.latency_nanos.store(0, Ordering::Release);
        self.release(op);
    }

    /// [`clear`](Self::clear) for every kind of operation.
    pub fn clear_all(&self) {
        for op in Op::ALL {
            self.clear(op);
        }
    }

    /// Calls of `op` so far (failed ones included).
    pub fn calls(&self, op: Op) -> u64 {
        self.op(op).calls.load(Ordering::Acquire)
    }

    /// Calls of `op` failed on purpose so far.
    pub fn injected(&self, op: Op) -> u64 {
        self.op(op).injected.load(Ordering::Acquire)
    }

    /// Whether any fault of `op` is switched on.
    pub fn is_armed(&self, op: Op) -> bool {
        let s = self.op(op);
        s.fail_next.load(Ordering::Acquire) > 0
            || s.always.load(Ordering::Acquire)
            || s.probability.load(Ordering::Acquire) != 0
            || s.latency_nanos.load(Ordering::Acquire) != 0
            || s.hang.load(Ordering::Acquire)
    }

    /// Counts a call that bypassed [`enter`](Self::enter) (a `get_now`
    /// answered while nothing was armed).
    pub(super) fn count(&self, op: Op) {
        self.op(op).calls.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a call of `op`, applies its latency and hang, and says whether
    /// (and how) it fails.
    pub(super) async fn enter(&self, op: Op) -> Option<Injected> {
        let s = self.op(op);
        let call = s.calls.fetch_add(1, Ordering::AcqRel) + 1;
        let nanos = s.latency_nanos.load(Ordering::Acquire);
        if nanos != 0 {
            tokio::time::sleep(Duration::from_nanos(nanos)).await;
        }
        self.wait_while_hung(s).await;
        if !self.should_fail(s) {
            return None;
        }
        s.injected.fetch_add(1, Ordering::AcqRel);
        let failure = Failure::from_u8(s.failure.load(Ordering::Acquire));
        Some(Injected {
            fault: InjectedFault {
                op,
                call,
                applied: failure == Failure::AppliedThenError,
            },
            failure,
        })
    }

    async fn wait_while_hung(&self, s: &OpState) {
        loop {
            // Registered before the check, so a release between the check
            // and the wait still wakes this call.
            let mut released = std::pin::pin!(self.0.released.notified());
            released.as_mut().enable();
            if !s.hang.load(Ordering::Acquire) {
                return;
            }
            released.await;
        }
    }

    fn should_fail(&self, s: &OpState) -> bool {
        if s.fail_next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return true;
        }
        if s.always.load(Ordering::Acquire) {
            return true;
        }
        let p = f64::from_bits(s.probability.load(Ordering::Acquire));
        // No draw when off: switching a probability on elsewhere does not
        // shift this kind's sequence of draws.
        p > 0.0 && self.draw() < p
    }

    /// A uniform draw in `0..1` (SplitMix64).
    fn draw(&self) -> f64 {
        let mut z = self
            .0
            .rng
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits: every value exactly representable, below 1.
        (z >> 11) as f64 / (1_u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_seeded_and_uniform_enough() {
        let a = FaultControl::with_seed(7);
        let b = FaultControl::with_seed(7);
        let xs: Vec<f64> = (0..1000).map(|_| a.draw()).collect();
        let ys: Vec<f64> = (0..1000).map(|_| b.draw()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let below_half = xs.iter().filter(|x| **x < 0.5).count();
        assert!((400..600).contains(&below_half), "{below_half}");
        a.reseed(7);
        assert_eq!(a.draw(), ys[0]);
    }

    #[test]
    fn fail_next_counts_down_then_stops() {
        let c = FaultControl::new();
        c.fail_next(Op::Fill, 2);
        let s = c.op(Op::Fill);
        assert!(c.is_armed(Op::Fill));
        assert!(c.should_fail(s));
        assert!(c.should_fail(s));
        assert!(!c.should_fail(s));
        assert!(!c.is_armed(Op::Fill));
        assert!(!c.is_armed(Op::Read));
    }
}
