//! Hot-key read coalescing (`coalesce_reads`) under adverse callers:
//! parked and cancelled callers, hedged reads, hung and failing backends,
//! reader tasks dropped with their runtime, tracing spans. Each test is the
//! regression test of a defect found in a review of the feature (its
//! comment, "FINDING n", describes the defect as it was; its name says what
//! is checked now), and runs the same scenario with coalescing off as the
//! control, which must pass too.
//!
//! The backend is the memory backend seen as remote (`FaultyBackend`), with
//! a read latency, on a paused clock: every wait is virtual and the
//! outcomes are deterministic. The `timeout`s below detect a hang (a call
//! that never finishes); they do not measure speed.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use aside::backend::MemoryBackend;
use aside::{Cache, CacheBuilder, ErrorKind};
use aside_test::{FaultControl, FaultyBackend, Op};
use tokio::time::{sleep, timeout};

const READ_LATENCY: Duration = Duration::from_millis(10);
/// Far longer than any read here: a call not done by then never will be.
const HANG: Duration = Duration::from_secs(60);

/// A cache over a remote-like faulty memory backend, with `coalesce_reads`
/// as given and what `tune` sets.
fn faulty(
    coalesce: bool,
    tune: impl FnOnce(CacheBuilder) -> CacheBuilder,
) -> (Cache, FaultControl) {
    let backend = FaultyBackend::new(MemoryBackend::new()).as_remote();
    let faults = backend.control();
    let builder = Cache::builder()
        .namespace("review")
        .backend(backend)
        .coalesce_reads(coalesce);
    (tune(builder).build().unwrap(), faults)
}

async fn cache(coalesce: bool) -> (Cache, FaultControl) {
    let (cache, faults) = faulty(coalesce, |b| b.backend_timeout(Duration::from_secs(1)));
    cache.set("hot", 1u32).await.unwrap();
    faults.latency(Op::Read, READ_LATENCY);
    (cache, faults)
}

/// Polls `fut` once, as a `select!` branch or a buffered stream does, and
/// leaves it pending (not dropped).
async fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) {
    let mut fut = Some(fut);
    std::future::poll_fn(|cx| {
        if let Some(f) = fut.take() {
            assert!(f.poll(cx).is_pending(), "the read answered at once");
        }
        Poll::Ready(())
    })
    .await;
}

/// FINDING 1 (futurelock, driver variant): a `get` future polled once (it
/// sent the key's read) and then parked without being dropped stalls every
/// other reader of that key in the process, in every task, for as long as
/// it stays parked. The shared read runs inside the parked caller's future
/// (not in a task of its own, unlike the load single-flight in `flight.rs`),
/// so nobody drives it, and `backend_timeout` lives inside it too.
#[tokio::test(start_paused = true)]
async fn a_parked_driver_does_not_stall_other_tasks_reading_its_key() {
    for coalesce in [false, true] {
        let (cache, _faults) = cache(coalesce).await;
        let mut parked = pin!(cache.get::<u32>("hot"));
        poll_once(parked.as_mut()).await;
        let other = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<u32>("hot").await })
        };
        let answered = timeout(HANG, other).await;
        assert!(
            answered.is_ok(),
            "coalesce={coalesce}: another task's read of the key never finished \
             while one parked `get` future held the key's read"
        );
        // `parked` (pinned on this stack) lives to here: parked, not dropped.
    }
}

/// FINDING 1 (futurelock, hand-over variant): worse, the parked future
/// need not have sent anything. It only queued behind a read in flight;
/// when that read answers, the turn to send the next one is handed to it
/// (the first live queued caller), and every caller queued behind it waits
/// for a read that nobody sends.
#[tokio::test(start_paused = true)]
async fn a_parked_queued_caller_handed_the_turn_does_not_stall_the_key() {
    for coalesce in [false, true] {
        let (cache, _faults) = cache(coalesce).await;
        let driver = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<u32>("hot").await })
        };
        tokio::task::yield_now().await;
        // Queued behind the driver's read, then parked.
        let mut parked = pin!(cache.get::<u32>("hot"));
        poll_once(parked.as_mut()).await;
        let others: Vec<_> = (0..3)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get::<u32>("hot").await })
            })
            .collect();
        assert_eq!(driver.await.unwrap().unwrap(), Some(1));
        for other in others {
            let answered = timeout(HANG, other).await;
            assert!(
                answered.is_ok(),
                "coalesce={coalesce}: a read queued behind a parked caller never finished"
            );
        }
        // `parked` (pinned on this stack) lives to here: parked, not dropped.
    }
}

