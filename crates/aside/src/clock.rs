//! Time, injectable: a wall-clock reading and a monotonic one.
//!
//! Entries record when they were written (Unix milliseconds), which must mean
//! the same thing in every process sharing a Redis: so that is wall-clock
//! time, not `Instant`. Deadlines that only this process keeps (how long an
//! in-process copy may be served) use the monotonic reading, which the
//! system's time corrections never move back. Tests inject a
//! [`ManualClock`] to move both by hand (moka's and the OS's timers ignore
//! tokio's paused clock, so aside does not rely on them for its own time
//! decisions).

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time: wall-clock Unix milliseconds, and a monotonic reading.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// A reading that never goes back (unlike [`now_ms`](Self::now_ms),
    /// which the system may step), for deadlines this process keeps. The
    /// default is [`Instant::now`].
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// Nanoseconds on a clock that never goes back and keeps counting while
/// the process is stopped (`SIGSTOP`) or the machine suspended:
/// `CLOCK_BOOTTIME` on Linux. Leases and staleness bounds that other
/// machines and Redis rely on are counted on it, never on an injected
/// [`Clock`]: they are real time shared with other processes, and a
/// deadline that stopped while this process slept would let it serve
/// copies past what the others were promised. A
/// [`Backplane`](crate::backend::Backplane) with heartbeats reports them
/// on it ([`BackplaneListener::caught_up`](crate::backend::BackplaneListener::caught_up)).
#[cfg(target_os = "linux")]
pub fn boot_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// The monotonic clock in nanoseconds since the first reading (other
/// systems: no clock there counts through a suspend portably).
#[cfg(not(target_os = "linux"))]
pub fn boot_ns() -> u64 {
    u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The instant a [`ManualClock`]'s monotonic readings count from.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to; for tests. Its monotonic reading
/// moves with its wall-clock reading (a fixed instant plus it), so it only
/// goes back if [`set`](Self::set) says so.
///
/// ```
/// use aside::clock::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 3_000);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn monotonic(&self) -> Instant {
        origin() + Duration::from_millis(self.now_ms())
    }
}
