//! The two-level backend's [`Leases`]: L2's, with what they read copied.

use std::time::Duration;

use super::TieredBackend;
use crate::backend::{FillToken, Leases, Stored};
use crate::error::BackendError;

/// L2's leases, with the entry and tokens the acquire step read copied (like
/// `get_for_fill`'s).
#[async_trait::async_trait]
impl Leases for TieredBackend {
    async fn get_for_fill_leased(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        let t = &self.inner;
        let Some(leases) = t.l2.leases() else {
            return t.l2.get_for_fill(key, versions, marker_ttl).await;
        };
        let copy = t.begin_copy(key, versions);
        let (stored, fill) = leases
            .get_for_fill_leased(key, versions, marker_ttl, token, ttl)
            .await?;
        t.end_copy(
            copy,
            key,
            versions,
            fill.versions(),
            t.read_copy(stored.as_ref()),
        );
        Ok((stored, fill))
    }

    async fn get_for_fill_leased_many(
        &self,
        keys: &[String],
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        ttl: Duration,
    ) -> Result<Vec<(Option<Stored>, FillToken)>, BackendError> {
        self.get_for_fill_many_tiered(keys, versions, marker_ttl, Some((token, ttl)))
            .await
    }

    async fn renew_leases(
        &self,
        keys: &[String],
        token: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, BackendError> {
        match self.inner.l2.leases() {
            Some(leases) => leases.renew_leases(keys, token, ttl).await,
            None => Ok(vec![false; keys.len()]),
        }
    }

    async fn release_leases(&self, keys: &[String], token: &str) -> Result<(), BackendError> {
        match self.inner.l2.leases() {
            Some(leases) => leases.release_leases(keys, token).await,
            None => Ok(()),
        }
    }

    async fn renew_lease(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        match self.inner.l2.leases() {
            Some(leases) => leases.renew_lease(key, token, ttl).await,
            None => Ok(false),
        }
    }

    async fn release_lease(&self, key: &str, token: &str) -> Result<(), BackendError> {
        match self.inner.l2.leases() {
            Some(leases) => leases.release_lease(key, token).await,
            None => Ok(()),
        }
    }

    fn watch_fills(&self, key: &str) -> Option<crate::backend::FillWatch> {
        self.inner.l2.leases().and_then(|l| l.watch_fills(key))
    }
}
