//! [`RedisBackplane`]: the two-level cache's backplane on Redis pub/sub.
//!
//! Its subscription and its publisher run on a thread of their own (see
//! `runner`), each on a connection of its own, so that the application's
//! runtime (busy, or shutting down) neither delays nor drops them.
//!
//! On one Redis, the subscription also sends a `PING` every
//! [`heartbeat`](RedisBackplane::heartbeat) on its own connection: Redis
//! answers it after every message it published to that connection before
//! the `PING`, so the answer proves that everything accepted before the
//! `PING` was sent has been delivered (see `subscriber`). On a Redis
//! Cluster a classic `PUBLISH` reaches the other nodes over the cluster bus,
//! with no order against a `PING` to one of them: a cluster backplane has no
//! heartbeat, and a two-level cache bounding its staleness refuses it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot};

use super::runner::Runner;
use super::scripts::{MEMBER_LIVE, MEMBER_RENEW, MEMBER_REVOKE};
use super::subscriber::Subscription;
use crate::backend::{
    Backplane, BackplaneListener, BackplaneSubscription, Live, Membership, Publishing,
};
use crate::error::BackendError;

/// The heartbeat of a backplane on one Redis, by default.
pub(super) const HEARTBEAT: Duration = Duration::from_millis(25);
/// How many queued messages one pipeline sends at most.
const BATCH: usize = 512;

/// A [`Backplane`] on Redis pub/sub: messages go out with `PUBLISH` on
/// `channel` and are heard on a subscription. Made by
/// [`RedisBackend::backplane`](super::RedisBackend::backplane).
///
/// Cheap to clone; clones share one thread, one publishing connection and
/// the order of their messages.
#[derive(Clone)]
pub struct RedisBackplane {
    shared: Arc<Shared>,
}

struct Shared {
    clients: Vec<redis::Client>,
    connect_timeout: Duration,
    channel: String,
    /// `None` on a Redis Cluster (see the module documentation).
    heartbeat: Option<Duration>,
    /// The thread and the publisher's queue, started at first use.
    started: OnceLock<Result<Started, String>>,
}

struct Started {
    runner: Arc<Runner>,
    outbox: mpsc::UnboundedSender<Job>,
}

/// A command for the backplane's connection, as the registry sends them.
type Call = Box<
    dyn for<'a> FnOnce(
            &'a mut MultiplexedConnection,
        ) -> Pin<
            Box<dyn Future<Output = redis::RedisResult<redis::Value>> + Send + 'a>,
        > + Send,
>;

/// What the backplane's connection is asked to do, in order.
enum Job {
    /// A message for `channel`, and who waits for Redis to accept it.
    Publish {
        channel: String,
        bytes: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// A command of the registry of instances.
    Call {
        call: Call,
        done: oneshot::Sender<Result<redis::Value, String>>,
    },
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("channel", &self.shared.channel)
            .field("heartbeat", &self.shared.heartbeat)
            .finish_non_exhaustive()
    }
}

impl RedisBackplane {
    pub(super) fn new(
        clients: Vec<redis::Client>,
        connect_timeout: Duration,
        channel: String,
        cluster: bool,
    ) -> Self {
        RedisBackplane {
            shared: Arc::new(Shared {
                clients,
                connect_timeout,
                channel,
                heartbeat: (!cluster).then_some(HEARTBEAT),
                started: OnceLock::new(),
            }),
        }
    }

    /// The channel messages go out on.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// How often the subscription proves it is caught up (default 25 ms;
    /// on a Redis Cluster there is none). A two-level cache whose copies
    /// may be at most `max_staleness` behind needs a heartbeat well under
    /// it: it refuses one over half of it.
    ///
    /// # Panics
    /// Never; a zero interval is taken as 1 ms.
    #[must_use]
    pub fn heartbeat(self, every: Duration) -> Self {
        let shared = &self.shared;
        let heartbeat = shared
            .heartbeat
            .map(|_| every.max(Duration::from_millis(1)));
        RedisBackplane {
            shared: Arc::new(Shared {
                clients: shared.clients.clone(),
                connect_timeout: shared.connect_timeout,
                channel: shared.channel.clone(),
                heartbeat,
                started: OnceLock::new(),
            }),
        }
    }

    /// The thread and the publisher, started on first use.
    fn started(&self) -> Result<&Started, BackendError> {
        let shared = &self.shared;
        let started = shared.started.get_or_init(|| {
            let (outbox, queue) = mpsc::unbounded_channel();
            let (drained_tx, drained) = oneshot::channel::<()>();
            let runner = Runner::start("aside-backplane", async move {
                let _ = drained.await;
            })
            .map_err(|e| format!("could not start the backplane thread: {e}"))?;
            runner.spawn(publisher(
                shared.clients.clone(),
                shared.connect_timeout,
                queue,
                drained_tx,
            ));
            Ok(Started { runner, outbox })
        });
        started
            .as_ref()
            .map_err(|e| BackendError::failed(std::io::Error::other(e.clone())))
    }
}

