//! Hot-key read coalescing: concurrent reads of one key in this process
//! share one backend read, and each caller is answered only by a read sent
//! after it began.
//!
//! # Why
//! On a remote backend every hit is a round trip. When many tasks of a
//! process read one hot key, their `GET`s queue one behind the other on the
//! connection and in the server (64 tasks on one key: 64 round trips' worth
//! of queueing per read). Sharing the read turns that into one `GET` per
//! round trip for all of them, and takes the load off the server's hot
//! shard.
//!
//! # Why this keeps the consistency promise
//! Joining a read that is already in flight would not: it may have been
//! sent before an invalidation was applied, and a caller that began after
//! the invalidation would get what it removed. So a caller that finds a
//! read of its key in flight does not take that read's answer. It queues
//! for the *next* read, which is sent only after the one in flight is
//! answered, and so after the caller began: every caller's answer comes
//! from a read the backend executed after the caller started, exactly as
//! if it had sent its own.
//!
//! # How
//! A key with a read in flight has a queue: the callers waiting for the
//! next read. The caller that sent the read (the driver) answers the
//! callers riding it, then hands the queue, as a turn, to its first live
//! member, which sends the next read for all of them and drives in turn.
//! A turn dropped before its read is answered (a cancelled call, or a turn
//! lost on its way to a caller that went away) tells its riders and the
//! queue to start over, so nobody waits for a read that will never come.
//! The lock is a plain mutex held for a few map operations, never across
//! an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::Cache;
use crate::backend::Stored;
use crate::error::Error;
use crate::stats::bump;

/// What a caller may be told while it waits.
enum Msg<R> {
    /// The answer of a read sent after this caller began.
    Answer(R),
    /// Send the next read, for the callers the turn carries too.
    Drive(Turn<R>),
    /// The key's driver went away: start over.
    Retry,
}

type Waiter<R> = oneshot::Sender<Msg<R>>;

/// Shared reads, by key: the callers queued for the next read of each key
/// whose read is in flight.
pub(crate) struct Coalescer<R> {
    keys: Mutex<HashMap<String, Vec<Waiter<R>>>>,
}

impl<R> Default for Coalescer<R> {
    fn default() -> Self {
        Coalescer {
            keys: Mutex::new(HashMap::new()),
        }
    }
}

/// How a caller's answer came.
pub(crate) enum Answer<R> {
    /// From a read this caller sent (for others too, perhaps).
    Own(R),
    /// From a read another caller sent after this one began.
    Shared(R),
}

impl<R> Coalescer<R> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Waiter<R>>>> {
        // Every critical section is a few map operations that cannot leave
        // the map half-changed: a poisoned lock is still consistent.
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<R: Clone> Coalescer<R> {
    /// Reads `key` with `read`, sharing the read with concurrent callers.
    pub async fn read<F, Fut>(self: &Arc<Self>, key: &str, read: F) -> Answer<R>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = R>,
    {
        loop {
            let waiting = {
                let mut keys = self.lock();
                match keys.get_mut(key) {
                    None => {
                        keys.insert(key.to_owned(), Vec::new());
                        None
                    }
                    Some(next) => {
                        let (tx, rx) = oneshot::channel();
                        next.push(tx);
                        Some(rx)
                    }
                }
            };
            let turn = match waiting {
                None => Turn {
                    coalescer: Arc::clone(self),
                    key: key.to_owned(),
                    riders: Vec::new(),
                    done: false,
                },
                Some(rx) => match rx.await {
                    Ok(Msg::Answer(r)) => return Answer::Shared(r),
                    Ok(Msg::Drive(turn)) => turn,
                    // A waiter is never dropped unanswered while its turn
                    // is alive; starting over is safe in any case.
                    Ok(Msg::Retry) | Err(_) => continue,
                },
            };
            return Answer::Own(turn.drive(&read).await);
        }
    }

    /// Passes the key's queue to its first live member, which sends the
    /// next read; with no queue, the key has no read in flight any more.
    fn hand_over(self: &Arc<Self>, key: String) {
        loop {
            let queue = {
                let mut keys = self.lock();
                let Some(next) = keys.get_mut(&key) else {
                    return;
                };
                if next.is_empty() {
                    keys.remove(&key);
                    return;
                }
                // The entry stays: the next read is as good as in flight,
                // and callers arriving now queue behind it.
                std::mem::take(next)
            };
            let mut turn = Turn {
                coalescer: Arc::clone(self),
                key: key.clone(),
                riders: queue,
                done: false,
            };
            while !turn.riders.is_empty() {
                let first = turn.riders.remove(0);
                match first.send(Msg::Drive(turn)) {
                    Ok(()) => return,
                    // That caller went away: offer the turn to the next.
                    Err(Msg::Drive(back)) => turn = back,
                    Err(_) => return,
                }
            }
            // Everyone in that queue went away; more may have queued since.
            turn.done = true;
        }
    }
}

/// The duty of sending a key's next read, for its riders too. Dropped
/// before the read is answered (the driver's call was cancelled, or the
/// turn was lost on its way to a caller that went away), it tells the
/// riders and the queue to start over rather than wait forever.
struct Turn<R> {
    coalescer: Arc<Coalescer<R>>,
    key: String,
    riders: Vec<Waiter<R>>,
    done: bool,
}

impl<R: Clone> Turn<R> {
    async fn drive<F, Fut>(mut self, read: &F) -> R
    where
        F: Fn() -> Fut,
        Fut: Future<Output = R>,
    {
        let answer = read().await;
        for rider in std::mem::take(&mut self.riders) {
            // A rider that went away needs nothing.
            let _ = rider.send(Msg::Answer(answer.clone()));
        }
        self.done = true;
        let key = std::mem::take(&mut self.key);
        self.coalescer.hand_over(key);
        answer
    }
}

impl<R> Drop for Turn<R> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let queued = self.coalescer.lock().remove(&self.key).unwrap_or_default();
        for waiter in std::mem::take(&mut self.riders).into_iter().chain(queued) {
            let _ = waiter.send(Msg::Retry);
        }
    }
}

