//! The listening task: receive, interpret, invalidate; reconnect and
//! invalidate the namespace after any gap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::payload::{Work, interpret};
use super::{BridgeError, BridgeEvent, Counters, Shared};
use crate::Invalidation;

/// The first pause before reconnecting; it doubles up to the maximum.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// How much of a malformed payload goes into logs and events.
const SHOWN_PAYLOAD: usize = 200;

/// Opens a connection of its own, `LISTEN`s, and leaves reconnecting to us
/// (`eager_reconnect(false)`): `try_recv` then reports a lost connection at
/// once, and every reconnection goes through code that counts the gap.
pub(super) async fn connect(shared: &Shared) -> Result<PgListener, sqlx::Error> {
    let attempt = async {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(shared.connect_timeout)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(shared.options.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener.eager_reconnect(false);
        listener.listen(&shared.channel).await?;
        Ok(listener)
    };
    match timeout(shared.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// What the task works with.
pub(super) struct Context {
    pub shared: Arc<Shared>,
    pub counters: Arc<Counters>,
}

impl Context {
    pub fn emit(&self, event: BridgeEvent) {
        if let Some(f) = &self.shared.on_event {
            f(&event);
        }
    }

    fn error(&self, message: String) {
        bump(&self.counters.errors, 1);
        tracing::error!(channel = %self.shared.channel, "aside bridge: {message}");
        self.emit(BridgeEvent::Error { message });
    }

    /// Notifications may have been lost: invalidate everything.
    pub async fn gap(&self, reason: &'static str) -> Result<(), BridgeError> {
        bump(&self.counters.gaps, 1);
        tracing::info!(channel = %self.shared.channel, reason, "aside bridge: gap, invalidating the namespace");
        self.namespace(reason, None).await
    }

    async fn namespace(
        &self,
        reason: &'static str,
        table: Option<String>,
    ) -> Result<(), BridgeError> {
        match self.shared.cache.invalidate_namespace().await {
            Ok(outcome) => {
                bump(&self.counters.namespace_invalidations, 1);
                self.emit(BridgeEvent::NamespaceInvalidated {
                    reason,
                    table,
                    outcome,
                });
                Ok(())
            }
            Err(e) => {
                self.error(format!("namespace invalidation ({reason}) failed: {e}"));
                Err(e.into())
            }
        }
    }

    /// Acts on one notification. Never fails: what goes wrong is counted.
    async fn handle(&self, payload: &str) {
        bump(&self.counters.notifications, 1);
        let (work, table) = interpret(payload, &self.shared.tables);
        match work {
            Work::Entries { op, keys, tags } => self.entries(table, op, keys, tags).await,
            Work::Namespace { reason, malformed } => {
                if malformed {
                    bump(&self.counters.malformed, 1);
                    tracing::warn!(
                        payload = shown(payload),
                        reason,
                        "aside bridge: unreadable notification for a mapped table"
                    );
                }
                let _ = self.namespace(reason, table).await;
            }
            Work::Ignore => bump(&self.counters.ignored, 1),
            Work::Malformed(error) => {
                bump(&self.counters.malformed, 1);
                tracing::warn!(payload = shown(payload), %error, "aside bridge: malformed notification ignored");
                self.emit(BridgeEvent::Malformed {
                    error: format!("{error} in {:?}", shown(payload)),
                });
            }
        }
    }

    async fn entries(
        &self,
        table: Option<String>,
        op: String,
        keys: Vec<String>,
        tags: Vec<String>,
    ) {
        let cache = &self.shared.cache;
        let mut outcome = Invalidation::Applied;
        let mut failed = false;
        if !keys.is_empty() {
            match cache.invalidate_many(&keys).await {
                Ok(o) => {
                    bump(&self.counters.keys_invalidated, keys.len());
                    outcome = worst(outcome, o);
                }
                Err(e) => {
                    failed = true;
                    self.error(format!("invalidating keys {keys:?} failed: {e}"));
                }
            }
        }
        if !tags.is_empty() {
            match cache.invalidate_tags(&tags).await {
                Ok(o) => {
                    bump(&self.counters.tags_invalidated, tags.len());
                    outcome = worst(outcome, o);
                }
                Err(e) => {
                    failed = true;
                    self.error(format!("invalidating tags {tags:?} failed: {e}"));
                }
            }
        }
        if !failed {
            self.emit(BridgeEvent::Invalidated {
                table: table.unwrap_or_default(),
                op,
                keys,
                tags,
                outcome,
            });
        }
    }
}

/// The task: listens until stopped, reconnecting after any failure.
pub(super) async fn listen(ctx: Context, first: PgListener, mut stop: watch::Receiver<bool>) {
    let mut listener = Some(first);
    let mut delay = FIRST_RECONNECT_DELAY;
    loop {
        let mut current = match listener.take() {
            Some(l) => l,
            None => {
                let attempt = tokio::select! {
                    biased;
                    () = stopped(&mut stop) => return,
                    r = connect(&ctx.shared) => r,
                };
                match attempt {
                    Ok(l) => {
                        ctx.emit(BridgeEvent::Listening {
                            channel: ctx.shared.channel.clone(),
                        });
                        let _ = ctx.gap("reconnected").await;
                        delay = FIRST_RECONNECT_DELAY;
                        l
                    }
                    Err(e) => {
                        ctx.error(format!("reconnecting failed (next try in {delay:?}): {e}"));
                        tokio::select! {
                            biased;
                            () = stopped(&mut stop) => return,
                            () = sleep(delay) => {}
                        }
                        delay = (delay * 2).min(ctx.shared.max_reconnect_delay);
                        continue;
                    }
                }
            }
        };
        match receive(&ctx, &mut current, &mut stop).await {
            Exit::Stopped => return,
            Exit::Broken(message) => {
                ctx.error(format!("the listening connection failed: {message}"));
                drop(current);
            }
        }
    }
}

enum Exit {
    Stopped,
    Broken(String),
}

/// Receives on one listener until stopped or until it fails.
async fn receive(
    ctx: &Context,
    listener: &mut PgListener,
    stop: &mut watch::Receiver<bool>,
) -> Exit {
    let interval = ctx.shared.ping_interval;
    let mut quiet_until = Instant::now() + interval;
    loop {
        tokio::select! {
            biased;
            () = stopped(stop) => return Exit::Stopped,
            received = listener.try_recv() => match received {
                Ok(Some(notification)) => {
                    ctx.handle(notification.payload()).await;
                    quiet_until = Instant::now() + interval;
                }
                Ok(None) => {
                    // The connection was lost (and dropped): re-establish it
                    // (the ping reconnects and re-LISTENs), then the gap.
                    if let Err(e) = ping(ctx, listener).await {
                        return Exit::Broken(format!("connection lost, reconnecting failed: {e}"));
                    }
                    ctx.emit(BridgeEvent::Listening { channel: ctx.shared.channel.clone() });
                    let _ = ctx.gap("connection lost").await;
                    quiet_until = Instant::now() + interval;
                }
                Err(e) => return Exit::Broken(e.to_string()),
            },
            () = sleep_until(quiet_until) => {
                if let Err(e) = ping(ctx, listener).await {
                    return Exit::Broken(format!("ping failed: {e}"));
                }
                quiet_until = Instant::now() + interval;
            }
        }
    }
}

/// A round trip on the listening connection (reconnecting and re-LISTENing
/// it first if it was dropped), bounded by the connect timeout.
async fn ping(ctx: &Context, listener: &mut PgListener) -> Result<(), String> {
    match timeout(
        ctx.shared.connect_timeout,
        sqlx::query("SELECT 1").execute(&mut *listener),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", ctx.shared.connect_timeout)),
    }
}

/// Resolves when the handle asks to stop or is dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn worst(a: Invalidation, b: Invalidation) -> Invalidation {
    if a.is_applied() { b } else { a }
}

fn bump(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Relaxed);
}

/// The start of a payload, cut on a character boundary.
fn shown(payload: &str) -> &str {
    let mut end = payload.len().min(SHOWN_PAYLOAD);
    while !payload.is_char_boundary(end) {
        end -= 1;
    }
    &payload[..end]
}
