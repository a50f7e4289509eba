//! The backplane on Redis pub/sub: `PUBLISH` through the backend's
//! connection, `SUBSCRIBE` on a connection of its own (see `subscriber`).
//! On a Redis Cluster the same holds: a classic `PUBLISH` sent to any node
//! is forwarded to every node, and the subscription listens on one node
//! (the next URL when that one is lost).

use std::sync::Weak;
use std::time::Duration;

use super::conn::RedisConnection;
use super::subscriber::Subscription;
use crate::backend::{Backplane, BackplaneListener, BackplaneSubscription};
use crate::error::BackendError;

/// Redis pub/sub as a [`Backplane`]; see [`RedisBackend::backplane`](super::RedisBackend::backplane).
///
/// Pub/sub delivers at most once and keeps nothing: a subscriber that was
/// disconnected missed what was published meanwhile. The subscription PINGs
/// to notice a half-open connection, and every reconnection is reported as a
/// gap, so a [`TieredBackend`](crate::backend::TieredBackend) stops trusting
/// its in-process copies until it is subscribed again.
#[derive(Clone)]
pub struct RedisBackplane {
    conn: RedisConnection,
    clients: Vec<redis::Client>,
    connect_timeout: Duration,
    channel: String,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl RedisBackplane {
    pub(super) fn new(
        conn: RedisConnection,
        clients: Vec<redis::Client>,
        connect_timeout: Duration,
        channel: String,
    ) -> Self {
        RedisBackplane {
            conn,
            clients,
            connect_timeout,
            channel,
        }
    }

    /// The channel messages go through.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

#[async_trait::async_trait]
impl Backplane for RedisBackplane {
    async fn publish(&self, message: &[u8]) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(message)
            .query_async::<()>(&mut conn)
            .await
            .map_err(BackendError::failed)
    }

    fn subscribe(&self, listener: Weak<dyn BackplaneListener>) -> BackplaneSubscription {
        BackplaneSubscription::new(Subscription::start(
            self.clients.clone(),
            self.connect_timeout,
            self.channel.clone(),
            listener,
        ))
    }
}
