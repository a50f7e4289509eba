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
//! - A load's outcome says *whom* it may be handed to (`valid_from`): only
//!   callers that joined before the moment the value was proven current (a
//!   fill the backend accepted, a read of the cache) or, when nothing proved
//!   it (the fill was refused because an invalidation came in between, or
//!   was never tried), callers that joined before the load began. Anyone
//!   else may have started after an invalidation that this process never
//!   heard of (it was made by another process), so it loads again. Moments
//!   are numbers from one process-wide counter ([`Flights::now`]).
//!
//! - A caller may join a *foreground* load (one that callers who missed are
//!   waiting for) before it reads the backend at all ([`Flights::follow_load`]):
//!   the load's value is handed to it under the same rule, since the rule
//!   only needs the moment its call began. A background refresh is never
//!   joined this way: whoever reads a key being refreshed is served the
//!   stale entry at once. A counter of foreground loads lets every other read
//!   skip the map (one atomic load).
//!
//! The map is type-erased (`Any`) because one cache serves many value types; a
//! caller that asks for a key already loading as another type simply runs its
//! own load.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::watch;

use crate::error::{Error, ErrorKind};

/// What a load produced.
pub(crate) type Outcome<V> = Result<Option<V>, Error>;
type Channel<V> = watch::Receiver<Option<Done<V>>>;

/// A load's outcome as handed to its waiters.
#[derive(Debug, Clone)]
pub(crate) struct Done<V> {
    pub outcome: Outcome<V>,
    /// Callers whose moment (see [`Flights::now`]) is below this may take
    /// the outcome; the others must load again.
    pub valid_from: u64,
    /// A caller (by its moment) that may take the outcome whatever
    /// `valid_from` says: the one whose own read it is.
    pub owner: Option<u64>,
    /// Handed out before the load's fill was written (see
    /// [`Leader::publish_early`]): only for the callers it is for; the
    /// others wait for the final outcome.
    pub early: bool,
}

impl<V> Done<V> {
    /// An outcome for the waiters whose moment is below `valid_from`.
    pub fn before(outcome: Outcome<V>, valid_from: u64) -> Self {
        Done {
            outcome,
            valid_from,
            owner: None,
            early: false,
        }
    }

    /// An outcome for every waiter (errors, and values proven current).
    pub fn to_all(outcome: Outcome<V>) -> Self {
        Self::before(outcome, u64::MAX)
    }

    /// An outcome for the caller with moment `owner` only (a value it read
    /// itself); everyone else loads again.
    pub fn owner_only(outcome: Outcome<V>, owner: u64) -> Self {
        Done {
            outcome,
            valid_from: 0,
            owner: Some(owner),
            early: false,
        }
    }

    /// Nothing for anyone: every waiter loads again (a background refresh
    /// that left the key to another process).
    pub fn retry() -> Self {
        Self::before(Ok(None), 0)
    }

