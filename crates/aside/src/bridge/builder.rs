//! [`ChangeBridgeBuilder`]: the bridge's options, checked.

use std::fmt;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use super::mapping::Compiled;
use super::{BridgeError, BridgeEvent, ChangeBridge, DEFAULT_CHANNEL, EventFn, Shared, TableMap};
use crate::Cache;

/// Builds a [`ChangeBridge`]; see [`ChangeBridge::builder`].
#[must_use]
pub struct ChangeBridgeBuilder {
    cache: Cache,
    url: String,
    channel: String,
    tables: Vec<TableMap>,
    on_event: Option<EventFn>,
    connect_timeout: Duration,
    ping_interval: Duration,
    max_reconnect_delay: Duration,
    invalidate_on_start: bool,
}

impl fmt::Debug for ChangeBridgeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeBridgeBuilder")
            .field("channel", &self.channel)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl ChangeBridgeBuilder {
    pub(super) fn new(cache: Cache, url: String) -> Self {
        ChangeBridgeBuilder {
            cache,
            url,
            channel: DEFAULT_CHANNEL.to_owned(),
            tables: Vec::new(),
            on_event: None,
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(10),
            max_reconnect_delay: Duration::from_secs(5),
            invalidate_on_start: true,
        }
    }

    /// The NOTIFY channel (default [`DEFAULT_CHANNEL`]): 1 to 40 lowercase
    /// ASCII letters, digits and `_`. Bridges for different caches of one
    /// database use different channels (each installs its own triggers).
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// Maps a table (see [`TableMap`]).
    pub fn table(mut self, map: TableMap) -> Self {
        self.tables.push(map);
        self
    }

    /// Called on the bridge's task for everything it does (keep it quick).
    pub fn on_event(mut self, f: impl Fn(&BridgeEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(f));
        self
    }

    /// How long a connection attempt may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// After this long without a notification, the bridge checks its
    /// connection with a query bounded by the connect timeout (default
    /// 10 s). A failed check is a gap.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// The longest pause between reconnection attempts (default 5 s; they
    /// start at 100 ms and double).
    pub fn max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.max_reconnect_delay = delay;
        self
    }

    /// Whether [`ChangeBridge::start`] invalidates the namespace (default
    /// `true`: changes made while no bridge listened are unknown). Turn it
    /// off only when the cache is known empty or current.
    pub fn invalidate_on_start(mut self, on: bool) -> Self {
        self.invalidate_on_start = on;
        self
    }

    /// Checks the options.
    ///
    /// # Errors
    /// `Config` for a malformed URL or channel, no table, a table mapped
    /// twice, or a bad template.
    pub fn build(self) -> Result<ChangeBridge, BridgeError> {
        let mut options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| BridgeError::config(format!("PostgreSQL URL: {e}")))?;
        if options.get_application_name().is_none() {
            options = options.application_name(&format!("aside bridge {}", self.channel));
        }
        let channel_ok = (1..=40).contains(&self.channel.len())
            && self
                .channel
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !channel_ok {
            return Err(BridgeError::config(format!(
                "channel {:?}: use 1 to 40 lowercase ASCII letters, digits and `_`",
                self.channel
            )));
        }
        if self.tables.is_empty() {
            return Err(BridgeError::config("no table is mapped"));
        }
        let mut tables: Vec<Compiled> = Vec::new();
        for map in &self.tables {
            let compiled = Compiled::new(map)?;
            if tables
                .iter()
                .any(|t| t.schema == compiled.schema && t.table == compiled.table)
            {
                return Err(BridgeError::config(format!(
                    "table {:?} is mapped twice",
                    map.table()
                )));
            }
            tables.push(compiled);
        }
        for (what, d) in [
            ("connect_timeout", self.connect_timeout),
            ("ping_interval", self.ping_interval),
            ("max_reconnect_delay", self.max_reconnect_delay),
        ] {
            if d.is_zero() {
                return Err(BridgeError::config(format!(
                    "{what} must be more than zero"
                )));
            }
        }
        Ok(ChangeBridge {
            shared: Arc::new(Shared {
                cache: self.cache,
                options,
                channel: self.channel,
                tables,
                on_event: self.on_event,
                connect_timeout: self.connect_timeout,
                ping_interval: self.ping_interval,
                max_reconnect_delay: self.max_reconnect_delay,
                invalidate_on_start: self.invalidate_on_start,
            }),
        })
    }
}
