//! A PostgreSQL change bridge (feature `postgres`): an `UPDATE`, `INSERT` or
//! `DELETE` made by anyone (a batch job, `psql`, another service) invalidates
//! the cache, with no application code.
//!
//! ```no_run
//! use aside::bridge::{ChangeBridge, TableMap};
//!
//! # async fn run(cache: aside::Cache, pool: sqlx::PgPool) -> Result<(), aside::bridge::BridgeError> {
//! // The cache must be built with `namespace_invalidation(true)` (see "Gaps").
//! let bridge = ChangeBridge::builder(cache, "postgres://app@db/shop")
//!     .table(
//!         TableMap::new("products")
//!             .key("product:{id}") // what the application passes to get_or_load
//!             .tag("category:{category_id}"),
//!     )
//!     .table(TableMap::new("settings").namespace())
//!     .build()?;
//! bridge.install(&pool).await?; // the trigger function and triggers, once
//! let handle = bridge.start().await?;
//! // ... later
//! println!("{:?}", handle.stats());
//! handle.stop().await;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! A trigger on each mapped table ([`ChangeBridge::install_sql`]) sends, after
//! each row change, `pg_notify(channel, payload)` with the JSON payload
//! `{"v":1,"schema":..,"table":..,"op":"INSERT|UPDATE|DELETE","old":{..},"new":{..}}`
//! holding **only the columns the mapping reads** (a `TRUNCATE` sends one
//! payload without rows). PostgreSQL delivers notifications when (and only if)
//! the writing transaction commits. The bridge `LISTEN`s with sqlx's
//! `PgListener`, renders each mapped key and tag template against the old and
//! the new row (so an `UPDATE` that moves a product to another category
//! invalidates both categories' tags), and calls
//! [`Cache::invalidate_many`] and [`Cache::invalidate_tags`].
//!
//! **Keys must match the application's.** A key template renders the string
//! the application passes to `get_or_load`: `"product:{id}"` gives
//! `product:42`, which is `Key::new("product").part(42)` (column values are
//! escaped as [`Key::part`](crate::Key::part) escapes parts) and
//! `format!("product:{id}")` for plain ids. A key built another way (other
//! parts, other separators, a different cache namespace) is never
//! invalidated: the bridge cannot check it. See [`Template`].
//!
//! # Why LISTEN/NOTIFY, not logical replication
//!
//! Logical decoding (`pgoutput`, a replication slot) loses nothing while the
//! reader is away, but it needs the replication protocol, which sqlx does not
//! speak, `wal_level = logical`, a slot that holds WAL on the server for as
//! long as the reader is gone (a stopped bridge can fill the disk), and a
//! publication per table. LISTEN/NOTIFY works on every PostgreSQL with an
//! ordinary connection and a trigger, and its one weakness, losing
//! notifications while disconnected, is closed here by the gap rule below.
//!
//! # Gaps: the rule that makes lost notifications harmless
//!
//! Notifications sent while the bridge is not listening are gone: before it
//! starts, while it is stopped, while its connection is down. So every time
//! it (re)starts listening, the bridge **invalidates the cache's whole
//! namespace** ([`Cache::invalidate_namespace`]), after its `LISTEN` is in
//! place, so nothing between the two is missed. That covers keys and tags
//! alike (tags cannot be enumerated), in O(1), and is why a bridged cache
//! must be built with
//! [`namespace_invalidation(true)`](crate::CacheBuilder::namespace_invalidation):
//! [`ChangeBridge::start`] fails with a `Config` error otherwise (the
//! cache refuses its first namespace invalidation; with
//! `invalidate_on_start(false)` the refusal comes at the first gap, counted
//! in [`BridgeStats::errors`]). Gaps are:
//! the start (unless [`ChangeBridgeBuilder::invalidate_on_start`] is off),
//! a connection lost and re-established (sqlx's `PgListener` reports it:
//! `try_recv` returns `Ok(None)`), any error on the listening connection,
//! and a ping that fails or times out on an idle connection (a half-open
//! TCP connection receives nothing and reports nothing).
//!
//! # The payload limit
//!
//! A NOTIFY payload must be shorter than 8000 bytes. The trigger sends only
//! the mapped columns (ids, usually a few bytes), never the whole row; if
//! even those would not fit, it sends `"overflow":true` without rows and the
//! bridge invalidates the namespace. A payload the bridge cannot read is
//! counted in [`BridgeStats::malformed`] and logged, never fatal; when it
//! names a mapped table (a trigger of a newer aside, say) the namespace is
//! invalidated, since dropping it could leave a changed row cached.
//!
//! # Limits
//!
//! - The commit-to-invalidate window is as with application invalidations
//!   (plus the notification's trip): a read in between can return the old
//!   row.
//! - One notification per changed row: a million-row `UPDATE` is a million
//!   invalidations. Map bulk-updated tables to the namespace.
//! - The trigger converts the changed row to `jsonb` (large columns
//!   included) to pick the mapped columns: the price of a trigger that
//!   never fails a write when the table's columns change.
//! - Anyone who can connect can `NOTIFY`: a forged payload can invalidate
//!   (never fill) the cache.
//! - Rows of a partitioned table are reported under the partition's name.

mod builder;
mod mapping;
mod payload;
mod run;
mod sql;
mod types;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Cache;
pub use builder::ChangeBridgeBuilder;
use mapping::Compiled;
pub use mapping::{TableMap, Template};
use types::Counters;
pub use types::{BridgeError, BridgeEvent, BridgeStats};

