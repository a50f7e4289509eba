//! The metrics options (feature `metrics`).

use std::time::Duration;

use super::CacheBuilder;
use crate::cache::metrics::DEFAULT_INTERVAL;

impl CacheBuilder {
    /// Exports this cache's counters through the [`metrics`] crate, every
    /// second (see [`metrics_interval`](Self::metrics_interval)); off by
    /// default. The names and labels are listed in the guide's "Metrics and
    /// tracing" page (`docs/metrics.md`); `cache` is the namespace, and no
    /// key or value is ever a label.
    ///
    /// The export is a task that reads the counters once per interval and
    /// adds their increase to the recorder's: a hit costs exactly what it
    /// costs without metrics, and the exported values are at most one
    /// interval late. Install the recorder first; the task stops once every
    /// clone of the cache is dropped.
    ///
    /// [`build`](Self::build) then needs a tokio runtime (it starts the
    /// task): outside one it fails with a `Config` error.
    pub fn metrics(self, on: bool) -> Self {
        self.metrics_interval(on.then_some(DEFAULT_INTERVAL))
    }

    /// [`metrics`](Self::metrics) with the interval between two exports;
    /// `None` turns the export off. A zero interval is taken as 1 ms.
    pub fn metrics_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.settings.metrics_interval = interval.into().map(|d| d.max(Duration::from_millis(1)));
        self
    }
}