/// FINDING 1 (futurelock, one task): the hedging pattern. A task starts a
/// read, and if it is slow, issues a second one from a `select!` arm while
/// the first stays pinned (not dropped, not polled). The second queues
/// behind the first's read, which only the first's own future can finish:
/// the task deadlocks on itself, and with it every reader of the key.
#[tokio::test(start_paused = true)]
async fn a_hedged_read_in_the_same_task_does_not_deadlock() {
    for coalesce in [false, true] {
        let (cache, _faults) = cache(coalesce).await;
        let mut first = pin!(cache.get::<u32>("hot"));
        let hedged = tokio::select! {
            v = &mut first => Ok(v),
            () = sleep(READ_LATENCY / 2) => timeout(HANG, cache.get::<u32>("hot")).await,
        };
        assert!(
            hedged.is_ok(),
            "coalesce={coalesce}: the hedged read never finished"
        );
        assert_eq!(hedged.unwrap().unwrap(), Some(1));
    }
}

/// FINDING 2 (timeout bound doubled): `backend_timeout` is "the time limit of
/// one backend operation; past it ... `get_or_load` goes on without the
/// cache". A caller that arrives while a read of its key is in flight now
/// waits for that read's timeout *and* then for the next read's: against a
/// hung backend, every hot-key caller but the first waits up to twice the
/// limit before it can go on. (Paused clock: the durations are virtual and
/// exact.)
#[tokio::test(start_paused = true)]
async fn a_hung_backend_holds_a_queued_caller_one_timeout_at_most() {
    const TIMEOUT: Duration = Duration::from_millis(100);
    for coalesce in [false, true] {
        let (cache, faults) = faulty(coalesce, |b| {
            b.backend_timeout(TIMEOUT)
                // Keep the breaker out of it.
                .backend_failure_threshold(1000)
        });
        faults.hang(Op::Read);
        let first = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<u32>("hot").await })
        };
        sleep(Duration::from_millis(1)).await;
        let began = tokio::time::Instant::now();
        let second = cache.get::<u32>("hot").await;
        let waited = began.elapsed();
        assert_eq!(second.unwrap_err().kind(), ErrorKind::BackendTimeout);
        assert!(first.await.unwrap().is_err());
        assert!(
            waited <= TIMEOUT,
            "coalesce={coalesce}: a read waited {waited:?} on a backend_timeout of {TIMEOUT:?}"
        );
    }
}

/// FINDING 3 (breaker counts shared failures once): eight concurrent reads
/// of one key against a hung backend all fail with a timeout, but the
/// breaker (threshold 3 consecutive failures) sees two failed operations and
/// stays closed, so the next wave pays the timeout again (twice, per
/// finding 2). `backend_timeouts` likewise reads 2 for 8 failed calls.
#[tokio::test(start_paused = true)]
async fn failures_fanned_out_to_many_callers_open_the_breaker() {
    const CALLERS: usize = 8;
    for coalesce in [false, true] {
        let (cache, faults) = faulty(coalesce, |b| {
            b.backend_timeout(Duration::from_millis(100))
                .backend_failure_threshold(3)
                .backend_retry_after(Duration::from_secs(60))
        });
        faults.hang(Op::Read);
        let calls: Vec<_> = (0..CALLERS)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get::<u32>("hot").await })
            })
            .collect();
        for call in calls {
            assert_eq!(
                call.await.unwrap().unwrap_err().kind(),
                ErrorKind::BackendTimeout
            );
        }
        assert!(
            cache.backend_marked_down(),
            "coalesce={coalesce}: {CALLERS} reads timed out, the breaker (threshold 3) \
             is still closed; backend_timeouts = {}",
            cache.stats().backend_timeouts
        );
    }
}

