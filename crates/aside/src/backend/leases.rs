//! [`Leases`]: one load of a key across every process sharing a backend.

use super::{FillWatch, LeaseAsk};
use crate::error::BackendError;

/// Leases: one load of a key across every process sharing a backend.
///
/// A load takes the key's lease in the same atomic step that re-reads the
/// entry and its tokens (an [`AcquireRequest`](super::AcquireRequest) with
/// a [`LeaseAsk`]); loads elsewhere that find it taken wait for a
/// [`FillWatch`] (or for the lease to lapse) instead of loading. The
/// holder's [`Backend::fill`](super::Backend::fill) writes only while the
/// lease is its own, and releases it.
#[async_trait::async_trait]
pub trait Leases: Send + Sync {
    /// Extends the leases `lease.token` holds on `keys` to `lease.ttl`;
    /// whether each is still ours, in order.
    async fn renew(&self, keys: &[String], lease: LeaseAsk<'_>) -> Result<Vec<bool>, BackendError>;

    /// Releases the leases `token` holds on `keys` without filling (the
    /// loads failed), waking the loads waiting for them. Leases held by
    /// another token are left alone.
    async fn release(&self, keys: &[String], token: &str) -> Result<(), BackendError>;

    /// Registers interest in the next fill or lease release of `key`, before
    /// a lease attempt; `None` if the backend cannot notify (waiters then
    /// re-check on a backoff).
    fn watch_fills(&self, key: &str) -> Option<FillWatch>;
}
