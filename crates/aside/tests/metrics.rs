//! The exported metrics of a scripted workload, read back from a debugging
//! recorder.
//!
//! The recorder is global (the export task runs on the runtime's worker
//! threads, which a thread-local recorder would not reach), so this test
//! binary holds nothing else, and each test uses a namespace of its own.
#![cfg(feature = "metrics")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use aside::backend::MemoryBackend;
use aside::{Cache, EntryOptions};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

const INTERVAL: Duration = Duration::from_millis(20);
/// Between two snapshots: several exports, so that every gauge was set.
const PAUSE: Duration = Duration::from_millis(100);

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this binary");
        snapshotter
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Counter(u64),
    Gauge(f64),
    /// Samples recorded so far.
    Histogram(usize),
}

/// Every metric of namespace `cache`: kind, name, labels (sorted), value.
type Row = (MetricKind, String, Vec<(String, String)>, Value);

fn rows(cache: &str) -> Vec<Row> {
    // A snapshot takes what was recorded since the last one (counters and
    // gauges are swapped for 0, histograms drained): the running values are
    // kept here, for every test of this binary. A gauge reads as the value
    // set last before the snapshot, 0 when none was (hence `PAUSE`).
    static SEEN: Mutex<Vec<Row>> = Mutex::new(Vec::new());
    static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap();
    let mut last = LAST.lock().unwrap();
    // Snapshots at least `PAUSE` apart, whichever test takes them.
    let snapshot = if last.is_some_and(|at| at.elapsed() < PAUSE) {
        Vec::new()
    } else {
        *last = Some(std::time::Instant::now());
        snapshotter().snapshot().into_vec()
    };
    for (key, _, _, value) in snapshot {
        let (kind, key) = CompositeKey::into_parts(key);
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let name = key.name().to_owned();
        let at = match seen
            .iter()
            .position(|(k, n, l, _)| *k == kind && *n == name && *l == labels)
        {
            Some(at) => at,
            None => {
                let zero = match kind {
                    MetricKind::Counter => Value::Counter(0),
                    MetricKind::Gauge => Value::Gauge(0.0),
                    MetricKind::Histogram => Value::Histogram(0),
                };
                seen.push((kind, name, labels, zero));
                seen.len() - 1
            }
        };
        let total = &mut seen[at].3;
        *total = match (&*total, value) {
            (Value::Counter(n), DebugValue::Counter(d)) => Value::Counter(n + d),
            (Value::Histogram(n), DebugValue::Histogram(d)) => Value::Histogram(n + d.len()),
            (_, DebugValue::Gauge(g)) => Value::Gauge(g.into_inner()),
            (old, new) => panic!("{old:?} then {new:?}"),
        };
    }
    seen.iter()
        .filter(|(_, _, l, _)| l.iter().any(|(k, v)| k == "cache" && v == cache))
        .map(|(k, n, l, v)| {
            let l = l.iter().filter(|(k, _)| k != "cache").cloned().collect();
            (*k, n.clone(), l, v.clone())
        })
        .collect()
}

fn counter(rows: &[Row], name: &str, extra: &[(&str, &str)]) -> Option<u64> {
    find(rows, MetricKind::Counter, name, extra).and_then(|v| match v {
        Value::Counter(n) => Some(*n),
        _ => None,
    })
}

fn gauge(rows: &[Row], name: &str, extra: &[(&str, &str)]) -> Option<f64> {
    find(rows, MetricKind::Gauge, name, extra).and_then(|v| match v {
        Value::Gauge(g) => Some(*g),
        _ => None,
    })
}

fn find<'a>(
    rows: &'a [Row],
    kind: MetricKind,
    name: &str,
    extra: &[(&str, &str)],
) -> Option<&'a Value> {
    let mut want: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    rows.iter()
        .find(|(k, n, l, _)| *k == kind && n == name && *l == want)
        .map(|(_, _, _, v)| v)
}