/// FINDING 4 (callers with a deadline): a caller cancelled while it held
/// the key's turn (its `get` was wrapped in a deadline, the client went
/// away) threw away a read that was sent after every one of its riders
/// began, and sent them all back to the start: a steady stream of callers
/// with a deadline of 1.5 read latencies mostly timed out (18 of 200).
/// Reads are now sent by a task of the key's own, which no caller can
/// cancel. What remains is the design's bound: a caller that finds a read
/// in flight waits for it and then for its own, at most two read
/// latencies (the price of never taking a read sent before it began; why
/// `coalesce_reads` is off by default). Within that bound every caller is
/// answered.
#[tokio::test(start_paused = true)]
async fn callers_with_an_ample_deadline_are_answered() {
    const LATENCY: Duration = Duration::from_millis(20);
    const DEADLINE: Duration = Duration::from_millis(41);
    const CALLERS: usize = 200;
    for coalesce in [false, true] {
        let (cache, faults) = cache(coalesce).await;
        faults.latency(Op::Read, LATENCY);
        let mut calls = Vec::new();
        for _ in 0..CALLERS {
            let cache = cache.clone();
            calls.push(tokio::spawn(async move {
                timeout(DEADLINE, cache.get::<u32>("hot")).await.is_ok()
            }));
            sleep(Duration::from_millis(2)).await;
        }
        let mut answered = 0;
        for call in calls {
            answered += usize::from(call.await.unwrap());
        }
        assert_eq!(
            answered, CALLERS,
            "coalesce={coalesce}: {answered} of {CALLERS} reads answered within \
             {DEADLINE:?} at a read latency of {LATENCY:?}"
        );
    }
}

/// FINDING 4 (starvation): among callers whose deadline is shorter than a
/// read (they give up, as they would without coalescing), a caller without
/// a deadline never gets an answer: each turn goes to a caller that is cut
/// short before its read answers, and the reset sends the patient caller
/// back to the queue. Without coalescing it has its answer after one read.
#[tokio::test(start_paused = true)]
async fn a_patient_reader_is_answered_among_callers_that_give_up() {
    for coalesce in [false, true] {
        let (cache, faults) = cache(coalesce).await;
        faults.latency(Op::Read, Duration::from_millis(20));
        let impatient = {
            let cache = cache.clone();
            tokio::spawn(async move {
                loop {
                    let cache = cache.clone();
                    tokio::spawn(async move {
                        let _ = timeout(Duration::from_millis(10), cache.get::<u32>("hot")).await;
                    });
                    sleep(Duration::from_millis(2)).await;
                }
            })
        };
        sleep(Duration::from_millis(5)).await;
        let patient = timeout(HANG, cache.get::<u32>("hot")).await;
        impatient.abort();
        assert!(
            patient.is_ok(),
            "coalesce={coalesce}: the patient read never finished ({} reads sent, all abandoned)",
            faults.calls(Op::Read)
        );
    }
}

// Second review, of the design where a task of the key's own sends the
// shared reads.

/// FINDING 5 (spurious timeouts open the breaker on a healthy backend): a
/// caller that queues while the key's reader has a read in flight waits
/// for that read and then for the next one, but gives up after one
/// `backend_timeout`. Every read here takes 60% of the limit and none
/// times out, yet with coalescing the callers queued behind the reader's
/// first read all get a Timeout, each counted as a backend failure: with
/// the default threshold (3 in a row) they open the breaker, and the whole
/// cache goes to the loader. Without coalescing every call is a hit.
#[tokio::test(start_paused = true)]
async fn reads_within_the_timeout_neither_fail_nor_open_the_breaker() {
    const TIMEOUT: Duration = Duration::from_millis(100);
    const LATENCY: Duration = Duration::from_millis(60);
    for coalesce in [false, true] {
        let (cache, faults) = faulty(coalesce, |b| b.backend_timeout(TIMEOUT));
        cache.set("hot", 1u32).await.unwrap();
        faults.latency(Op::Read, LATENCY);
        let read = || {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<u32>("hot").await })
        };
        // Inline, then the one that starts the reader, then callers that
        // queue while the reader's first read is in flight.
        let mut calls = vec![read()];
        sleep(Duration::from_millis(1)).await;
        calls.push(read());
        sleep(Duration::from_millis(1)).await;
        calls.extend((0..10).map(|_| read()));
        let mut failed = 0;
        for call in calls {
            failed += usize::from(call.await.unwrap().is_err());
        }
        let stats = cache.stats();
        assert_eq!(
            (failed, stats.backend_timeouts, cache.backend_marked_down()),
            (0, 0, false),
            "coalesce={coalesce}: every read took {LATENCY:?} on a backend_timeout of \
             {TIMEOUT:?}, yet {failed} calls failed, backend_timeouts = {}, breaker open = {}",
            stats.backend_timeouts,
            cache.backend_marked_down()
        );
    }
}