    /// Whether the caller with moment `me` may take it.
    pub fn is_for(&self, me: u64) -> bool {
        me < self.valid_from || self.owner == Some(me)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Slot>>,
    /// How many slots of the map are foreground loads; changed under the
    /// map's lock, read without it (a stale reading only costs a read of the
    /// backend, or a look at the map).
    foreground: AtomicUsize,
    next_id: AtomicU64,
    clock: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    /// Callers that missed wait for it (not a background refresh).
    foreground: bool,
    /// The version counters the load depends on: a tag invalidation
    /// detaches only the flights that carry the tag.
    deps: Vec<String>,
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
    tx: watch::Sender<Option<Done<V>>>,
}

pub(crate) struct Waiter<V>(Channel<V>);

impl Flights {
    /// The current moment: a number that only grows, shared by every flight
    /// of this cache. A caller takes one before it first joins; a leader
    /// takes one right before each step that fixes its value.
    pub fn now(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Loads running now (keys with a flight).
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Joins the load of `key` running in this process, or leads a new one.
    /// `deps` are the version counters the caller's read depends on (its
    /// tags, the namespace): a load is only joined if it checks all of them,
    /// since a load that ignores a tag cannot tell that the tag was
    /// invalidated while it ran.
    pub fn join<V>(self: &Arc<Self>, key: &str, deps: &[String]) -> Role<V>
    where
        V: Clone + Send + Sync + 'static,
    {
        self.join_as(key, deps, true)
    }

    /// [`join`](Self::join) for a background refresh: a new flight it
    /// leads is not offered to [`follow_load`](Self::follow_load).
    pub fn join_background<V>(self: &Arc<Self>, key: &str, deps: &[String]) -> Role<V>
    where
        V: Clone + Send + Sync + 'static,
    {
        self.join_as(key, deps, false)
    }

    fn join_as<V>(self: &Arc<Self>, key: &str, deps: &[String], foreground: bool) -> Role<V>
    where
        V: Clone + Send + Sync + 'static,
    {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = map.get(key) {
            if let Some(rx) = slot.channel.downcast_ref::<Channel<V>>()
                && deps.iter().all(|d| slot.deps.contains(d))
            {
                return Role::Follower(Waiter(rx.clone()));
            }
            // Same key, other type or fewer checks: an unshared load of our
            // own.
            return Role::Leader(self.private(key));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        if foreground {
            self.foreground.fetch_add(1, Ordering::Relaxed);
        }
        map.insert(
            key.to_owned(),
            Slot {
                id,
                foreground,
                deps: deps.to_vec(),
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

    /// Joins the load of `key` running in this process, if there is one
    /// that `join` would let this caller join; registers nothing.
    pub fn follow<V>(&self, key: &str, deps: &[String]) -> Option<Waiter<V>>
    where
        V: Clone + Send + Sync + 'static,
    {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = map.get(key)?;
        let rx = slot.channel.downcast_ref::<Channel<V>>()?;
        deps.iter()
            .all(|d| slot.deps.contains(d))
            .then(|| Waiter(rx.clone()))
    }

    /// Joins the foreground load of `key` running in this process, if there
    /// is one that depends on exactly the caller's `deps`, before the caller
    /// has read anything; with the caller's moment, taken before it looked.
    /// Exactly, not "at least" as in `join`: a load that checks a tag the
    /// caller does not ask for may be the miss of an entry that lacks the
    /// tag, which is a hit for this caller (it must not wait for that load,
    /// nor take its error). With the same deps, the leader's miss is this
    /// caller's. Cheap when no foreground load runs at all: one atomic load
    /// (no moment is taken then, so hits do not contend on the clock).
    pub fn follow_load<V>(&self, key: &str, deps: &[String]) -> Option<(u64, Waiter<V>)>
    where
        V: Clone + Send + Sync + 'static,
    {
        if self.foreground.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let me = self.now();
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = map.get(key).filter(|s| s.foreground)?;
        let rx = slot.channel.downcast_ref::<Channel<V>>()?;
        let same = deps.iter().all(|d| slot.deps.contains(d))
            && slot.deps.iter().all(|d| deps.contains(d));
        same.then(|| (me, Waiter(rx.clone())))
    }

    /// Foreground loads registered now.
    #[cfg(test)]
    fn foreground_len(&self) -> usize {
        self.foreground.load(Ordering::Relaxed)
    }

    /// Detaches the flight for `key`, if any: callers arriving from now on
    /// start a new load instead of joining one that began before (an
    /// invalidation or a write happened in between). Callers already waiting
    /// still get the old flight's outcome: their reads began before the change.
    pub fn forget(&self, key: &str) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = map.remove(key) {
            self.removed(&slot);
        }
    }

    /// Keeps the foreground count in step with a slot taken out of the map
    /// (called under the map's lock).
    fn removed(&self, slot: &Slot) {
        if slot.foreground {
            self.foreground.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A load nobody can join.
    pub fn private<V>(self: &Arc<Self>, key: &str) -> Leader<V>
    where
        V: Clone + Send + Sync + 'static,
    {
        let (tx, _) = watch::channel(None);
        Leader {
            flights: Arc::clone(self),
            key: key.to_owned(),
            id: None,
            tx,
        }
    }

    /// Detaches the flights that depend on any of these version counters (a
    /// tag or the namespace was invalidated).
    pub fn forget_dependents(&self, counters: &[String]) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, slot| {
            let keep = !slot.deps.iter().any(|d| counters.contains(d));
            if !keep {
                self.removed(slot);
            }
            keep
        });
    }

    fn remove_if(&self, key: &str, id: u64) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(key).is_some_and(|s| s.id == id)
            && let Some(slot) = map.remove(key)
        {
            self.removed(&slot);
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Leader<V> {
    pub fn waiter(&self) -> Waiter<V> {
        Waiter(self.tx.subscribe())
    }

    /// Hands the outcome to the waiters. The flight is unregistered first,
    /// so a caller woken by it that must load again cannot join it again.
    pub fn publish(&self, done: Done<V>) {
        if let Some(id) = self.id {
            self.flights.remove_if(&self.key, id);
        }
        self.tx.send_replace(Some(done));
    }

    /// Hands an outcome to the waiters it is for ([`Done::is_for`]) while
    /// the load goes on (its fill): the flight stays registered, and every
    /// other waiter, and every caller that joins meanwhile, waits for the
    /// final [`publish`](Self::publish).
    pub fn publish_early(&self, mut done: Done<V>) {
        done.early = true;
        self.tx.send_replace(Some(done));
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
    /// The load's final outcome.
    pub async fn wait(self) -> Done<V> {
        self.wait_until(|d| !d.early).await
    }

    /// The first outcome for the caller with moment `me`: an early one if
    /// it is for `me`, else the final one.
    pub async fn wait_as(self, me: u64) -> Done<V> {
        self.wait_until(|d| !d.early || d.is_for(me)).await
    }

    async fn wait_until(mut self, ready: impl Fn(&Done<V>) -> bool) -> Done<V> {
        match self.0.wait_for(|d| d.as_ref().is_some_and(&ready)).await {
            Ok(done) => match &*done {
                Some(d) => d.clone(),
                None => Done::to_all(Err(abandoned())),
            },
            Err(_) => Done::to_all(Err(abandoned())),
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
        let Role::Leader(leader) = flights.join::<u32>("k", &[]) else {
            panic!("first caller must lead");
        };
        let Role::Follower(f) = flights.join::<u32>("k", &[]) else {
            panic!("second caller must follow");
        };
        leader.publish(Done::to_all(Ok(Some(7))));
        assert_eq!(f.wait().await.outcome.ok(), Some(Some(7)));
        // Publishing unregisters the flight: a later caller leads a new one.
        assert_eq!(flights.len(), 0);
        assert!(matches!(flights.join::<u32>("k", &[]), Role::Leader(_)));
        drop(leader);
    }

    #[tokio::test]
    async fn dropped_leader_wakes_followers_with_an_error() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join::<u32>("k", &[]) else {
            panic!("first caller must lead");
        };
        let Role::Follower(f) = flights.join::<u32>("k", &[]) else {
            panic!("second caller must follow");
        };
        drop(leader);
        let err = f.wait().await.outcome.err().map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::LoaderPanicked));
    }

    #[tokio::test]
    async fn other_type_same_key_does_not_join() {
        let flights = Arc::new(Flights::default());
        let _a = flights.join::<u32>("k", &[]);
        assert!(matches!(flights.join::<String>("k", &[]), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_tag_invalidation_detaches_only_its_dependents() {
        let flights = Arc::new(Flights::default());
        let _a = flights.join::<u32>("a", &["t1".to_owned()]);
        let _b = flights.join::<u32>("b", &["t2".to_owned()]);
        let _c = flights.join::<u32>("c", &[]);
        flights.forget_dependents(&["t1".to_owned()]);
        assert_eq!(flights.len(), 2);
        assert!(matches!(flights.join::<u32>("a", &[]), Role::Leader(_)));
        assert!(matches!(flights.join::<u32>("b", &[]), Role::Follower(_)));
    }

    #[tokio::test]
    async fn a_load_that_ignores_a_tag_is_not_joined_by_a_caller_with_it() {
        let flights = Arc::new(Flights::default());
        let (t, u) = ("t".to_owned(), "u".to_owned());
        let _a = flights.join::<u32>("k", &[t.clone(), u.clone()]);
        assert!(matches!(
            flights.join::<u32>("k", std::slice::from_ref(&t)),
            Role::Follower(_)
        ));
        let _b = flights.join::<u32>("j", &[]);
        assert!(matches!(flights.join::<u32>("j", &[t]), Role::Leader(_)));
    }

    #[tokio::test]
    async fn follow_load_joins_foreground_loads_only() {
        let flights = Arc::new(Flights::default());
        assert!(flights.follow_load::<u32>("k", &[]).is_none());
        let Role::Leader(refresh) = flights.join_background::<u32>("r", &[]) else {
            panic!("first caller must lead");
        };
        // A refresh is not offered, and does not count as a foreground load.
        assert_eq!(flights.foreground_len(), 0);
        assert!(flights.follow_load::<u32>("r", &[]).is_none());
        // A caller that read first may still join it (as before).
        assert!(matches!(flights.join::<u32>("r", &[]), Role::Follower(_)));
        let Role::Leader(load) = flights.join::<u32>("k", &["t".to_owned()]) else {
            panic!("first caller must lead");
        };
        assert_eq!(flights.foreground_len(), 1);
        let Some((me, waiter)) = flights.follow_load::<u32>("k", &["t".to_owned()]) else {
            panic!("a foreground load is joined before any read");
        };
        // Other type, a tag the load does not check, or fewer tags than it
        // checks (the leader's miss may be a hit for this caller): not joined.
        assert!(
            flights
                .follow_load::<String>("k", &["t".to_owned()])
                .is_none()
        );
        assert!(flights.follow_load::<u32>("k", &["u".to_owned()]).is_none());
        assert!(flights.follow_load::<u32>("k", &[]).is_none());
        // Its moment was taken before it joined: a load beginning now is
        // current for it, a fill proven before it is not.
        let began = flights.now();
        load.publish(Done::before(Ok(Some(3)), began));
        let done = waiter.wait().await;
        assert!(done.is_for(me));
        assert!(!Done::<u32>::before(Ok(Some(3)), me).is_for(me));
        assert_eq!(flights.foreground_len(), 0);
        drop(refresh);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn the_foreground_count_follows_every_way_out_of_the_map() {
        let flights = Arc::new(Flights::default());
        let a = flights.join::<u32>("a", &[]);
        let _b = flights.join::<u32>("b", &["t".to_owned()]);
        let c = flights.join::<u32>("c", &[]);
        let _r = flights.join_background::<u32>("r", &["t".to_owned()]);
        assert_eq!(flights.foreground_len(), 3);
        flights.forget("a");
        flights.forget("a");
        assert_eq!(flights.foreground_len(), 2);
        flights.forget_dependents(&["t".to_owned()]);
        assert_eq!(flights.foreground_len(), 1);
        assert_eq!(flights.len(), 1);
        drop(c);
        assert_eq!(flights.foreground_len(), 0);
        assert!(flights.follow_load::<u32>("c", &[]).is_none());
        // A detached leader's drop leaves the new flight of its key alone.
        drop(a);
        let _a2 = flights.join::<u32>("a", &[]);
        assert_eq!(flights.foreground_len(), 1);
    }

    #[test]
    fn owner_only_outcomes_reach_their_owner_alone() {
        let d = Done::<u32>::owner_only(Ok(Some(1)), 5);
        assert!(d.is_for(5));
        assert!(!d.is_for(4) && !d.is_for(6));
        let d = Done::<u32>::before(Ok(Some(1)), 5);
        assert!(d.is_for(4) && !d.is_for(5));
    }

    #[test]
    fn moments_only_grow() {
        let flights = Flights::default();
        let a = flights.now();
        assert!(flights.now() > a);
    }

    #[tokio::test]
    async fn catch_unwind_reports_the_message() {
        let r = CatchUnwind::new(async { panic!("boom") as u32 }).await;
        assert_eq!(r.err().as_deref(), Some("boom"));
    }
}
