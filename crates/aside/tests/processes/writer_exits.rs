//! A writer that exits right after its invalidation returned `Applied`
//! (a job, a deploy hook) must leave no other instance untold: `Applied`
//! means Redis accepted the backplane message, not that it was queued for
//! a sender that dies with the process.
//!
//! The parent holds a copy of a key in its L1 (a `TieredBackend` with the
//! Redis backplane). A child process (this binary run again as
//! `--exact writer_exits::writer`) builds an instance of its own, bumps the
//! key's source of truth, invalidates the key and exits at once with
//! `std::process::exit`, on a current-thread runtime in half of the rounds
//! and a multi-thread one in the others. Every read the parent begins more
//! than [`BOUND`] after the child's invalidation returned must see the new
//! version. (When the message was only queued for a background sender, 2
//! of 13 such runs left the other instance serving the old value until its
//! `max_l1_age`.)
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aside::Cache;
use aside::backend::{RedisBackend, TieredBackend};
use aside_test::fixtures::until_live;
use aside_test::fixtures::{redis_server, test_name};
use redis::aio::MultiplexedConnection;

/// Set (to `url namespace flavour`) in the child's environment.
const WRITER_ENV: &str = "ASIDE_EXITING_WRITER";
/// Prefixes the line the child prints when its invalidation returned.
const APPLIED_PREFIX: &str = "ASIDE_APPLIED_AT ";
/// The bound of the two-level cache's default `max_staleness`.
const BOUND: Duration = Duration::from_millis(100);
const ROUNDS: usize = 10;

fn now_ns() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_nanos()).expect("before 2262")
}

fn instance(url: &str, namespace: &str) -> (Cache, TieredBackend) {
    let events = RedisBackend::new(url).unwrap();
    let backend = TieredBackend::builder(RedisBackend::new(url).unwrap())
        .max_l1_age(Duration::from_secs(60))
        .backplane(events.backplane("aside:events").unwrap())
        .build()
        .unwrap();
    let cache = Cache::builder()
        .namespace(namespace)
        .ttl(Duration::from_secs(60))
        .backend(backend.clone())
        .build()
        .unwrap();
    (cache, backend)
}

/// Reads `k` through `cache`; the loader reads the truth counter.
async fn read(cache: &Cache, conn: &MultiplexedConnection, truth: &str) -> u64 {
    let (mut conn, truth) = (conn.clone(), truth.to_owned());
    let got: Option<u64> = cache
        .get_or_load("k", move || async move {
            redis::cmd("GET").arg(truth).query_async(&mut conn).await
        })
        .await
        .unwrap();
    got.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_exits_at_once_leaves_no_instance_untold() {
    let _one = crate::ONE_RUN_AT_A_TIME.lock().await;
    let redis = redis_server();
    let url = redis.url();
    let namespace = format!("we{:08x}", rand::random::<u32>());
    let truth = format!("{namespace}:truth");
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&truth)
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (cache, backend) = instance(&url, &namespace);
    until_live(&backend).await;
    let exe = std::env::current_exe().unwrap();
    let mut report = Vec::new();
    for round in 0..ROUNDS {
        // The copy is in L1: two reads, the second an L1 hit.
        let before = read(&cache, &conn, &truth).await;
        let hits = backend.stats().l1_hits;
        assert_eq!(read(&cache, &conn, &truth).await, before);
        assert!(backend.stats().l1_hits > hits, "round {round}: not in L1");

        let flavour = if round % 2 == 0 { "current" } else { "multi" };
        let out = tokio::process::Command::new(&exe)
            .args([
                test_name(module_path!(), "writer").as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_ENV, format!("{url} {namespace} {flavour}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let applied_at: i64 = stdout
            .lines()
            .find_map(|l| {
                l.find(APPLIED_PREFIX)
                    .map(|at| &l[at + APPLIED_PREFIX.len()..])
            })
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "round {round}: the writer did not report its invalidation ({}):\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        // Every read that begins later than the bound sees the new version.
        let mut stale_after_bound = Vec::new();
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            let began = now_ns();
            let v = read(&cache, &conn, &truth).await;
            if v <= before && began - applied_at > BOUND.as_nanos() as i64 {
                stale_after_bound.push((began - applied_at) / 1_000_000);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        report.push(format!(
            "round {round} ({flavour}): exit {}, stale reads past the bound at {:?} ms",
            out.status,
            &stale_after_bound[..stale_after_bound.len().min(5)]
        ));
        assert!(
            stale_after_bound.is_empty(),
            "round {round}: the old value was served after the writer's invalidation returned \
             Applied and the writer exited:\n  {}",
            report.join("\n  ")
        );
    }
    eprintln!("a writer that exits at once:\n  {}", report.join("\n  "));
}

/// The child: one instance, one invalidation after bumping the truth, then
/// `std::process::exit` at once. Returns at once unless [`WRITER_ENV`] is
/// set (so in a normal run it passes doing nothing).
#[test]
fn writer() {
    let Ok(config) = std::env::var(WRITER_ENV) else {
        return;
    };
    let mut parts = config.split(' ');
    let (Some(url), Some(namespace), Some(flavour)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("a writer configuration: {config:?}");
    };
    let rt = match flavour {
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    }
    .unwrap();
    rt.block_on(async {
        let (cache, backend) = instance(url, namespace);
        until_live(&backend).await;
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: u64 = redis::cmd("INCR")
            .arg(format!("{namespace}:truth"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let applied = cache.invalidate("k").await.unwrap();
        assert!(applied.is_applied(), "{applied:?}");
        println!("{APPLIED_PREFIX}{}", now_ns());
        // Out at once: no flush, no drop, no runtime shutdown.
        std::process::exit(0);
    });
}
