//! A Redis pub/sub subscription that stays up: one connection per use (fill
//! notifications, the backplane), reconnecting with backoff, telling its
//! [`Listener`] when it is live and when it stopped being live.
//!
//! It runs in its own task for as long as its owner lives. A listener must
//! treat every (re)connection as a gap: what was published while the
//! subscription was away is lost (pub/sub keeps nothing).
//!
//! A connection can also die without closing (a half-open TCP connection:
//! a dropped route, a frozen server): nothing arrives and nothing fails. So
//! the subscriber PINGs every [`PING_EVERY`] and treats a PING unanswered
//! within [`PING_TIMEOUT`] as a lost connection: the listener hears
//! `disconnected`, and the subscriber reconnects.
//!
//! It is given one client per URL and tries them in turn: on a Redis
//! Cluster a classic `PUBLISH` (from a client or from a script on any node)
//! is forwarded to every node, so one subscription on any node hears all,
//! and when that node goes away the next attempt goes to another.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt};

use super::runner::Runner;
use crate::backend::BackplaneListener as Listener;

/// How often the subscription's liveness is checked.
const PING_EVERY: Duration = Duration::from_millis(500);
/// How long a PING may go unanswered before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// Aborts the subscriber task when dropped.
#[derive(Debug)]
pub(crate) struct Subscription {
    task: tokio::task::AbortHandle,
    /// The thread it runs on, if not the caller's runtime.
    _runner: Option<Arc<Runner>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    /// Subscribes to `channel` and feeds `listener` until dropped (or until
    /// the listener is gone). Must be called inside a tokio runtime.
    pub fn start(
        clients: Vec<redis::Client>,
        connect_timeout: Duration,
        channel: String,
        listener: Weak<dyn Listener>,
    ) -> Self {
        let task = crate::task::spawn(run(clients, connect_timeout, vec![channel], None, listener))
            .abort_handle();
        Subscription {
            task,
            _runner: None,
        }
    }

    /// As [`start`](Self::start), on `runner`'s thread, with a heartbeat
    /// every `heartbeat` (see `run`).
    pub fn start_on(
        runner: &Arc<Runner>,
        clients: Vec<redis::Client>,
        connect_timeout: Duration,
        channels: Vec<String>,
        heartbeat: Option<Duration>,
        listener: Weak<dyn Listener>,
    ) -> Self {
        let task = runner
            .spawn(run(clients, connect_timeout, channels, heartbeat, listener))
            .abort_handle();
        Subscription {
            task,
            _runner: Some(Arc::clone(runner)),
        }
    }
}

/// The subscription's loop. With a `heartbeat`, it PINGs that often (else
/// every [`PING_EVERY`]), and after each answer, once it has handed on
/// every message that arrived before it, tells the listener it is caught
/// up as of the moment the PING was sent: Redis answers a PING after what
/// it published to this connection before it, so everything accepted
/// before that moment has been delivered.
async fn run(
    clients: Vec<redis::Client>,
    connect_timeout: Duration,
    channels: Vec<String>,
    heartbeat: Option<Duration>,
    listener: Weak<dyn Listener>,
) {
    let channel = channels.first().cloned().unwrap_or_default();
    let mut pause = Duration::from_millis(50);
    for attempt in 0usize.. {
        let Some(client) = clients.get(attempt % clients.len().max(1)) else {
            return;
        };
        match subscribe(client, connect_timeout, &channels).await {
            Ok(pubsub) => {
                pause = Duration::from_millis(50);
                let Some(l) = listener.upgrade() else { return };
                l.connected();
                drop(l);
                let (mut sink, mut messages) = pubsub.split();
                let mut ping = tokio::time::interval(heartbeat.unwrap_or(PING_EVERY));
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            let Some(l) = listener.upgrade() else { return };
                            l.message(msg.get_payload_bytes());
                        }
                        _ = ping.tick() => {
                            let sent_at = crate::clock::boot_ns();
                            let pong = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                tracing::debug!(%channel, "aside: subscription stopped answering PING");
                                break;
                            }
                            let Some(l) = listener.upgrade() else { return };
                            // The messages that came before the answer are
                            // queued already: hand them on first.
                            let mut closed = false;
                            loop {
                                match messages.next().now_or_never() {
                                    Some(Some(msg)) => l.message(msg.get_payload_bytes()),
                                    Some(None) => {
                                        closed = true;
                                        break;
                                    }
                                    None => break,
                                }
                            }
                            if closed {
                                break;
                            }
                            if heartbeat.is_some() {
                                l.caught_up(sent_at);
                            }
                        }
                    }
                }
                tracing::debug!(%channel, "aside: subscription lost; reconnecting");
            }
            Err(e) => {
                tracing::debug!(%channel, error = %e, "aside: could not subscribe");
            }
        }
        let Some(l) = listener.upgrade() else { return };
        l.disconnected();
        drop(l);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

async fn subscribe(
    client: &redis::Client,
    connect_timeout: Duration,
    channels: &[String],
) -> Result<redis::aio::PubSub, redis::RedisError> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channels).await?;
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
