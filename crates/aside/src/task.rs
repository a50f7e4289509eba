//! Spawning aside's own tasks.

use std::future::Future;

use tokio::task::JoinHandle;
use tracing::Instrument;

/// `tokio::spawn`, in the span current where it is called: the events of a
/// load, a refresh, a lease renewal or an invalidation run to the end then
/// carry the span of the request (or operation) that started it, though the
/// task outlives the call. Entering a span that no subscriber wants costs
/// one check.
pub(crate) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_span())
}
