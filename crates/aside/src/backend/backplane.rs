//! The message channel between instances sharing a backend
//! ([`Backplane`]): what one instance invalidates, the others hear.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::time::Duration;

use crate::error::BackendError;

/// What [`Backplane::publish`] returns: resolves once the channel accepted
/// the message (or could not take it).
pub type Publishing = Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send + 'static>>;

/// A message channel between the instances sharing a backend: what one
/// instance invalidates, the others hear (and evict from their in-process
/// copies). Used by [`TieredBackend`](super::TieredBackend); Redis pub/sub implements it
/// ([`RedisBackend::backplane`](super::RedisBackend::backplane)).
///
/// Delivery is at most once: a subscriber that was away missed what was sent
/// meanwhile, so every (re)connection is reported to the listener as a gap.
///
/// # Ordering and heartbeats
/// A backplane delivers the messages it accepted in the order it accepted
/// them. One that can also prove, now and then, that a subscription has
/// delivered everything accepted before a moment (a heartbeat through the
/// channel itself: [`BackplaneListener::caught_up`]) lets a two-level cache
/// bound how stale its copies can be whatever the application's runtime
/// does; it says so with [`heartbeat`](Self::heartbeat).
pub trait Backplane: Send + Sync + fmt::Debug {
    /// Queues `message` for every subscriber (this instance's included),
    /// after the messages of every earlier call, and returns a future that
    /// resolves once the channel accepted it (Redis answered the
    /// `PUBLISH`) or could not. The message is queued when this returns:
    /// dropping the future does not take it back.
    fn publish(&self, message: Vec<u8>) -> Publishing;

    /// Sends `message` to the one instance subscribed as `instance` (an
    /// acknowledgement), queued as [`publish`](Self::publish) queues. The
    /// default refuses: a backplane without direct messages cannot carry
    /// strict invalidation.
    fn send_to(&self, instance: &str, message: Vec<u8>) -> Publishing {
        let _ = (instance, message);
        Box::pin(async {
            Err(BackendError::failed(std::io::Error::other(
                "this backplane does not send direct messages",
            )))
        })
    }

    /// Starts delivering to `listener` the messages published to all and
    /// those sent to `instance`, until the returned handle is dropped or
    /// the listener is gone.
    fn subscribe(
        &self,
        instance: &str,
        listener: Weak<dyn BackplaneListener>,
    ) -> BackplaneSubscription;

    /// How often a live subscription calls
    /// [`caught_up`](BackplaneListener::caught_up), if it does (the
    /// default: never).
    fn heartbeat(&self) -> Option<Duration> {
        None
    }

    /// The registry of the instances subscribed, with leases, if the
    /// backplane keeps one (strict invalidation needs it).
    fn members(&self) -> Option<&dyn Membership> {
        None
    }
}

/// The instances sharing a backplane, each registered with a lease it
/// renews while its subscription is healthy: what strict invalidation
/// waits for.
///
/// The registry answers in the store's own time (a Redis `TIME`), so that
/// the instances' clocks never meet except through lease lengths.
#[async_trait::async_trait]
pub trait Membership: Send + Sync {
    /// Registers `instance` (`register`) or renews its registration, for
    /// `lease` from now; answers the store's time (ms) when it did.
    /// `Ok(None)`: a renewal found it no longer registered (revoked, or the
    /// registry was lost): the instance must treat everything it holds as
    /// suspect before it registers again.
    async fn renew(
        &self,
        instance: &str,
        lease: Duration,
        register: bool,
    ) -> Result<Option<u64>, BackendError>;

    /// The registered instances and how much of its lease each has left,
    /// and how long the registry itself must still be waited for: a
    /// registry re-created less than `longest_lease` ago (it was evicted,
    /// or lost with a failover) may not list instances still holding
    /// leases from before. An instance revoked less than its lease ago is
    /// listed too, until that lease ends: it learns of its revocation only
    /// at its next renewal, and serves its copies until then.
    async fn live(&self, longest_lease: Duration) -> Result<Live, BackendError>;

    /// Unregisters `instance` so it cannot renew; answers when (the
    /// store's time, ms) its lease ends (`None`: it was neither registered
    /// nor revoked). It stays listed by [`live`](Self::live) until then.
    /// When the registry was lost or replaced since it was listed (or is
    /// younger than `longest_lease`), a lease it does not know of may
    /// still run: the answer is then at least `longest_lease` from now.
    async fn revoke(
        &self,
        instance: &str,
        longest_lease: Duration,
    ) -> Result<Option<u64>, BackendError>;

    /// Unregisters `instance` as it leaves: queued, best effort (a writer
    /// otherwise waits out its lease once).
    fn leave(&self, instance: &str);
}

/// What [`Membership::live`] answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Live {
    /// Each registered instance with the lease it has left.
    pub members: Vec<(String, Duration)>,
    /// How long before the list can be trusted to name every instance that
    /// may hold a lease (zero for a registry older than one lease).
    pub settling: Duration,
    /// The store's time (ms) when it answered: the clock leases end on.
    pub as_of: u64,
}

impl Live {
    /// An answer.
    pub fn new(members: Vec<(String, Duration)>, settling: Duration, as_of: u64) -> Self {
        Live {
            members,
            settling,
            as_of,
        }
    }
}

/// What a [`Backplane`] subscription tells its owner.
pub trait BackplaneListener: Send + Sync {
    /// The subscription is live. Anything published before may have been
    /// missed: treat it as a gap.
    fn connected(&self);
    /// A message.
    fn message(&self, payload: &[u8]);
    /// The subscription is lost (closed, or silent past its liveness check);
    /// nothing is heard until `connected` again.
    fn disconnected(&self);

    /// Every message the channel accepted before `as_of` (a reading of
    /// [`clock::boot_ns`](crate::clock::boot_ns), the system's boot clock,
    /// in this process) has been handed to
    /// [`message`](Self::message): a heartbeat, sent at the backplane's
    /// [`heartbeat`](Backplane::heartbeat) interval while the subscription
    /// is live.
    fn caught_up(&self, as_of: u64) {
        let _ = as_of;
    }
}

/// Keeps a [`Backplane`] subscription alive; dropping it stops the delivery.
pub struct BackplaneSubscription(#[allow(dead_code)] Box<dyn Any + Send + Sync>);

impl BackplaneSubscription {
    /// Wraps whatever keeps a subscription running (a task's abort guard).
    pub fn new(guard: impl Any + Send + Sync) -> Self {
        BackplaneSubscription(Box::new(guard))
    }
}

impl fmt::Debug for BackplaneSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackplaneSubscription")
            .finish_non_exhaustive()
    }
}