/// Polls the recorder until `check` holds (the export runs every
/// `INTERVAL`), then returns the rows; gives up after 5 s.
async fn settle(cache: &str, check: impl Fn(&[Row]) -> bool) -> Vec<Row> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rows = rows(cache);
        if check(&rows) || tokio::time::Instant::now() >= deadline {
            return rows;
        }
        tokio::time::sleep(PAUSE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_workload_is_exported_exactly() {
    snapshotter();
    let cache = Cache::builder()
        .namespace("scripted")
        .backend(MemoryBackend::new())
        .metrics_interval(INTERVAL)
        .build()
        .unwrap();
    let tagged = EntryOptions::new().tag("team");

    // 10 misses: 8 values, 1 "not found", 1 loader error.
    for i in 0..8 {
        let key = format!("user-key-{i}");
        let v: Option<String> = cache
            .get_or_load_with(key, &tagged, move || async move {
                Ok::<_, std::io::Error>(Some(format!("secret-value-{i}")))
            })
            .await
            .unwrap();
        assert!(v.is_some());
    }
    let none: Option<String> = cache
        .get_or_load("user-key-absent", || async {
            Ok::<_, std::io::Error>(None)
        })
        .await
        .unwrap();
    assert_eq!(none, None);
    let failed = cache
        .get_or_load::<String, _>("user-key-failing", || async {
            Err(std::io::Error::other("secret-value-in-error"))
        })
        .await;
    assert!(failed.is_err());

    // 30 hits and 2 negative hits.
    for i in 0..30 {
        let key = format!("user-key-{}", i % 8);
        let v: Option<String> = cache
            .get_or_load_with(key, &tagged, || async {
                Ok::<_, std::io::Error>(Some("never loaded".to_owned()))
            })
            .await
            .unwrap();
        assert!(v.is_some());
    }
    for _ in 0..2 {
        let v: Option<String> = cache
            .get_or_load("user-key-absent", || async {
                Ok::<_, std::io::Error>(Some("never loaded".to_owned()))
            })
            .await
            .unwrap();
        assert_eq!(v, None);
    }

    // 3 invalidations: 2 keys and a tag.
    cache.invalidate("user-key-0").await.unwrap();
    cache.invalidate("user-key-1").await.unwrap();
    cache.invalidate_tag("team").await.unwrap();
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.negative_hits), (30, 10, 2));

    let memory = [("level", "memory")];
    let rows = settle("scripted", |rows| {
        counter(
            rows,
            "aside_invalidations_total",
            &[("kind", "tag"), memory[0]],
        ) == Some(1)
    })
    .await;
    let requests = |result| {
        counter(
            &rows,
            "aside_requests_total",
            &[memory[0], ("result", result)],
        )
    };
    assert_eq!(requests("hit"), Some(30), "{rows:#?}");
    assert_eq!(requests("miss"), Some(10));
    assert_eq!(requests("negative"), Some(2));
    assert_eq!(requests("stale"), Some(0));
    assert_eq!(counter(&rows, "aside_loads_total", &memory), Some(10));
    assert_eq!(counter(&rows, "aside_load_errors_total", &memory), Some(1));
    let invalidations = |kind| {
        counter(
            &rows,
            "aside_invalidations_total",
            &[("kind", kind), memory[0]],
        )
    };
    assert_eq!(invalidations("key"), Some(2));
    assert_eq!(invalidations("tag"), Some(1));
    assert_eq!(invalidations("namespace"), Some(0));
    for name in [
        "aside_backend_errors_total",
        "aside_backend_timeouts_total",
        "aside_stale_served_total",
        "aside_fail_safe_served_total",
    ] {
        assert_eq!(counter(&rows, name, &memory), Some(0), "{name}");
    }
    // Only a tiered backend has tier reads.
    assert!(
        !rows
            .iter()
            .any(|(_, n, _, _)| n == "aside_tier_reads_total")
    );
    // One sample per loader run.
    match find(
        &rows,
        MetricKind::Histogram,
        "aside_load_duration_seconds",
        &[],
    ) {
        Some(Value::Histogram(samples)) => assert_eq!(*samples, 10),
        other => panic!("no load histogram: {other:?}"),
    }

    // No label carries a key or a value, whatever the metric.
    for (_, name, labels, _) in &rows {
        for (k, v) in labels {
            assert!(
                !v.contains("user-key") && !v.contains("secret-value") && !v.contains("team"),
                "{name} has label {k}={v}"
            );
        }
    }

    // The gauges are at rest, and stay at 0 once the cache is gone.
    for name in ["aside_loads_in_flight", "aside_invalidations_queued"] {
        assert_eq!(gauge(&rows, name, &memory), Some(0.0), "{name}");
    }
    for which in ["backend", "loader"] {
        assert_eq!(
            gauge(
                &rows,
                "aside_breaker_open",
                &[("breaker", which), memory[0]]
            ),
            Some(0.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_follow_a_running_load_and_return_to_zero() {
    snapshotter();
    let cache = Cache::builder()
        .namespace("gauges")
        .metrics_interval(INTERVAL)
        .build()
        .unwrap();
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let loading = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load("slow", || async move {
                    let _ = wait.await;
                    Ok::<_, std::io::Error>(Some(1u8))
                })
                .await
        })
    };
    let memory = [("level", "memory")];
    let rows = settle("gauges", |rows| {
        gauge(rows, "aside_loads_in_flight", &memory) == Some(1.0)
    })
    .await;
    assert_eq!(gauge(&rows, "aside_loads_in_flight", &memory), Some(1.0));
    release.send(()).unwrap();
    assert_eq!(loading.await.unwrap().unwrap(), Some(1));
    let rows = settle("gauges", |rows| {
        gauge(rows, "aside_loads_in_flight", &memory) == Some(0.0)
    })
    .await;
    assert_eq!(gauge(&rows, "aside_loads_in_flight", &memory), Some(0.0));
    assert_eq!(counter(&rows, "aside_loads_total", &memory), Some(1));
}

