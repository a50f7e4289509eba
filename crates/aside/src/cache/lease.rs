//! Giving back and keeping a load's lease: the release when a load will
//! not fill (or a request may have taken a lease nobody uses), and the
//! renewal while a slow loader runs.

use super::Cache;
use crate::backend::{FillToken, Lease};
use crate::error::{Error, ErrorKind};

impl Cache {
    /// Releases the lease `token` holds, if any (the load will not fill).
    pub(super) async fn release(&self, pk: &str, token: Option<&FillToken>) {
        if let Some(Lease::Held(t)) = token.map(FillToken::lease)
            && let Some(leases) = self.inner.backend.leases()
            && let Err(e) = self.guarded(leases.release_lease(pk, t)).await
        {
            // It lapses by itself after `lease_ttl`.
            tracing::debug!(key = %pk, error = %e, "aside: could not release a lease");
        }
    }

    /// Releases the leases `token` may hold on `keys` after a request that
    /// failed here may still have taken them on the server. In a task of
    /// its own, so that the load does not wait for it, and given up to
    /// `lease_ttl` (not the backend timeout: nobody waits for it, and past
    /// that the leases lapse anyway). It only removes leases holding this
    /// token.
    pub(super) fn release_later(&self, keys: Vec<String>, token: String) {
        let cache = self.clone();
        crate::task::spawn(async move {
            let Some(leases) = cache.inner.backend.leases() else {
                return;
            };
            let within = cache.inner.s.policy.lease_ttl;
            for chunk in keys.chunks(cache.inner.s.batch_chunk_size) {
                let released = tokio::time::timeout(within, leases.release_leases(chunk, &token));
                if !matches!(released.await, Ok(Ok(()))) {
                    tracing::debug!(keys = chunk.len(), "aside: could not release leases");
                }
            }
        });
    }

    /// Renews a held lease every third of its TTL while the loader runs, so a
    /// slow but live load keeps it and a crashed one loses it. The renewal
    /// stops when the returned guard is dropped, also when the load's task
    /// is torn down mid-load (a renewal that outlived its load would block
    /// the key for ever).
    pub(super) fn keep_lease(&self, pk: &str, token: Option<&FillToken>) -> Option<AbortOnDrop> {
        let Some(Lease::Held(t)) = token.map(FillToken::lease) else {
            return None;
        };
        let (cache, pk, t) = (self.clone(), pk.to_owned(), t.clone());
        let ttl = self.inner.s.policy.lease_ttl;
        let task = crate::task::spawn(async move {
            let Some(leases) = cache.inner.backend.leases() else {
                return;
            };
            loop {
                tokio::time::sleep(ttl / 3).await;
                match cache.guarded(leases.renew_lease(&pk, &t, ttl)).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(_) => {}
                }
            }
        });
        Some(AbortOnDrop(task.abort_handle()))
    }
}

/// Whether a backend request that failed with `e` may still have run on
/// the server: it timed out here, or it failed after it was sent (the
/// connection dropped with it in flight, or the server answered with an
/// error part way through a script), which the client cannot tell from one
/// that never arrived. Only a request the backend breaker skipped (no
/// source: nothing was sent) surely did nothing.
pub(super) fn may_have_run(e: &Error) -> bool {
    match e.kind() {
        ErrorKind::Timeout => true,
        ErrorKind::Backend => std::error::Error::source(e).is_some(),
        _ => false,
    }
}

/// Aborts a background task when dropped.
pub(super) struct AbortOnDrop(pub(super) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