impl RedisBackplane {
    /// The channel of the messages sent to `instance` alone.
    fn direct(&self, instance: &str) -> String {
        format!("{}:to:{instance}", self.shared.channel)
    }

    /// Queues a message for `channel`.
    fn send(&self, channel: String, bytes: Vec<u8>) -> Publishing {
        let (done, answer) = oneshot::channel();
        let queued = self.started().and_then(|started| {
            started
                .outbox
                .send(Job::Publish {
                    channel,
                    bytes,
                    done,
                })
                .map_err(|_| stopped())
        });
        Box::pin(async move {
            queued?;
            match answer.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(BackendError::failed(std::io::Error::other(e))),
                Err(_) => Err(stopped()),
            }
        })
    }

    /// Runs a registry command on the backplane's connection, in its
    /// thread.
    async fn call(&self, call: Call) -> Result<redis::Value, BackendError> {
        let (done, answer) = oneshot::channel();
        let started = self.started()?;
        started
            .outbox
            .send(Job::Call { call, done })
            .map_err(|_| stopped())?;
        match answer.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BackendError::failed(std::io::Error::other(e))),
            Err(_) => Err(stopped()),
        }
    }

    /// The registry of instances (one key: see `lua/member_renew.lua`).
    fn registry(&self) -> String {
        format!("{}:members", self.shared.channel)
    }
}

fn stopped() -> BackendError {
    BackendError::failed(std::io::Error::other("the backplane stopped"))
}

/// How long the registry outlives its last renewal: long after any lease.
const KEEP_REGISTRY: Duration = Duration::from_secs(3_600);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(n) => Some(*n),
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn malformed() -> BackendError {
    BackendError::failed(std::io::Error::other(
        "the registry of instances answered something else",
    ))
}

#[async_trait::async_trait]
impl Membership for RedisBackplane {
    async fn renew(
        &self,
        instance: &str,
        lease: Duration,
        register: bool,
    ) -> Result<Option<u64>, BackendError> {
        let members = self.registry();
        let (instance, lease) = (instance.to_owned(), ms(lease));
        let reply = self
            .call(Box::new(move |conn| {
                Box::pin(async move {
                    MEMBER_RENEW
                        .key(members)
                        .arg(instance)
                        .arg(lease)
                        .arg(u8::from(register))
                        .arg(ms(KEEP_REGISTRY))
                        .invoke_async(conn)
                        .await
                })
            }))
            .await?;
        let now = int(&reply).ok_or_else(malformed)?;
        Ok(u64::try_from(now).ok().filter(|n| *n > 0))
    }

    async fn live(&self, longest_lease: Duration) -> Result<Live, BackendError> {
        let members = self.registry();
        let lease = ms(longest_lease);
        let reply = self
            .call(Box::new(move |conn| {
                Box::pin(async move {
                    MEMBER_LIVE
                        .key(members)
                        .arg(lease)
                        .arg(ms(KEEP_REGISTRY))
                        .invoke_async(conn)
                        .await
                })
            }))
            .await?;
        let redis::Value::Array(items) = reply else {
            return Err(malformed());
        };
        let mut it = items.iter();
        let as_of = it.next().and_then(int).ok_or_else(malformed)?;
        let settling = it.next().and_then(int).ok_or_else(malformed)?;
        let mut live = Vec::new();
        while let (Some(id), Some(left)) = (it.next(), it.next()) {
            let id = match id {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                _ => return Err(malformed()),
            };
            let left = int(left).ok_or_else(malformed)?;
            live.push((id, millis(left)));
        }
        let as_of = u64::try_from(as_of).map_err(|_| malformed())?;
        Ok(Live::new(live, millis(settling), as_of))
    }

    async fn revoke(
        &self,
        instance: &str,
        longest_lease: Duration,
    ) -> Result<Option<u64>, BackendError> {
        let members = self.registry();
        let (instance, lease) = (instance.to_owned(), ms(longest_lease));
        let reply = self
            .call(Box::new(move |conn| {
                Box::pin(async move {
                    MEMBER_REVOKE
                        .key(members)
                        .arg(instance)
                        .arg(lease)
                        .invoke_async(conn)
                        .await
                })
            }))
            .await?;
        let ends = int(&reply).ok_or_else(malformed)?;
        Ok(u64::try_from(ends).ok())
    }

