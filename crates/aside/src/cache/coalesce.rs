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
//! read of its key in flight does not take that read's answer. It queues,
//! and the queue is read by a read sent after the caller queued: every
//! caller's answer comes from a read the backend executed after the caller
//! started, exactly as if it had sent its own.
//!
//! # How
//! A caller alone on its key reads inline (no task, no channel): the hit
//! path of a quiet key pays two short map operations. A caller that finds
//! the key busy queues and, if no reader task serves the key, spawns one.
//! The reader takes the whole queue, sends one read for it, answers every
//! caller in it, and goes on while callers keep queueing; it ends when it
//! finds the queue empty. So at most two reads of a key are in flight (the
//! inline one and the reader's), and no caller's answer depends on another
//! caller's future being polled: a caller may be parked, cancelled or
//! slow without holding anyone up (as loads run in tasks of their own, for
//! the same reason). A reader that dies (a panicking backend, a runtime
//! shutting down) drops its callers' channels, and they read for
//! themselves. The lock is a plain mutex held for a few map operations,
//! never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::Instrument as _;

/// A key with reads in flight.
struct Entry<R> {
    /// Callers waiting for the reader's next read.
    queued: Vec<oneshot::Sender<R>>,
    /// A reader task serves the queue.
    reader: bool,
    /// A caller reads the key inline (its answer is its own).
    inline: bool,
}

/// Shared reads, by key.
pub(super) struct Coalescer<R> {
    keys: Mutex<HashMap<String, Entry<R>>>,
}

impl<R> Default for Coalescer<R> {
    fn default() -> Self {
        Coalescer {
            keys: Mutex::new(HashMap::new()),
        }
    }
}

/// How a caller's answer came.
pub(super) enum Answer<R> {
    /// From a read this caller sent.
    Own(R),
    /// From a read the key's reader sent after this caller queued.
    Shared(R),
    /// The reader did not answer within the caller's limit.
    TimedOut,
}

impl<R> Coalescer<R> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<R>>> {
        // Every critical section is a few map operations that cannot leave
        // the map half-changed: a poisoned lock is still consistent.
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets `key` if nothing reads it any more.
    fn forget_if_idle(map: &mut HashMap<String, Entry<R>>, key: &str) {
        if map
            .get(key)
            .is_some_and(|e| !e.reader && !e.inline && e.queued.is_empty())
        {
            map.remove(key);
        }
    }
}

impl<R: Clone + Send + 'static> Coalescer<R> {
    /// Reads `key`: inline with `inline()` when nobody else reads it,
    /// otherwise from a read the key's reader task (spawned, in its own
    /// span, with `reader()`'s read function if none runs) sends after this
    /// caller queued. The reader's reads are bounded by their own timeout,
    /// so a queued caller waits at most for the read in flight and then
    /// its own; `limit` (above that) only guards against a reader that is
    /// never polled.
    pub async fn read<I, G, Fut>(
        self: &Arc<Self>,
        key: &str,
        inline: impl FnOnce() -> I,
        reader: impl FnOnce() -> (G, tracing::Span),
        limit: Duration,
    ) -> Answer<R>
    where
        I: Future<Output = R>,
        G: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let (waiting, spawn) = {
            let mut keys = self.lock();
            match keys.get_mut(key) {
                None => {
                    keys.insert(
                        key.to_owned(),
                        Entry {
                            queued: Vec::new(),
                            reader: false,
                            inline: true,
                        },
                    );
                    (None, false)
                }
                Some(entry) => {
                    let (tx, rx) = oneshot::channel();
                    entry.queued.push(tx);
                    let spawn = !entry.reader;
                    entry.reader = true;
                    (Some(rx), spawn)
                }
            }
        };
        let Some(rx) = waiting else {
            let _inline = Inline {
                coalescer: self,
                key,
            };
            return Answer::Own(inline().await);
        };
        if spawn {
            // The guard exists before the task: a task dropped before it
            // ever ran (its runtime shut down) still frees the key.
            let serving = Serving {
                coalescer: Arc::clone(self),
                key: key.to_owned(),
                done: false,
            };
            let (read, span) = reader();
            // Not the caller's span: the reader outlives this caller and
            // serves others.
            tokio::spawn(serving.serve(read).instrument(span));
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(answer)) => Answer::Shared(answer),
            // The reader died with this caller queued: read alone.
            Ok(Err(_)) => Answer::Own(inline().await),
            Err(_) => Answer::TimedOut,
        }
    }
}

/// A caller reading inline: when it ends (answered or cancelled), the key
/// is forgotten unless a reader or a queue remains.
struct Inline<'a, R> {
    coalescer: &'a Coalescer<R>,
    key: &'a str,
}

impl<R> Drop for Inline<'_, R> {
    fn drop(&mut self) {
        let mut keys = self.coalescer.lock();
        if let Some(entry) = keys.get_mut(self.key) {
            entry.inline = false;
        }
        Coalescer::forget_if_idle(&mut keys, self.key);
    }
}

/// A key's reader task. If it ends without finishing (a panicking read,
/// a runtime shutting down, even before its first poll), its queue's
/// channels are dropped (those callers read alone) and the key is free for
/// a new reader.
struct Serving<R> {
    coalescer: Arc<Coalescer<R>>,
    key: String,
    done: bool,
}

