//! The backend guard: the cache's one way to call its backend. A remote
//! backend's operations run under the backend timeout and behind the
//! breaker, and every failure is counted and logged here, so that the read,
//! load and write paths only see `Result<T, Error>`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::breaker::{Breaker, Transition};
use crate::backend::{Backend, BackendError, Profile};
use crate::error::Error;
use crate::stats::{Counters, bump};

/// A backend with its breaker and timeout.
pub(super) struct Guard {
    backend: Arc<dyn Backend>,
    profile: Profile,
    breaker: Breaker,
    timeout: Duration,
    retry_after: Duration,
    namespace: Arc<str>,
    stats: Arc<Counters>,
}

impl Guard {
    pub(super) fn new(
        backend: Arc<dyn Backend>,
        timeout: Duration,
        (failures, retry_after): (u32, Duration),
        namespace: &str,
        stats: Arc<Counters>,
    ) -> Self {
        Guard {
            profile: backend.profile(),
            backend,
            breaker: Breaker::new(failures, retry_after),
            timeout,
            retry_after,
            namespace: namespace.into(),
            stats,
        }
    }

    /// The backend itself, for building an operation to [`run`](Self::run).
    pub(super) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub(super) fn profile(&self) -> Profile {
        self.profile
    }

    pub(super) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs a backend operation under the timeout and the breaker, counting
    /// and logging failures.
    pub(super) async fn run<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, Error> {
        self.run_within(self.timeout, op).await
    }

    /// [`run`](Self::run) for a write the backend confirms with others
    /// (`set`, an invalidation): the timeout plus the backend's
    /// [`write_grace`](crate::backend::Profile::write_grace).
    pub(super) async fn run_write<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, Error> {
        let within = self.timeout.saturating_add(self.profile.write_grace);
        self.run_within(within, op).await
    }

    async fn run_within<T>(
        &self,
        within: Duration,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, Error> {
        if !self.profile.remote {
            return op.await.map_err(|e| self.failed(e));
        }
        match self.attempt(within, op).await {
            Ok(v) => Ok(v),
            Err(None) => {
                bump(&self.stats.backend_skipped);
                Err(Error::backend_down())
            }
            Err(Some(e)) => {
                self.failure_noted(&e);
                Err(self.failed(e))
            }
        }
    }

    /// [`run`](Self::run) for a read shared by several callers: a failure
    /// is returned uncounted, and each caller it answers counts it
    /// ([`shared_failure`](Self::shared_failure)), as its own read's would
    /// have been.
    pub(super) async fn run_shared<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, Error> {
        match self.attempt(self.timeout, op).await {
            Ok(v) => Ok(v),
            Err(None) => Err(Error::backend_down()),
            Err(Some(e)) => Err(e.into()),
        }
    }

    /// A remote backend operation under the timeout, if the breaker allows
    /// it (`Err(None)`: not attempted); a success closes the breaker.
    async fn attempt<T>(
        &self,
        within: Duration,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, Option<BackendError>> {
        if !self.breaker.allow() {
            return Err(None);
        }
        let result = match tokio::time::timeout(within, op).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout),
        };
        match result {
            Ok(v) => {
                if self.breaker.on_success() == Transition::Closed {
                    tracing::info!(namespace = %self.namespace, "aside: cache backend is back");
                }
                Ok(v)
            }
            Err(e) => Err(Some(e)),
        }
    }

    /// Counts a shared read's failure for one more caller it answered, in
    /// the stats and the breaker.
    pub(super) fn shared_failure(&self, e: &Error) {
        if e.is_backend_down() {
            // Not attempted (the breaker was open): nothing failed.
            bump(&self.stats.backend_skipped);
            return;
        }
        if e.is_backend_timeout() {
            bump(&self.stats.backend_timeouts);
        } else {
            bump(&self.stats.backend_errors);
        }
        self.failure_noted(e);
    }

    /// Tells the breaker an operation failed.
    fn failure_noted(&self, e: &dyn std::fmt::Display) {
        if self.breaker.on_failure() == Transition::Opened {
            tracing::warn!(
                namespace = %self.namespace,
                error = %e,
                retry_after = ?self.retry_after,
                "aside: cache backend marked down; serving from the loader"
            );
        }
    }

    /// Counts and logs a failure of an operation not run through
    /// [`run`](Self::run) (an in-process backend's immediate read).
    pub(super) fn failed(&self, e: BackendError) -> Error {
        match e {
            BackendError::Timeout => bump(&self.stats.backend_timeouts),
            _ => bump(&self.stats.backend_errors),
        }
        tracing::debug!(error = %e, "aside: backend operation failed");
        e.into()
    }

    /// Checks that the backend answers, within the timeout, ignoring the
    /// breaker (a health check must see the backend itself).
    pub(super) async fn ping(&self) -> Result<(), Error> {
        let Some(inspect) = self.backend.inspect() else {
            return Ok(());
        };
        match tokio::time::timeout(self.timeout, inspect.ping()).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(BackendError::Timeout.into()),
        }
    }
}
