//! The one pub/sub connection of a Redis backend: it hears fills and lease
//! releases announced on [`FILLS_CHANNEL`] and wakes the local loads waiting
//! for those keys.
//!
//! It runs in its own task for as long as the backend lives, reconnecting
//! with backoff. After every (re)subscription it wakes *all* waiters:
//! announcements made while it was disconnected are lost, and a waiter that
//! re-reads its key for nothing costs one round trip, while one that misses
//! its wake-up would wait out the lease.
//!
//! A connection can also die without closing (a half-open TCP connection:
//! a dropped route, a frozen server): nothing arrives and nothing fails. So
//! the subscriber PINGs every [`PING_EVERY`] and treats a PING unanswered
//! within [`PING_TIMEOUT`] as a lost connection: waiters are told to stop
//! trusting notifications (they re-check on their own) and it reconnects.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use super::scripts::FILLS_CHANNEL;
use crate::backend::Notifier;

/// How often the subscription's liveness is checked.
const PING_EVERY: Duration = Duration::from_millis(500);
/// How long a PING may go unanswered before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// Aborts the subscriber task when the last clone of the backend goes.
#[derive(Debug)]
pub(super) struct Subscription {
    pub notifier: Arc<Notifier>,
    task: tokio::task::AbortHandle,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    /// Starts the subscriber. Must be called inside a tokio runtime.
    pub fn start(client: redis::Client, connect_timeout: Duration) -> Self {
        let notifier = Arc::new(Notifier::default());
        let weak = Arc::downgrade(&notifier);
        let task = tokio::spawn(run(client, connect_timeout, weak)).abort_handle();
        Subscription { notifier, task }
    }
}

async fn run(client: redis::Client, connect_timeout: Duration, notifier: Weak<Notifier>) {
    let mut pause = Duration::from_millis(50);
    loop {
        match subscribe(&client, connect_timeout).await {
            Ok(pubsub) => {
                pause = Duration::from_millis(50);
                let Some(n) = notifier.upgrade() else { return };
                n.set_ready(true);
                n.notify_all();
                drop(n);
                let (mut sink, mut messages) = pubsub.split();
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            let Some(n) = notifier.upgrade() else { return };
                            if let Ok(key) = std::str::from_utf8(msg.get_payload_bytes()) {
                                n.notify(key);
                            }
                        }
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                tracing::debug!("aside: fill notifications stopped answering PING");
                                break;
                            }
                        }
                    }
                }
                tracing::debug!("aside: fill notifications disconnected; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %e, "aside: could not subscribe to fill notifications");
            }
        }
        let Some(n) = notifier.upgrade() else { return };
        n.set_ready(false);
        // Waiters fall back to re-checking on their own while we are away.
        n.notify_all();
        drop(n);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

async fn subscribe(
    client: &redis::Client,
    connect_timeout: Duration,
) -> Result<redis::aio::PubSub, redis::RedisError> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(FILLS_CHANNEL).await?;
        Ok(pubsub)
    };
    match tokio::time::timeout(connect_timeout.max(Duration::from_millis(100)), connect).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribe timed out",
        ))),
    }
}
