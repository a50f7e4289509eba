//! The message channel between instances sharing a backend
//! ([`Backplane`]): what one instance invalidates, the others hear.

use std::any::Any;
use std::fmt;
use std::sync::Weak;

use crate::error::BackendError;

/// A message channel between the instances sharing a backend: what one
/// instance invalidates, the others hear (and evict from their in-process
/// copies). Used by [`TieredBackend`](super::TieredBackend); Redis pub/sub implements it
/// ([`RedisBackend::backplane`](super::RedisBackend::backplane)).
///
/// Delivery is at most once: a subscriber that was away missed what was sent
/// meanwhile, so every (re)connection is reported to the listener as a gap.
#[async_trait::async_trait]
pub trait Backplane: Send + Sync + fmt::Debug {
    /// Sends `message` to every subscriber (this instance's included).
    async fn publish(&self, message: &[u8]) -> Result<(), BackendError>;

    /// Starts delivering messages to `listener`, until the returned handle
    /// is dropped or the listener is gone.
    fn subscribe(&self, listener: Weak<dyn BackplaneListener>) -> BackplaneSubscription;
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
