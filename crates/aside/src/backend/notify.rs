//! Wake-ups for loads waiting on another process's lease.
//!
//! A load that finds a key's lease held elsewhere does not sleep-poll (the
//! textbook lock waiter sleeps 100 ms per try, so every waiter pays at least
//! 100 ms): it registers a [`FillWatch`] on the key *before* it tries the
//! lease, then waits for the watch. The backend's subscriber (one Redis
//! pub/sub connection per backend) fires the watch when the holder
//! publishes that it filled or released the key, so the waiter reads the
//! value a round trip after it was written. Registering first means a
//! notification that arrives between the failed lease attempt and the wait
//! is not lost.
//!
//! Only the in-process single-flight leader of a key waits here: 1,000
//! local callers of one key share one watch.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The watches of one backend, by key.
#[derive(Default)]
pub(crate) struct Notifier {
    watches: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Whether the subscriber is connected and subscribed: if not, a
    /// notification may be missed and waiters must re-check on their own.
    ready: AtomicBool,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Fill notifications arrive as pub/sub messages whose payload is the key.
impl super::BackplaneListener for Notifier {
    fn connected(&self) {
        self.set_ready(true);
        self.notify_all();
    }

    fn message(&self, payload: &[u8]) {
        if let Ok(key) = std::str::from_utf8(payload) {
            self.notify(key);
        }
    }

    fn disconnected(&self) {
        self.set_ready(false);
        // Waiters fall back to re-checking on their own while we are away.
        self.notify_all();
    }
}

// Without Redis nothing subscribes, so nothing registers watches.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Notifier {
    /// Registers interest in `key`.
    /// Keys with a live watch.
    pub fn len(&self) -> usize {
        self.watches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn watch(self: &Arc<Self>, key: &str) -> FillWatch {
        let mut map = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = match map.get(key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                map.insert(key.to_owned(), tx);
                rx
            }
        };
        FillWatch {
            rx,
            reliable: self.ready.load(Ordering::Acquire),
            owner: Some((Arc::clone(self), key.to_owned())),
        }
    }

    /// Wakes the watches of `key` (a fill or release was published).
    pub fn notify(&self, key: &str) {
        let map = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(key) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every watch: after a reconnection, messages may have been lost.
    pub fn notify_all(&self) {
        let map = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        for tx in map.values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    fn release(&self, key: &str) {
        let mut map = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        // Our receiver is still alive here: the last one counts as 1.
        if map.get(key).is_some_and(|tx| tx.receiver_count() <= 1) {
            map.remove(key);
        }
    }
}

/// A registration for "the key's value was filled (or its lease released)";
/// see [`Leases::watch_fills`](super::Leases::watch_fills).
pub struct FillWatch {
    rx: watch::Receiver<u64>,
    reliable: bool,
    owner: Option<(Arc<Notifier>, String)>,
}

impl fmt::Debug for FillWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FillWatch")
            .field("reliable", &self.reliable)
            .finish_non_exhaustive()
    }
}

impl FillWatch {
    /// Whether the subscription was live when this watch was registered. If
    /// not, a notification may be missed: the waiter should re-check the key
    /// on a short backoff instead of relying on the watch alone.
    pub fn is_reliable(&self) -> bool {
        self.reliable
    }

    /// Completes at the next notification for the key after registration
    /// (at once if one came in meanwhile). Never completes if the backend is
    /// dropped; callers bound the wait with a timeout.
    pub async fn notified(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for FillWatch {
    fn drop(&mut self) {
        if let Some((notifier, key)) = self.owner.take() {
            notifier.release(&key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_notification_after_registration_is_not_lost() {
        let n = Arc::new(Notifier::default());
        let mut w = n.watch("k");
        n.notify("k"); // before the wait begins
        tokio::time::timeout(Duration::from_secs(1), w.notified())
            .await
            .expect("woken");
        n.notify("other");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), w.notified())
                .await
                .is_err()
        );
        n.notify_all();
        tokio::time::timeout(Duration::from_secs(1), w.notified())
            .await
            .expect("woken by notify_all");
    }

    #[tokio::test]
    async fn watches_are_removed_with_their_last_holder() {
        let n = Arc::new(Notifier::default());
        let a = n.watch("k");
        let b = n.watch("k");
        assert_eq!(n.len(), 1);
        drop(a);
        assert_eq!(n.len(), 1);
        drop(b);
        assert_eq!(n.len(), 0);
    }
}