/// FINDING 6 (shared failures counted once too many): the reader's read
/// runs under `guarded`, which counts its failure (stats and breaker), and
/// then `shared_failure` counts it again for each caller it answers. Eight
/// calls that each fail once read nine backend errors (one more per shared
/// read): the breaker sees failures that no caller had, and
/// `backend_errors` no longer equals the failed operations.
#[tokio::test(start_paused = true)]
async fn a_shared_failure_counts_once_per_caller() {
    const CALLERS: usize = 8;
    for coalesce in [false, true] {
        let (cache, faults) = cache(coalesce).await;
        faults.fail_always(Op::Read);
        let calls: Vec<_> = (0..CALLERS)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get::<u32>("hot").await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().is_err());
        }
        let stats = cache.stats();
        assert_eq!(
            stats.backend_errors + stats.backend_skipped,
            CALLERS as u64,
            "coalesce={coalesce}: {CALLERS} failed calls, {} backend errors and {} skipped \
             ({} backend reads sent)",
            stats.backend_errors,
            stats.backend_skipped,
            faults.calls(Op::Read)
        );
    }
}

/// A current-thread runtime with a clock (paused: waits are virtual).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// FINDING 7 (a key stuck for good): the reader's clean-up guard
/// (`Serving`) is made inside the task, on its first poll. A reader task
/// dropped before it ran (its runtime shut down: a worker runtime
/// restarted, a runtime per job or per test around a shared `Cache`)
/// leaves the key's entry with `reader = true` and no task, which nothing
/// ever clears: every later read of the key, on any runtime, queues behind
/// the missing reader, waits `backend_timeout` and fails (a backend
/// timeout for the stats and the breaker; `get_or_load` loads every time).
#[test]
fn a_reader_task_dropped_before_it_ran_does_not_leave_the_key_stuck() {
    for coalesce in [false, true] {
        let main = runtime();
        let (cache, _faults) = main.block_on(cache(coalesce));
        {
            let doomed = runtime();
            doomed.block_on(async {
                // Inline, then queued (spawning the reader on `doomed`);
                // this future ends without yielding, so the reader never
                // runs before `doomed` shuts down.
                let mut inline = pin!(cache.get::<u32>("hot"));
                poll_once(inline.as_mut()).await;
                let mut queued = pin!(cache.get::<u32>("hot"));
                poll_once(queued.as_mut()).await;
            });
        }
        main.block_on(async {
            for _ in 0..3 {
                let read = timeout(HANG, cache.get::<u32>("hot")).await;
                assert_eq!(
                    read.expect("a hang").ok(),
                    Some(Some(1)),
                    "coalesce={coalesce}: a read after the other runtime shut down failed \
                     (backend_timeouts = {})",
                    cache.stats().backend_timeouts
                );
            }
        });
    }
}

/// Records the `id` of the `request` span around each event.
#[derive(Clone, Default)]
struct RequestIds(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

struct IdField(String);

impl tracing::field::Visit for IdField {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "id" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for RequestIds
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut field = IdField(String::new());
        attrs.record(&mut field);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(field);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let ids = ctx.event_scope(event).into_iter().flat_map(|scope| {
            scope
                .filter(|s| s.name() == "request")
                .filter_map(|s| s.extensions().get::<IdField>().map(|f| f.0.clone()))
                .collect::<Vec<_>>()
        });
        self.0.lock().unwrap().extend(ids);
    }
}

/// FINDING 8 (tracing: one request's span on others' reads): the reader
/// task runs in the span of the caller that spawned it, for as long as
/// callers keep queueing. Request 1 is answered (its read failed) and gone;
/// the reader's next read, sent for request 2 alone, fails, and its event
/// is recorded in request 1's span (which stays open while the reader
/// runs: under steady traffic on a hot key, for good).
#[tokio::test(start_paused = true)]
async fn a_read_for_one_request_is_not_traced_in_anothers_span() {
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;
    let ids = RequestIds::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(ids.clone()));
    for coalesce in [false, true] {
        let (cache, faults) = faulty(coalesce, |b| b.backend_failure_threshold(1000));
        faults.latency(Op::Read, READ_LATENCY);
        faults.fail_always(Op::Read);
        let request = |id: u32| {
            let cache = cache.clone();
            tokio::spawn(
                async move { cache.get::<u32>("hot").await }
                    .instrument(tracing::info_span!("request", id)),
            )
        };
        let inline = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<u32>("hot").await })
        };
        tokio::task::yield_now().await;
        let first = request(1);
        sleep(READ_LATENCY / 2).await;
        let second = request(2);
        assert!(first.await.unwrap().is_err());
        ids.0.lock().unwrap().clear();
        assert!(second.await.unwrap().is_err());
        assert!(inline.await.unwrap().is_err());
        let seen = std::mem::take(&mut *ids.0.lock().unwrap());
        assert!(
            !seen.iter().any(|id| id == "1"),
            "coalesce={coalesce}: after request 1 was answered, events were recorded in its \
             span: {seen:?}"
        );
    }
}