impl<R: Clone> Serving<R> {
    /// One read per queue taken, until the queue is empty.
    async fn serve<G, Fut>(mut self, read: G)
    where
        G: Fn() -> Fut,
        Fut: Future<Output = R>,
    {
        loop {
            let callers = {
                let mut keys = self.coalescer.lock();
                let Some(entry) = keys.get_mut(&self.key) else {
                    self.done = true;
                    return;
                };
                if entry.queued.is_empty() {
                    entry.reader = false;
                    Coalescer::forget_if_idle(&mut keys, &self.key);
                    self.done = true;
                    return;
                }
                // Sent after every caller taken here queued.
                std::mem::take(&mut entry.queued)
            };
            let answer = read().await;
            for caller in callers {
                // A caller that went away needs nothing.
                let _ = caller.send(answer.clone());
            }
        }
    }
}

impl<R> Drop for Serving<R> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut keys = self.coalescer.lock();
        if let Some(entry) = keys.get_mut(&self.key) {
            entry.reader = false;
            entry.queued.clear();
        }
        Coalescer::forget_if_idle(&mut keys, &self.key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

    use super::*;

    /// A backend stand-in: each read returns the value current when the
    /// read was *sent*, and takes 10 ms (or panics when told to).
    #[derive(Default)]
    struct Slow {
        value: AtomicU64,
        reads: AtomicU64,
        panic: std::sync::atomic::AtomicBool,
    }

    impl Slow {
        async fn read(&self) -> u64 {
            self.reads.fetch_add(1, SeqCst);
            let v = self.value.load(SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(!self.panic.load(SeqCst), "the backend panicked");
            v
        }
    }

    fn value(a: Answer<u64>) -> u64 {
        match a {
            Answer::Own(v) | Answer::Shared(v) => v,
            Answer::TimedOut => u64::MAX,
        }
    }

    /// Reads "k" from `src` through `c`, in a task.
    fn spawn_read(c: &Arc<Coalescer<u64>>, src: &Arc<Slow>) -> tokio::task::JoinHandle<u64> {
        let read = spawn_read_within(c, src, Duration::from_secs(1));
        tokio::spawn(async move { value(read.await.unwrap()) })
    }

    /// Reads "k" from `src` through `c` in a task, waiting at most `limit`.
    fn spawn_read_within(
        c: &Arc<Coalescer<u64>>,
        src: &Arc<Slow>,
        limit: Duration,
    ) -> tokio::task::JoinHandle<Answer<u64>> {
        let (c, src) = (Arc::clone(c), Arc::clone(src));
        tokio::spawn(async move {
            let inline = || src.read();
            let reader = || {
                let src = Arc::clone(&src);
                let read = move || {
                    let src = Arc::clone(&src);
                    async move { src.read().await }
                };
                (read, tracing::Span::none())
            };
            c.read("k", inline, reader, limit).await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reads_share_one_read_and_late_callers_wait_for_the_next() {
        let c = Arc::new(Coalescer::<u64>::default());
        let src = Arc::new(Slow::default());
        let first = spawn_read(&c, &src);
        tokio::task::yield_now().await;
        assert_eq!(src.reads.load(SeqCst), 1);
        // A write lands while the first read is in flight; everyone who
        // starts now must see it.
        src.value.store(1, SeqCst);
        let late: Vec<_> = (0..50).map(|_| spawn_read(&c, &src)).collect();
        assert_eq!(first.await.unwrap(), 0);
        for t in late {
            assert_eq!(
                t.await.unwrap(),
                1,
                "a late caller got the read sent before it began"
            );
        }
        // One read for the first caller, one or two for the 50 that queued
        // (the reader's first read may go before all of them queued).
        let reads = src.reads.load(SeqCst);
        assert!((2..=3).contains(&reads), "{reads} reads");
        tokio::task::yield_now().await;
        assert!(c.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_inline_reader_holds_nobody_up() {
        let c = Arc::new(Coalescer::<u64>::default());
        let src = Arc::new(Slow::default());
        let first = spawn_read(&c, &src);
        tokio::task::yield_now().await;
        let queued: Vec<_> = (0..5).map(|_| spawn_read(&c, &src)).collect();
        tokio::task::yield_now().await;
        first.abort();
        src.value.store(3, SeqCst);
        for t in queued {
            // Served by the key's reader, whose read went after they queued
            // (and, here, before the value changed).
            assert_eq!(t.await.unwrap(), 0);
        }
        tokio::task::yield_now().await;
        assert!(c.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn callers_of_a_reader_that_panics_read_for_themselves() {
        let c = Arc::new(Coalescer::<u64>::default());
        let src = Arc::new(Slow::default());
        let first = spawn_read(&c, &src);
        tokio::task::yield_now().await;
        let queued = spawn_read(&c, &src);
        tokio::task::yield_now().await;
        // The reader's read (and the inline one) panic; the queued caller's
        // own read goes through.
        src.panic.store(true, SeqCst);
        assert!(first.await.is_err());
        src.panic.store(false, SeqCst);
        assert_eq!(queued.await.unwrap(), 0);
        assert_eq!(
            src.reads.load(SeqCst),
            3,
            "inline, reader, the caller's own"
        );
        tokio::task::yield_now().await;
        assert!(c.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_caller_waits_at_most_its_limit() {
        let c = Arc::new(Coalescer::<u64>::default());
        let src = Arc::new(Slow::default());
        let first = spawn_read(&c, &src);
        tokio::task::yield_now().await;
        let short = spawn_read_within(&c, &src, Duration::from_millis(1));
        assert!(
            matches!(short.await.unwrap(), Answer::TimedOut),
            "a 1 ms limit on a 10 ms read"
        );
        assert_eq!(first.await.unwrap(), 0);
    }
}
