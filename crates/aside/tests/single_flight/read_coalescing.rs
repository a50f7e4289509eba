//! Hot-key read coalescing (`CacheBuilder::coalesce_reads(true)`)
//! on a real Redis: many tasks reading one cached key share their `GET`s
//! (counted by Redis itself, `INFO commandstats`), and a read that begins
//! after an invalidation was applied never takes the answer of a `GET` sent
//! before it.

use std::time::Duration;

use aside::backend::RedisBackend;
use aside::{Cache, EntryOptions};
use aside_test::Proxy;
use aside_test::fixtures::redis_server;
use aside_test::redis_stats::{commandstats, raw, reset_stats};

const TASKS: usize = 64;
const READS: usize = 100;

fn cache(url: &str, ns: &str, coalesce: bool) -> Cache {
    Cache::builder()
        .namespace(ns)
        .backend(RedisBackend::new(url).unwrap())
        .coalesce_reads(coalesce)
        // 64 tasks on 2 cores: a busy scheduler is not a Redis failure.
        .backend_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// `TASKS` tasks read `key` `READS` times each (with `opts`); every read
/// must be a hit with the cached value.
async fn hammer(cache: &Cache, key: &str, opts: &EntryOptions) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (cache, key, opts) = (cache.clone(), key.to_owned(), opts.clone());
            tokio::spawn(async move {
                for _ in 0..READS {
                    let v: Option<String> = cache
                        .get_or_load_with(&key, &opts, || async {
                            Ok::<_, std::io::Error>(Some("loaded again".to_owned()))
                        })
                        .await
                        .unwrap();
                    assert_eq!(v.as_deref(), Some("cached"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_reading_one_key_share_their_round_trips() {
    let redis = redis_server();
    let mut conn = raw(&redis).await;
    let total = (TASKS * READS) as u64;
    let tagged = EntryOptions::new().tag("hot");
    for (coalesce, ns) in [(false, "apart"), (true, "shared")] {
        let cache = cache(&redis.url(), ns, coalesce);
        cache.set("plain", "cached".to_owned()).await.unwrap();
        cache
            .set_with("tagged", "cached".to_owned(), &tagged)
            .await
            .unwrap();

        reset_stats(&mut conn).await;
        hammer(&cache, "plain", &EntryOptions::new()).await;
        let gets = commandstats(&mut conn)
            .await
            .get("get")
            .copied()
            .unwrap_or(0);
        // A tagged entry is read with its tag's token, in one request.
        reset_stats(&mut conn).await;
        hammer(&cache, "tagged", &tagged).await;
        let stats = commandstats(&mut conn).await;
        let tagged_reads: u64 = ["mget", "evalsha", "eval"]
            .iter()
            .filter_map(|c| stats.get(*c))
            .sum();
        let shared = cache.stats().shared_reads;
        let hits = cache.stats().hits;
        assert_eq!(hits, 2 * total, "{ns}");
        if coalesce {
            // Each round trip serves every caller that queued during the
            // one before: far fewer requests than reads.
            assert!(gets < total / 2, "{gets} GETs for {total} reads");
            assert!(
                tagged_reads < total / 2,
                "{tagged_reads} requests for {total} tagged reads"
            );
            // Each call was answered by a read it sent or by the key's
            // reader; reads sent number fewer than the calls they answered.
            assert!(
                shared >= 2 * total - gets - tagged_reads,
                "{shared} shared answers, {gets} + {tagged_reads} reads for {} calls",
                2 * total
            );
        } else {
            assert_eq!(gets, total, "one GET per read when not sharing");
            assert_eq!(tagged_reads, total);
            assert_eq!(shared, 0);
        }
    }
}

/// Through a proxy that delays each direction by `LATENCY`, a read's `GET`
/// runs in Redis, then a write elsewhere invalidates the key, then a second
/// read begins while the first `GET`'s answer is still on its way. Sharing
/// that answer would hand the second read the value the invalidation
/// removed; it must wait for a `GET` of its own time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_began_after_an_invalidation_never_shares_an_earlier_get() {
    const LATENCY: Duration = Duration::from_millis(400);
    let redis = redis_server();
    let proxy = Proxy::to_port(redis.port()).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = raw(&redis).await;
    let reader = cache(&proxy.url(), "shop", true);
    let writer = cache(&redis.url(), "shop", true);
    let mut overlapping = 0;
    for round in 0..5 {
        let key = format!("product:{round}");
        writer.set(&key, "old".to_owned()).await.unwrap();
        // Connect before the latency, so only the reads pay it.
        let _: Option<String> = reader.get("warm-up").await.unwrap();
        proxy.set_latency(LATENCY);
        reset_stats(&mut conn).await;

        let first = {
            let (reader, key) = (reader.clone(), key.clone());
            tokio::spawn(async move { reader.get::<String>(&key).await.unwrap() })
        };
        // Its GET has run in Redis once Redis counts it.
        for _ in 0..2_000 {
            if commandstats(&mut conn)
                .await
                .get("get")
                .copied()
                .unwrap_or(0)
                >= 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(writer.invalidate(&key).await.unwrap().is_applied());
        let second_began_in_flight = !first.is_finished();
        let second = reader.get::<String>(&key).await.unwrap();
        proxy.set_latency(Duration::ZERO);

        assert_eq!(
            first.await.unwrap().as_deref(),
            Some("old"),
            "the first GET ran before the invalidation"
        );
        assert_eq!(
            second, None,
            "a read that began after the invalidation was applied got what it removed"
        );
        overlapping += u64::from(second_began_in_flight);
    }
    // A round where the first read had already been answered shows
    // nothing; each round leaves 400 ms for the invalidation, so a round
    // fails to overlap only if the machine stalls that long.
    assert!(overlapping >= 1, "no round overlapped the first read");
}