#[test]
fn building_outside_a_runtime_is_a_config_error() {
    let built = Cache::builder().metrics(true).build();
    assert_eq!(
        built.err().map(|e| e.kind()),
        Some(aside::ErrorKind::Config)
    );
    // Without metrics, no runtime is needed.
    assert!(Cache::builder().build().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_backend_reports_its_levels() {
    snapshotter();
    let tiered = aside::backend::TieredBackend::builder(MemoryBackend::new())
        .build()
        .unwrap();
    let cache = Cache::builder()
        .namespace("tiered")
        .backend(tiered.clone())
        .metrics_interval(INTERVAL)
        .build()
        .unwrap();
    for _ in 0..3 {
        let v: Option<u8> = cache
            .get_or_load("k", || async { Ok::<_, std::io::Error>(Some(1)) })
            .await
            .unwrap();
        assert_eq!(v, Some(1));
    }
    let tier = tiered.stats();
    let rows = settle("tiered", |rows| {
        counter(rows, "aside_tier_reads_total", &[("level", "l1")]) == Some(tier.l1_hits)
    })
    .await;
    let tiered_level = ("level", "tiered");
    let hits = counter(
        &rows,
        "aside_requests_total",
        &[tiered_level, ("result", "hit")],
    );
    assert_eq!(hits, Some(2), "{rows:#?}");
    assert_eq!(
        counter(&rows, "aside_tier_reads_total", &[("level", "l1")]),
        Some(tier.l1_hits)
    );
    assert_eq!(
        counter(&rows, "aside_tier_reads_total", &[("level", "l2")]),
        Some(tier.l1_misses)
    );
    assert!(tier.l1_hits >= 2, "{tier:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_backend_reports_its_evictions() {
    snapshotter();
    let backend = MemoryBackend::builder().max_entries(10).build();
    let cache = Cache::builder()
        .namespace("evicting")
        .backend(backend.clone())
        .metrics_interval(INTERVAL)
        .build()
        .unwrap();
    for i in 0..200u32 {
        cache.set(format!("k{i}"), i).await.unwrap();
    }
    // moka removes what is over capacity in its pending work.
    for _ in 0..100 {
        backend.run_pending_tasks().await;
        if backend.entry_count() <= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let evicted = backend.evictions();
    assert!(
        evicted >= 150,
        "{evicted} evictions for 200 entries in room for 10"
    );
    let rows = settle("evicting", |rows| {
        counter(rows, "aside_evictions_total", &[("level", "memory")]) == Some(evicted)
    })
    .await;
    assert_eq!(
        counter(&rows, "aside_evictions_total", &[("level", "memory")]),
        Some(evicted),
        "{rows:#?}"
    );
    // Invalidations and expiries are not evictions.
    cache.invalidate("k199").await.unwrap();
    backend.run_pending_tasks().await;
    assert_eq!(backend.evictions(), evicted);
}

/// `cache` is the namespace as given: a schema version (part of every key)
/// is not part of the label, so a deploy that bumps it keeps its series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_label_is_the_namespace_without_its_schema_version() {
    snapshotter();
    let cache = Cache::builder()
        .namespace("versioned")
        .schema_version(3)
        .metrics_interval(INTERVAL)
        .build()
        .unwrap();
    assert_eq!(
        cache
            .get_or_load("k", || async { Ok::<_, std::io::Error>(Some(1u32)) })
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(cache.get::<u32>("k").await.unwrap(), Some(1));
    let seen = settle("versioned", |rows| {
        counter(
            rows,
            "aside_requests_total",
            &[("level", "memory"), ("result", "hit")],
        ) == Some(1)
    })
    .await;
    assert_eq!(
        counter(
            &seen,
            "aside_requests_total",
            &[("level", "memory"), ("result", "hit")]
        ),
        Some(1),
        "{seen:#?}"
    );
    assert!(
        rows("versioned@v3").is_empty(),
        "no series under the versioned name"
    );
}

/// Dropping the cache exports what its counters grew by since the last
/// tick, at once: a process that drops its cache before exiting (or a short
/// command) loses no count, whatever the interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_cache_exports_its_last_counts_at_once() {
    snapshotter();
    let cache = Cache::builder()
        .namespace("dropped")
        .metrics_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    // Past the first tick (at once, with nothing to count yet).
    tokio::time::sleep(PAUSE).await;
    cache.set("k", 1u32).await.unwrap();
    for _ in 0..5 {
        assert_eq!(cache.get::<u32>("k").await.unwrap(), Some(1));
    }
    let hits = [("level", "memory"), ("result", "hit")];
    drop(cache);
    let seen = settle("dropped", |rows| {
        counter(rows, "aside_requests_total", &hits) == Some(5)
    })
    .await;
    assert_eq!(
        counter(&seen, "aside_requests_total", &hits),
        Some(5),
        "{seen:#?}"
    );
}