/// The channel the bridge listens on unless told otherwise.
pub const DEFAULT_CHANNEL: &str = "aside_changes";

type EventFn = Arc<dyn Fn(&BridgeEvent) + Send + Sync>;

struct Shared {
    cache: Cache,
    options: PgConnectOptions,
    channel: String,
    tables: Vec<Compiled>,
    on_event: Option<EventFn>,
    connect_timeout: Duration,
    ping_interval: Duration,
    max_reconnect_delay: Duration,
    invalidate_on_start: bool,
}

/// Turns committed row changes in PostgreSQL into cache invalidations. See
/// the [module documentation](self) for how, and for the gap rule.
///
/// Cheap to clone; [`start`](Self::start) may be called again after a stop.
#[derive(Clone)]
pub struct ChangeBridge {
    shared: Arc<Shared>,
}

impl fmt::Debug for ChangeBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeBridge")
            .field("channel", &self.shared.channel)
            .field("tables", &self.shared.tables)
            .field("cache", &self.shared.cache)
            .finish_non_exhaustive()
    }
}

impl ChangeBridge {
    /// A builder for a bridge from the database at `pg_url`
    /// (`postgres://user[:password]@host[:port]/db`) to `cache`, which must
    /// be built with `namespace_invalidation(true)`.
    pub fn builder(cache: Cache, pg_url: impl Into<String>) -> ChangeBridgeBuilder {
        ChangeBridgeBuilder::new(cache, pg_url.into())
    }

    /// The channel it listens on.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// The SQL that makes `table` (as mapped) notify this bridge: the
    /// trigger function (`aside_notify_change`, in the table's schema when
    /// the mapping names one) and the table's triggers, in one transaction.
    /// Idempotent; run it with `psql` or [`install`](Self::install). It
    /// fails (installing nothing) when a mapped column does not exist.
    ///
    /// # Errors
    /// `Config` when `table` is not mapped.
    pub fn install_sql(&self, table: &str) -> Result<String, BridgeError> {
        Ok(sql::install_sql(self.table(table)?, &self.shared.channel))
    }

    /// The SQL that removes `table`'s triggers (the shared function stays).
    ///
    /// # Errors
    /// `Config` when `table` is not mapped.
    pub fn uninstall_sql(&self, table: &str) -> Result<String, BridgeError> {
        Ok(sql::uninstall_sql(self.table(table)?, &self.shared.channel))
    }

    /// Runs [`install_sql`](Self::install_sql) for every mapped table.
    ///
    /// # Errors
    /// `Postgres` when a statement fails (a missing table or column, no
    /// privilege to create triggers).
    pub async fn install(&self, pool: &sqlx::PgPool) -> Result<(), BridgeError> {
        for table in &self.shared.tables {
            let sql = sql::install_sql(table, &self.shared.channel);
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await
                .map_err(BridgeError::postgres(format!(
                    "installing the trigger on {}",
                    table.table
                )))?;
        }
        Ok(())
    }

    fn table(&self, name: &str) -> Result<&Compiled, BridgeError> {
        let (schema, table) = match name.split_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, name),
        };
        self.shared
            .tables
            .iter()
            .find(|t| t.schema.as_deref() == schema && t.table == table)
            .ok_or_else(|| BridgeError::config(format!("table {name:?} is not mapped")))
    }

    /// Connects, `LISTEN`s, invalidates the namespace (the start is a gap),
    /// then listens in a task of its own until the handle is stopped or
    /// dropped. It reconnects by itself, forever, invalidating the namespace
    /// each time.
    ///
    /// # Errors
    /// `Postgres` when the database cannot be reached or refuses `LISTEN`;
    /// `Cache` when the namespace invalidation is refused (the cache lacks
    /// `namespace_invalidation(true)`). An unreachable cache backend is not
    /// an error: the cache queues the invalidation and retries it.
    pub async fn start(&self) -> Result<BridgeHandle, BridgeError> {
        let counters = Arc::new(Counters::default());
        let listener = run::connect(&self.shared)
            .await
            .map_err(BridgeError::postgres("could not LISTEN on PostgreSQL"))?;
        let ctx = run::Context {
            shared: Arc::clone(&self.shared),
            counters: Arc::clone(&counters),
        };
        ctx.emit(BridgeEvent::Listening {
            channel: self.shared.channel.clone(),
        });
        if self.shared.invalidate_on_start {
            ctx.gap("bridge started").await?;
        }
        let (stop, stopped) = watch::channel(false);
        let task = crate::task::spawn(run::listen(ctx, listener, stopped));
        Ok(BridgeHandle {
            stop,
            task: Some(task),
            counters,
        })
    }
}

/// A running bridge. Dropping it stops the bridge (as [`stop`](Self::stop)
/// does, without waiting).
#[derive(Debug)]
pub struct BridgeHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl BridgeHandle {
    /// The counters so far.
    pub fn stats(&self) -> BridgeStats {
        self.counters.snapshot()
    }

    /// Whether the bridge's task still runs.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops listening and waits for the task to end (an invalidation in
    /// progress finishes first). Returns the final counters.
    pub async fn stop(mut self) -> BridgeStats {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "aside bridge: the listening task failed");
        }
        self.counters.snapshot()
    }
}

impl Drop for BridgeHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
