//! Redis in conditions short of down: out of memory under `noeviction`,
//! paused (`CLIENT PAUSE`) or blocked (`DEBUG SLEEP`), behind a
//! least-privilege ACL user, and holding secrets that must not leak.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use aside::backend::RedisBackend;
use aside::backend::{Backplane as _, Strict, TieredBackend};
use aside::{Cache, EntryOptions, Key};
use aside_test::RedisServer;
use aside_test::fixtures::{Never, redis_server};
use aside_test::redis_stats::raw_url;

/// The "database": a pure function of the id and a version.
fn row(id: u64, version: u64) -> String {
    format!("row-{id}-v{version}")
}

async fn read(cache: &Cache, id: u64, version: u64) -> Result<Option<String>, aside::Error> {
    cache
        .get_or_load(Key::new("row").part(id), move || async move {
            Ok::<_, Never>(Some(row(id, version)))
        })
        .await
}

/// Under `maxmemory` with `noeviction`, Redis refuses writes (and scripts
/// that may write) with `OOM`, but still answers reads and deletes. Callers
/// see no error and every answer is right: cached entries are still read,
/// new keys are answered by the loader, and an invalidation still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_under_noeviction_reads_and_loads_go_on() {
    let redis = RedisServer::builder()
        .arg("--maxmemory-policy")
        .arg("noeviction")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let cache = Cache::builder()
        .namespace("oom")
        .ttl(Duration::from_secs(60))
        .backend_timeout(Duration::from_millis(500))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    for id in 0..20 {
        assert_eq!(read(&cache, id, 1).await.unwrap(), Some(row(id, 1)));
    }
    // Put Redis well over its limit (a limit just reached comes and goes as
    // buffers are freed): 2 MB of data, then a 1 MB limit.
    let mut conn = raw_url(&redis.url()).await;
    let junk = vec![b'x'; 2 << 20];
    let _: () = redis::cmd("SET")
        .arg("junk")
        .arg(&junk)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1mb")
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused: redis::RedisResult<()> = redis::cmd("SET")
        .arg("probe")
        .arg(1)
        .query_async(&mut conn)
        .await;
    let refused = refused.expect_err("Redis took a write over its limit");
    assert!(refused.to_string().contains("OOM"), "{refused}");

    // Cached entries are still served from Redis, before any write failed.
    let before = cache.stats();
    for id in 0..20 {
        assert_eq!(read(&cache, id, 1).await.unwrap(), Some(row(id, 1)));
    }
    assert_eq!(cache.stats().hits - before.hits, 20, "{:?}", cache.stats());
    // New keys: their loads cannot be cached (the lease script may write),
    // the loader answers every one of them.
    for id in 100..150 {
        assert_eq!(read(&cache, id, 1).await.unwrap(), Some(row(id, 1)));
    }
    let s = cache.stats();
    let cached: u32 = redis::cmd("EXISTS")
        .arg("{oom:row:120}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cached, 0, "a fill was written past maxmemory");
    assert!(s.backend_errors >= 1, "the refusals were seen: {s:?}");
    // An invalidation is a delete, which Redis still runs: applied, and the
    // next read is the new version (from the loader; it may not be cached).
    let done = cache.invalidate(Key::new("row").part(3)).await.unwrap();
    assert!(done.is_applied(), "{done:?}");
    assert_eq!(read(&cache, 3, 2).await.unwrap(), Some(row(3, 2)));
    // Memory freed: caching works again.
    let _: () = redis::cmd("DEL")
        .arg("junk")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("64mb")
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let _ = read(&cache, 500, 1).await.unwrap();
            let hits = cache.stats().hits;
            let _ = read(&cache, 500, 9).await.unwrap();
            if cache.stats().hits > hits {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(stored.is_ok(), "never cached again: {:?}", cache.stats());
    assert_eq!(read(&cache, 500, 9).await.unwrap(), Some(row(500, 1)));
}

/// A paused or blocked Redis holds every command: callers are bounded by
/// the backend timeout and answered by the loader, then hits resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_and_blocked_redis_bound_callers_by_the_backend_timeout() {
    let redis = RedisServer::builder()
        .arg("--enable-debug-command")
        .arg("yes")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let cache = Cache::builder()
        .namespace("slow")
        .ttl(Duration::from_secs(60))
        .backend_timeout(Duration::from_millis(200))
        .backend_retry_after(Duration::from_millis(200))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    assert_eq!(read(&cache, 1, 1).await.unwrap(), Some(row(1, 1)));

    for fault in ["pause", "sleep"] {
        // The fault runs on a connection of its own; `DEBUG SLEEP` blocks
        // its connection too, so it is not awaited here.
        let url = redis.url();
        let holder = tokio::spawn(async move {
            let mut conn = raw_url(&url).await;
            let r: redis::RedisResult<()> = match fault {
                "pause" => {
                    redis::cmd("CLIENT")
                        .arg("PAUSE")
                        .arg(3000)
                        .arg("ALL")
                        .query_async(&mut conn)
                        .await
                }
                _ => {
                    redis::cmd("DEBUG")
                        .arg("SLEEP")
                        .arg(3)
                        .query_async(&mut conn)
                        .await
                }
            };
            // The reply may outlast the connection's response timeout; what
            // matters is that the server was held, checked below.
            if let Err(e) = r {
                eprintln!("{fault}: {e}");
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let timeouts = cache.stats().backend_timeouts + cache.stats().backend_skipped;
        let started = Instant::now();
        for id in 10..15 {
            assert_eq!(read(&cache, id, 1).await.unwrap(), Some(row(id, 1)));
        }
        let held = started.elapsed();
        // Five reads against a server that answers nothing for 3 s: each is
        // cut at 200 ms (or skipped by the breaker), far less than the fault.
        assert!(
            held < Duration::from_millis(2000),
            "{fault}: callers waited {held:?} ({:?})",
            cache.stats()
        );
        let s = cache.stats();
        assert!(
            s.backend_timeouts + s.backend_skipped > timeouts,
            "{fault}: the server was not held: {s:?}"
        );
        holder.await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // Back to normal: hits resume.
    let resumed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let hits = cache.stats().hits;
            let _ = read(&cache, 1, 1).await.unwrap();
            if cache.stats().hits > hits {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(resumed.is_ok(), "hits never resumed: {:?}", cache.stats());
}

/// The least-privilege ACL user documented in `docs/operations.md`: only the
/// commands, keys and channels aside uses. A workload with tags, namespace
/// invalidation, leases, a batch and the two-level cache's backplane runs
/// with no backend error (a missing permission is a `NOPERM` error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_user_is_enough() {
    let redis = redis_server();
    let url = acl_user(&redis, &aside_acl_rule("svc")).await;

    let plain = Cache::builder()
        .namespace("svc")
        .namespace_invalidation(true)
        .backend(RedisBackend::new(&url).unwrap())
        .build()
        .unwrap();
    let l2 = RedisBackend::new(&url).unwrap();
    let backplane = l2.backplane("aside:events").unwrap();
    // Strict: the registry of instances and the acknowledgements too.
    let tiered_backend = TieredBackend::builder(l2)
        .backplane(backplane)
        .strict(Strict::default())
        .build()
        .unwrap();
    let tiered = Cache::builder()
        .namespace("svc")
        .namespace_invalidation(true)
        .backend(tiered_backend.clone())
        .build()
        .unwrap();
    let tagged = EntryOptions::new().tag("t");
    for cache in [&plain, &tiered] {
        for id in 0..5u64 {
            let v: Option<String> = cache
                .get_or_load_with(Key::new("row").part(id), &tagged, move || async move {
                    Ok::<_, Never>(Some(row(id, 1)))
                })
                .await
                .unwrap();
            assert_eq!(v, Some(row(id, 1)));
        }
        let many: Vec<Option<String>> = cache
            .get_many_or_load(["a", "b", "c"], |misses| async move {
                Ok::<_, Never>(misses.into_iter().map(|k| (k.clone(), k)).collect())
            })
            .await
            .unwrap();
        assert_eq!(many.len(), 3);
        cache.set("s", "v".to_owned()).await.unwrap();
        assert!(cache.invalidate("s").await.unwrap().is_applied());
        assert!(cache.invalidate_tag("t").await.unwrap().is_applied());
        assert!(cache.invalidate_namespace().await.unwrap().is_applied());
    }
    // The backplane subscribed (a refused SUBSCRIBE never connects).
    let subscribed = tokio::time::timeout(Duration::from_secs(5), async {
        while tiered_backend.stats().gaps == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(subscribed.is_ok(), "{:?}", tiered_backend.stats());
    // Registered, renewed and the clocks checked (a refused registry
    // script never lets L1 serve): copies are served.
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        let before = tiered_backend.stats().l1_hits;
        loop {
            let _: Option<String> = tiered
                .get_or_load("served", || async { Ok::<_, Never>(Some("v".to_owned())) })
                .await
                .unwrap();
            if tiered_backend.stats().l1_hits > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "{:?}", tiered_backend.stats());
    for cache in [&plain, &tiered] {
        let s = cache.stats();
        assert_eq!(s.backend_errors, 0, "a command was refused: {s:?}");
        assert!(s.sets >= 1 && s.loads >= 6, "{s:?}");
    }
    // And the rule does restrict: other commands and keys are refused.
    let mut svc = raw_url(&url).await;
    let flush: redis::RedisResult<()> = redis::cmd("FLUSHALL").query_async(&mut svc).await;
    let flush = flush.expect_err("FLUSHALL was allowed");
    assert!(
        format!("{flush:?}").to_lowercase().contains("perm"),
        "{flush:?}"
    );
    let other: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg("{other:k}")
        .query_async(&mut svc)
        .await;
    let other = other.expect_err("a key outside the namespace was readable");
    assert!(
        format!("{other:?}").to_lowercase().contains("perm"),
        "{other:?}"
    );
}

/// Strict invalidation's registry needs `INFO server` (the server's run
/// id): a user without `+info` (a common rule: `+@all -@dangerous`) gets an
/// error that says so, not a failure deep inside a script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_without_info_says_what_is_missing() {
    let redis = redis_server();
    let url = acl_user(&redis, &aside_acl_rule("svc").replace(" +info", "")).await;
    let backplane = RedisBackend::new(&url)
        .unwrap()
        .backplane("aside:events")
        .unwrap();
    let members = backplane
        .members()
        .expect("a single Redis keeps a registry");
    let lease = Duration::from_secs(2);
    for refused in [
        members.live(lease).await.err(),
        members.renew("i", lease, true).await.err(),
        members.revoke("i", lease).await.err(),
    ] {
        let e = refused.expect("the registry answered without INFO");
        let text = format!("{e:?}");
        assert!(text.contains("+info"), "{text}");
    }
}

/// Creates the user `svc` (password `pw`) with `rule`; answers its URL.
async fn acl_user(redis: &RedisServer, rule: &str) -> String {
    let mut admin = raw_url(&redis.url()).await;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg("svc").arg("on").arg(">pw");
    for part in rule.split_whitespace() {
        cmd.arg(part);
    }
    let _: () = cmd.query_async(&mut admin).await.unwrap();
    format!("redis://svc:pw@127.0.0.1:{}", redis.port())
}

/// The ACL rules of a user that runs aside in `namespace` (the line in
/// `docs/operations.md`): its keys and the namespace's tokens, the two
/// channels, strict invalidation's registry and acknowledgement channels,
/// and the commands aside sends (scripts run with the caller's
/// permissions).
fn aside_acl_rule(namespace: &str) -> String {
    format!(
        "resetkeys ~{{{namespace}:* ~{{{namespace}}}:* ~aside:events:members resetchannels \
         &aside:fills &aside:events &aside:events:to:* -@all +get +mget +set +del +pexpire \
         +pttl +exists +type +publish +subscribe +unsubscribe +ping +evalsha +eval \
         +script|load +time +info +zadd +zrem +zscore +zrangebyscore +zremrangebyscore"
    )
}

/// Passwords never show in `Debug` output or in errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_debug_output_or_errors() {
    const SECRET: &str = "hunter2-Secret";
    let redis = RedisServer::builder()
        .password(SECRET)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let good = format!("redis://:{SECRET}@127.0.0.1:{}", redis.port());
    let builder = RedisBackend::builder(good.clone());
    assert!(!format!("{builder:?}").contains(SECRET), "{builder:?}");
    let backend = builder.build().unwrap();
    assert!(!format!("{backend:?}").contains(SECRET));
    let cache = Cache::builder().backend(backend).build().unwrap();
    assert!(!format!("{cache:?}").contains(SECRET));
    cache.set("k", 1u8).await.unwrap();

    // A wrong password, and a server that is not there: the errors name
    // the failure, not the secret.
    let wrong = format!("redis://:{SECRET}-wrong@127.0.0.1:{}", redis.port());
    let absent = format!("redis://:{SECRET}@127.0.0.1:{}", free_port());
    for url in [wrong, absent] {
        let cache = Cache::builder()
            .backend(RedisBackend::new(&url).unwrap())
            .backend_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let err = cache.get::<u8>("k").await.unwrap_err();
        for shown in [format!("{err}"), format!("{err:?}"), format!("{err:#}")] {
            assert!(!shown.contains(SECRET), "{shown}");
        }
    }
    // A malformed URL with a password in it.
    let bad = format!("redis://:{SECRET}@127.0.0.1:notaport");
    if let Err(err) = RedisBackend::new(&bad) {
        for shown in [format!("{err}"), format!("{err:?}")] {
            assert!(!shown.contains(SECRET), "{shown}");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