/// What a read of an entry alone, and of an entry with version tokens,
/// answer.
type Plain = Result<Option<Stored>, Error>;
type Versioned = Result<(Option<Stored>, Vec<u64>), Error>;

/// A cache's shared reads: of entries alone, and of entries with the
/// version tokens they depend on (keyed by the entry and the token keys).
#[derive(Default)]
pub(super) struct Reads {
    plain: Arc<Coalescer<Plain>>,
    versioned: Arc<Coalescer<Versioned>>,
}

impl Cache {
    fn shares_reads(&self) -> bool {
        self.inner.s.coalesce_reads && self.inner.caps.remote
    }

    /// The remote backend's `get` of `pk`, shared with concurrent callers.
    pub(super) async fn read_remote(&self, pk: &str) -> Plain {
        if !self.shares_reads() {
            return self.guarded(self.inner.backend.get(pk)).await;
        }
        let read = || self.guarded(self.inner.backend.get(pk));
        match self.inner.reads.plain.read(pk, read).await {
            Answer::Own(r) => r,
            Answer::Shared(r) => {
                bump(&self.inner.stats.shared_reads);
                r
            }
        }
    }

    /// The backend's `get_with_versions`, shared with concurrent callers
    /// asking for the same entry and tokens.
    pub(super) async fn read_remote_with_versions(
        &self,
        pk: &str,
        versions: &[String],
    ) -> Versioned {
        if !self.shares_reads() {
            return self
                .guarded(self.inner.backend.get_with_versions(pk, versions))
                .await;
        }
        // Keys never contain NUL... but they may: a length prefix keeps two
        // different (entry, tokens) pairs from sharing a name.
        let mut name = format!("{}:{pk}", pk.len());
        for v in versions {
            name.push_str(&format!("|{}:{v}", v.len()));
        }
        let read = || self.guarded(self.inner.backend.get_with_versions(pk, versions));
        match self.inner.reads.versioned.read(&name, read).await {
            Answer::Own(r) => r,
            Answer::Shared(r) => {
                bump(&self.inner.stats.shared_reads);
                r
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::time::Duration;

    use super::*;

    /// A backend stand-in: each read returns the value current when the
    /// read was *sent*, and takes 10 ms.
    #[derive(Default)]
    struct Slow {
        value: AtomicU64,
        reads: AtomicU64,
    }

    impl Slow {
        async fn read(&self) -> u64 {
            self.reads.fetch_add(1, SeqCst);
            let v = self.value.load(SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            v
        }
    }

    fn value(a: Answer<u64>) -> u64 {
        match a {
            Answer::Own(v) | Answer::Shared(v) => v,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reads_share_one_read_and_late_callers_wait_for_the_next() {
        let c = Arc::new(Coalescer::<u64>::default());
        let src = Arc::new(Slow::default());
        let first = {
            let (c, src) = (Arc::clone(&c), Arc::clone(&src));
            tokio::spawn(async move { value(c.read("k", || src.read()).await) })
        };
        tokio::task::yield_now().await;
        assert_eq!(src.reads.load(SeqCst), 1);
        // A write lands while the first read is in flight; everyone who
        // starts now must see it.
        src.value.store(1, SeqCst);
        let late: Vec<_> = (0..50)
            .map(|_| {
                let (c, src) = (Arc::clone(&c), Arc::clone(&src));
                tokio::spawn(async move { value(c.read("k", || src.read()).await) })
            })
            .collect();
        assert_eq!(first.await.unwrap(), 0);
        for t in late {
            assert_eq!(
                t.await.unwrap(),
                1,
                "a late caller got the read sent before it began"
            );
        }
        // One read for the first caller, one for the 50 that queued.
        assert_eq!(src.reads.load(SeqCst), 2);
        assert!(c.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_driver_does_not_strand_its_riders() {
        let c = Arc::new(Coalescer::<u64>::default());
        let src = Arc::new(Slow::default());
        let driver = {
            let (c, src) = (Arc::clone(&c), Arc::clone(&src));
            tokio::spawn(async move { value(c.read("k", || src.read()).await) })
        };
        tokio::task::yield_now().await;
        let queued: Vec<_> = (0..5)
            .map(|_| {
                let (c, src) = (Arc::clone(&c), Arc::clone(&src));
                tokio::spawn(async move { value(c.read("k", || src.read()).await) })
            })
            .collect();
        tokio::task::yield_now().await;
        driver.abort();
        for t in queued {
            assert_eq!(t.await.unwrap(), 0);
        }
        assert!(c.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_caller_that_went_away_passes_the_turn_on() {
        let c = Arc::new(Coalescer::<u64>::default());
        let src = Arc::new(Slow::default());
        let spawn = || {
            let (c, src) = (Arc::clone(&c), Arc::clone(&src));
            tokio::spawn(async move { value(c.read("k", || src.read()).await) })
        };
        let driver = spawn();
        tokio::task::yield_now().await;
        // The first in the queue would be handed the next read: it is gone.
        let gone = spawn();
        tokio::task::yield_now().await;
        let stays = spawn();
        tokio::task::yield_now().await;
        gone.abort();
        src.value.store(7, SeqCst);
        assert_eq!(driver.await.unwrap(), 0);
        assert_eq!(stays.await.unwrap(), 7);
        assert_eq!(src.reads.load(SeqCst), 2);
        assert!(c.lock().is_empty());
    }
}
