//! In-process single-flight: one load per key at a time.
//!
//! The first caller to miss a key becomes the *leader*; the load runs in a
//! spawned task, and every caller (the leader included) waits on a `watch`
//! channel for its outcome. Consequences, each deliberate:
//!
//! - A caller that drops its future (timeout, client gone) does not cancel the
//!   load nor strand the others: the task runs on and stores the value.
//! - A loader that panics is caught in the task; every waiter gets a
//!   `LoaderPanicked` error. If the task is torn down anyway (runtime shutdown),
//!   its sender drops and the waiters get the same error instead of hanging.
//! - Waiters are woken by the channel, not by polling.
//!
//! The map is type-erased (`Any`) because one cache serves many value types; a
//! caller that asks for a key already loading as another type simply runs its
//! own load.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::watch;

use crate::error::{Error, ErrorKind};

/// What a load produced, shared with every waiter.
pub(crate) type Outcome<V> = Result<Option<V>, Error>;
type Channel<V> = watch::Receiver<Option<Outcome<V>>>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Slot>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    channel: Box<dyn Any + Send + Sync>,
}

pub(crate) enum Role<V> {
    Leader(Leader<V>),
    Follower(Waiter<V>),
}

/// The right (and duty) to run the load. Dropping it without publishing wakes
/// the waiters with an error, and always removes the flight from the map.
pub(crate) struct Leader<V> {
    flights: Arc<Flights>,
    key: String,
    id: Option<u64>,
    tx: watch::Sender<Option<Outcome<V>>>,
}

pub(crate) struct Waiter<V>(Channel<V>);

impl Flights {
    pub fn join<V>(self: &Arc<Self>, key: &str) -> Role<V>
    where
        V: Clone + Send + Sync + 'static,
    {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = map.get(key) {
            if let Some(rx) = slot.channel.downcast_ref::<Channel<V>>() {
                return Role::Follower(Waiter(rx.clone()));
            }
            // Same key, other type: an unshared load of our own.
            let (tx, _) = watch::channel(None);
            return Role::Leader(Leader {
                flights: Arc::clone(self),
                key: key.to_owned(),
                id: None,
                tx,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        map.insert(
            key.to_owned(),
            Slot {
                id,
                channel: Box::new(rx),
            },
        );
        Role::Leader(Leader {
            flights: Arc::clone(self),
            key: key.to_owned(),
            id: Some(id),
            tx,
        })
    }

    /// Detaches the flight for `key`, if any: callers arriving from now on
    /// start a new load instead of joining one that began before (an
    /// invalidation or a write happened in between). Callers already waiting
    /// still get the old flight's outcome: their reads began before the change.
    pub fn forget(&self, key: &str) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Detaches every flight (a tag or the whole namespace was invalidated).
    pub fn forget_all(&self) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn remove_if(&self, key: &str, id: u64) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(key).is_some_and(|s| s.id == id) {
            map.remove(key);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<V: Clone + Send + Sync + 'static> Leader<V> {
    pub fn waiter(&self) -> Waiter<V> {
        Waiter(self.tx.subscribe())
    }

    /// Hands the outcome to every waiter. The flight is unregistered when the
    /// leader is dropped, right after.
    pub fn publish(&self, outcome: Outcome<V>) {
        self.tx.send_replace(Some(outcome));
    }
}

impl<V> Drop for Leader<V> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.flights.remove_if(&self.key, id);
        }
    }
}

impl<V: Clone> Waiter<V> {
    pub async fn wait(mut self) -> Outcome<V> {
        match self.0.wait_for(Option::is_some).await {
            Ok(outcome) => match &*outcome {
                Some(o) => o.clone(),
                None => Err(abandoned()),
            },
            Err(_) => Err(abandoned()),
        }
    }
}

fn abandoned() -> Error {
    Error::new(
        ErrorKind::LoaderPanicked,
        "the load was abandoned before it finished (its task panicked or was cancelled)",
    )
}

/// Runs a future, turning a panic inside it into an `Err` with the panic
/// message.
pub(crate) struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> CatchUnwind<F> {
    pub fn new(f: F) -> Self {
        Self(Box::pin(f))
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_share_the_leaders_outcome_and_the_map_is_cleaned() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join::<u32>("k") else {
            panic!("first caller must lead");
        };
        let Role::Follower(f) = flights.join::<u32>("k") else {
            panic!("second caller must follow");
        };
        leader.publish(Ok(Some(7)));
        assert_eq!(f.wait().await.ok(), Some(Some(7)));
        // Late arrivals while the leader is still registered get the value too.
        let Role::Follower(late) = flights.join::<u32>("k") else {
            panic!("late caller must follow");
        };
        assert_eq!(late.wait().await.ok(), Some(Some(7)));
        drop(leader);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn dropped_leader_wakes_followers_with_an_error() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join::<u32>("k") else {
            panic!("first caller must lead");
        };
        let Role::Follower(f) = flights.join::<u32>("k") else {
            panic!("second caller must follow");
        };
        drop(leader);
        let err = f.wait().await.err().map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::LoaderPanicked));
    }

    #[tokio::test]
    async fn other_type_same_key_does_not_join() {
        let flights = Arc::new(Flights::default());
        let _a = flights.join::<u32>("k");
        assert!(matches!(flights.join::<String>("k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn catch_unwind_reports_the_message() {
        let r = CatchUnwind::new(async { panic!("boom") as u32 }).await;
        assert_eq!(r.err().as_deref(), Some("boom"));
    }
}
