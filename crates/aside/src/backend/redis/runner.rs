//! A thread of the backplane's own, with a current-thread tokio runtime:
//! the subscription and the publisher of a [`RedisBackplane`] run there.
//!
//! # Why not on the application's runtime
//! The subscriber is what evicts stale copies from the two-level cache, and
//! the publisher is what tells the other instances. On the application's
//! runtime both wait for a free worker: an application that keeps every
//! worker busy (a loop of in-process hits never yields) starves them for
//! seconds, and every bound they keep stretches with it; a runtime that
//! shuts down drops them, with the messages queued. On a thread of their own
//! they run whatever the application does; an application that starves the
//! whole machine still slows them, which the heartbeats (see `subscriber`)
//! make visible to the readers instead of letting them trust old copies.
//!
//! The thread runs while anything uses it (the backplane's clones, its
//! subscriptions). When the last goes, it stops the subscription at once and
//! gives the publisher up to [`DRAIN`] to send what is still queued, without
//! anyone waiting for it (dropping a backend never blocks its caller).
//!
//! [`RedisBackplane`]: super::RedisBackplane

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

/// How long a stopping runner lets its publisher send what is queued.
pub(super) const DRAIN: Duration = Duration::from_secs(5);

/// A running backplane thread; dropping the last handle stops it.
#[derive(Debug)]
pub(super) struct Runner {
    handle: tokio::runtime::Handle,
    /// Dropped with the runner: tells the thread to stop.
    _stop: oneshot::Sender<()>,
}

impl Runner {
    /// Starts the thread. `drained` completes once the publisher has sent
    /// everything (its queue closed and empty); the stopping thread waits
    /// for it up to [`DRAIN`].
    pub(super) fn start(
        name: &str,
        drained: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Arc<Runner>> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, handle) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(rt.handle().clone()));
                rt.block_on(async move {
                    // Until the last user is gone...
                    let _ = stopped.await;
                    // ...then what is queued, for a bounded time.
                    let _ = tokio::time::timeout(DRAIN, drained).await;
                });
                // Dropping the runtime cancels what is left (the
                // subscription) without waiting for it.
                rt.shutdown_background();
            })?;
        let handle = handle
            .recv()
            .map_err(|_| std::io::Error::other("the backplane thread ended before it started"))??;
        Ok(Arc::new(Runner {
            handle,
            _stop: stop,
        }))
    }

    /// Spawns `task` on the thread's runtime.
    pub(super) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}
