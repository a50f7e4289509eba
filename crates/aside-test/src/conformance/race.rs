//! The race checks: fills, invalidations and reads of the same keys from many
//! tasks at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use aside::backend::Backend;

use super::{Ctx, clause, ensure, join};

const LONG: Duration = Duration::from_secs(60);
/// Keys the tasks share.
const KEYS: usize = 4;

/// `TASKS` tasks, `ROUNDS` rounds each (1,000 in all), over `KEYS` shared
/// keys: take a token, invalidate, fill with the token. Every fill must be
/// refused: its invalidation completed before it began, whatever the other
/// tasks did meanwhile (they re-create the marker, fill their own values,
/// invalidate again). A backend that keeps markers across invalidations, or
/// re-creates a removed token with its old value, lets fills through.
pub(super) async fn fill_racing_invalidate_is_refused<B: Backend>(c: &Ctx<B>) {
    const TASKS: usize = 8;
    const ROUNDS: usize = 125;
    let mut handles = Vec::with_capacity(TASKS);
    for task in 0..TASKS {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            let mut jitter = Jitter::new();
            for round in 0..ROUNDS {
                let key = c.key(&format!("k{}", (task + round) % KEYS));
                let keys = std::slice::from_ref(&key);
                let (_, token) = c.acquire(&key, &[], LONG).await;
                jitter.pause().await;
                c.invalidate(keys).await;
                jitter.pause().await;
                let mine = format!("stale:{task}:{round}").into_bytes();
                let stored = c.fill(&key, &mine, LONG, &token, &[]).await;
                ensure!(
                    c,
                    !stored,
                    clause::RACE,
                    "task {task} round {round}: acquire; invalidate (completed); fill \
                     with the token: accepted, with {} tasks racing on {KEYS} keys",
                    TASKS
                );
                let got = c.get(&key).await;
                ensure!(
                    c,
                    got.as_deref() != Some(&mine[..]),
                    clause::RACE,
                    "task {task} round {round}: a refused fill's value {:?} was stored",
                    String::from_utf8_lossy(&mine)
                );
                // Now and then, a fill that should succeed, to give the other
                // tasks entries to race against.
                if round % 4 == 0 {
                    let (_, token) = c.acquire(&key, &[], LONG).await;
                    let _ = c.fill(&key, b"fresh", LONG, &token, &[]).await;
                }
            }
        }));
    }
    for h in handles {
        join(c.check, h).await;
    }
}

/// Writers, loaders and readers on `KEYS` keys, each with a "source of
/// truth" counter. A writer bumps the truth, then invalidates the key, then
/// publishes the truth it wrote as the key's *floor*. A loader takes a token,
/// then reads the truth (as a load reads its database after `acquire`),
/// then fills it. A reader reads the floor, then the key: any value it finds
/// must be at least that floor. A value below it was loaded before an
/// invalidation that had completed before the read began; a backend whose
/// conditional fill is not atomic with `invalidate` lets one through.
///
/// Writers and readers run for as long as the loaders do; every task yields
/// between operations, so that the tasks interleave even on a backend whose
/// operations never wait (in process) and on a single-threaded runtime.
pub(super) async fn no_stale_read_after_invalidate<B: Backend>(c: &Ctx<B>) {
    const WRITERS: usize = 2;
    const LOADERS: usize = 4;
    const READERS: usize = 2;
    const ROUNDS: usize = 250;

    struct Row {
        truth: AtomicU64,
        floor: AtomicU64,
    }
    let rows: Arc<Vec<Row>> = Arc::new(
        (0..KEYS)
            .map(|_| Row {
                truth: AtomicU64::new(0),
                floor: AtomicU64::new(0),
            })
            .collect(),
    );
    let loaders_left = Arc::new(AtomicUsize::new(LOADERS));
    let decode = |c: &Ctx<B>, b: &[u8]| -> u64 {
        match <[u8; 8]>::try_from(b) {
            Ok(a) => u64::from_be_bytes(a),
            Err(_) => c.fail(
                clause::GET,
                format_args!("a key filled only with 8-byte values returned {b:?}"),
            ),
        }
    };

    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let (c, rows, left) = (c.clone(), Arc::clone(&rows), Arc::clone(&loaders_left));
        handles.push(tokio::spawn(async move {
            let mut jitter = Jitter::new();
            let mut round = 0;
            while left.load(Ordering::SeqCst) > 0 {
                let i = (w + round) % KEYS;
                round += 1;
                let v = rows[i].truth.fetch_add(1, Ordering::SeqCst) + 1;
                jitter.pause().await;
                c.invalidate(&[c.key(&format!("k{i}"))]).await;
                rows[i].floor.fetch_max(v, Ordering::SeqCst);
                jitter.pause().await;
            }
        }));
    }
    for l in 0..LOADERS {
        let (c, rows, left) = (c.clone(), Arc::clone(&rows), Arc::clone(&loaders_left));
        handles.push(tokio::spawn(async move {
            let mut jitter = Jitter::new();
            for round in 0..ROUNDS {
                let i = (l + round) % KEYS;
                let key = c.key(&format!("k{i}"));
                let (_, token) = c.acquire(&key, &[], LONG).await;
                jitter.pause().await;
                let v = rows[i].truth.load(Ordering::SeqCst);
                jitter.pause().await;
                let _ = c.fill(&key, &v.to_be_bytes(), LONG, &token, &[]).await;
                jitter.pause().await;
            }
            left.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    for r in 0..READERS {
        let (c, rows, left) = (c.clone(), Arc::clone(&rows), Arc::clone(&loaders_left));
        handles.push(tokio::spawn(async move {
            let mut jitter = Jitter::new();
            let mut round = 0;
            while left.load(Ordering::SeqCst) > 0 {
                let i = (r + round) % KEYS;
                round += 1;
                jitter.pause().await;
                let floor = rows[i].floor.load(Ordering::SeqCst);
                if let Some(b) = c.get(&c.key(&format!("k{i}"))).await {
                    let v = decode(&c, &b);
                    ensure!(
                        c,
                        v >= floor,
                        clause::NO_STALE,
                        "key k{i}: read the value {v}, loaded before the invalidation that \
                         published {floor} completed (and that completed before the read began)"
                    );
                }
            }
        }));
    }
    for h in handles {
        join(c.check, h).await;
    }

    // Quiet now: what is cached is the truth, or nothing.
    for (i, row) in rows.iter().enumerate() {
        let truth = row.truth.load(Ordering::SeqCst);
        if let Some(b) = c.get(&c.key(&format!("k{i}"))).await {
            let v = decode(c, &b);
            ensure!(
                c,
                v == truth,
                clause::NO_STALE,
                "key k{i}: after every writer finished (truth {truth}), get returned {v}"
            );
        }
    }
}

/// Yields to the other tasks 0 to 3 times at each step, pseudo-randomly, so
/// that they interleave differently at every step: with plain yields, tasks
/// on a single-threaded runtime (or on a backend whose operations never
/// wait) advance in lockstep and may never meet in the window under test.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        Jitter((SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ nanos) | 1)
    }

    async fn pause(&mut self) {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        for _ in 0..self.0 % 4 {
            tokio::task::yield_now().await;
        }
    }
}
