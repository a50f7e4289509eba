//! The Redis backend's [`Leases`].

use std::time::Duration;

use super::scripts::{FILLS_CHANNEL, RELEASE, RENEW, data, lease, waiters};
use super::{RedisBackend, failed, px};
use crate::backend::{FillToken, FillWatch, Leases, Stored};
use crate::error::BackendError;

/// Leases are keys beside the entry (`{ns:key}:l`, one slot with it), taken
/// by the ACQUIRE script; fills and releases are announced on one pub/sub
/// channel (only when a load waited), heard by the backend's subscriber.
#[async_trait::async_trait]
impl Leases for RedisBackend {
    async fn get_for_fill_leased(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        ttl: Duration,
    ) -> Result<(Option<Stored>, FillToken), BackendError> {
        #[cfg(feature = "cluster")]
        if self.conn.is_cluster() {
            return self
                .cluster_acquire(key, versions, marker_ttl, token, ttl)
                .await;
        }
        self.acquire(key, versions, marker_ttl, token, ttl).await
    }

    async fn renew_lease(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let mut conn = self.conn.clone();
        let renewed: u8 = RENEW
            .key(lease(key))
            .key(waiters(key))
            .arg(token)
            .arg(px(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(failed)?;
        Ok(renewed == 1)
    }

    async fn release_lease(&self, key: &str, token: &str) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        RELEASE
            .key(data(key))
            .key(lease(key))
            .key(waiters(key))
            .arg(token)
            .arg(FILLS_CHANNEL)
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(failed)
    }

    async fn get_for_fill_leased_many(
        &self,
        keys: &[String],
        versions: &[String],
        marker_ttl: Duration,
        token: &str,
        ttl: Duration,
    ) -> Result<Vec<(Option<Stored>, FillToken)>, BackendError> {
        #[cfg(feature = "cluster")]
        if self.conn.is_cluster() {
            return self
                .cluster_acquire_many(keys, versions, marker_ttl, token, ttl)
                .await;
        }
        self.acquire_many(keys, versions, marker_ttl, token, ttl)
            .await
    }

    async fn renew_leases(
        &self,
        keys: &[String],
        token: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, BackendError> {
        #[cfg(feature = "cluster")]
        if self.conn.is_cluster() {
            return self.cluster_renew_many(keys, token, ttl).await;
        }
        self.renew_many(keys, token, ttl).await
    }

    async fn release_leases(&self, keys: &[String], token: &str) -> Result<(), BackendError> {
        #[cfg(feature = "cluster")]
        if self.conn.is_cluster() {
            return self.cluster_release_many(keys, token).await;
        }
        self.release_many(keys, token).await
    }

    fn watch_fills(&self, key: &str) -> Option<FillWatch> {
        // Fills announce the data key (the scripts publish it).
        self.fills.as_ref().map(|f| f.notifier.watch(&data(key)))
    }
}