    fn leave(&self, instance: &str) {
        let (members, instance) = (self.registry(), instance.to_owned());
        let (done, _) = oneshot::channel();
        let call: Call = Box::new(move |conn| {
            Box::pin(async move {
                // With its tombstone, if it was revoked: it serves
                // nothing any more.
                redis::cmd("ZREM")
                    .arg(members)
                    .arg(&instance)
                    .arg(format!("~rev:{instance}"))
                    .query_async(conn)
                    .await
            })
        });
        // Queued: the thread sends what is queued before it stops.
        if let Ok(started) = self.started() {
            let _ = started.outbox.send(Job::Call { call, done });
        }
    }
}

fn millis(n: i64) -> Duration {
    Duration::from_millis(u64::try_from(n).unwrap_or(0))
}

impl Backplane for RedisBackplane {
    fn publish(&self, message: Vec<u8>) -> Publishing {
        self.send(self.shared.channel.clone(), message)
    }

    fn send_to(&self, instance: &str, message: Vec<u8>) -> Publishing {
        self.send(self.direct(instance), message)
    }

    fn members(&self) -> Option<&dyn Membership> {
        // On a cluster the registry and the messages would live on nodes
        // with no order between them: strict invalidation is refused there.
        self.shared.heartbeat.map(|_| self as &dyn Membership)
    }

    fn subscribe(
        &self,
        instance: &str,
        listener: Weak<dyn BackplaneListener>,
    ) -> BackplaneSubscription {
        let shared = &self.shared;
        match self.started() {
            Ok(started) => BackplaneSubscription::new(Subscription::start_on(
                &started.runner,
                shared.clients.clone(),
                shared.connect_timeout,
                vec![shared.channel.clone(), self.direct(instance)],
                shared.heartbeat,
                listener,
            )),
            Err(e) => {
                // Never connected: the listener's copies stay untrusted.
                tracing::error!(error = %e, "aside: backplane subscription not started");
                BackplaneSubscription::new(())
            }
        }
    }

    fn heartbeat(&self) -> Option<Duration> {
        self.shared.heartbeat
    }
}

/// Runs the queued jobs in order on a connection of its own (re-made after
/// a failure, through the next client): consecutive messages go out as one
/// pipeline, registry commands one by one. A failure is answered to every
/// waiter of the pipeline: the writer's invalidation is then not reported
/// applied, and is retried. Ends once every sender is gone and the queue
/// is empty.
async fn publisher(
    clients: Vec<redis::Client>,
    connect_timeout: Duration,
    mut queue: mpsc::UnboundedReceiver<Job>,
    drained: oneshot::Sender<()>,
) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut next_client = 0usize;
    // Connecting and each pipeline are bounded: a writer waits at most its
    // own backend timeout, and a stopping runner at most its drain time.
    let limit = connect_timeout.max(Duration::from_millis(500));
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let connected = async {
            if conn.is_none() {
                let client = clients
                    .get(next_client % clients.len().max(1))
                    .ok_or_else(|| "no Redis URL".to_owned())?;
                next_client += 1;
                conn = Some(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            conn.clone().ok_or_else(|| "not connected".to_owned())
        };
        let connected = match tokio::time::timeout(limit, connected).await {
            Ok(r) => r,
            Err(_) => Err(format!("could not connect within {limit:?}")),
        };
        match job {
            Job::Call { call, done } => {
                let result = match connected {
                    Ok(mut c) => match tokio::time::timeout(limit, call(&mut c)).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("no answer within {limit:?}")),
                    },
                    Err(e) => Err(e),
                };
                if result.is_err() {
                    conn = None;
                }
                let _ = done.send(result);
            }
            Job::Publish {
                channel,
                bytes,
                done,
            } => {
                let mut batch = vec![(channel, bytes, done)];
                while batch.len() < BATCH {
                    match queue.try_recv() {
                        Ok(Job::Publish {
                            channel,
                            bytes,
                            done,
                        }) => batch.push((channel, bytes, done)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let mut pipe = redis::pipe();
                for (channel, bytes, _) in &batch {
                    pipe.cmd("PUBLISH").arg(channel).arg(bytes).ignore();
                }
                let result = match connected {
                    Ok(mut c) => {
                        match tokio::time::timeout(limit, pipe.query_async::<()>(&mut c)).await {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(_) => Err(format!("PUBLISH did not answer within {limit:?}")),
                        }
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "aside: backplane publish failed");
                    conn = None;
                }
                for (_, _, done) in batch {
                    let _ = done.send(result.clone());
                }
            }
        }
    }
    let _ = drained.send(());
}
