//! Attacks on the joins of loads in flight: a caller that joins a load
//! before reading the backend must end where a caller that read first
//! would have, never waiting for (or failing with) a load it did not need.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use aside::{Cache, EntryOptions, RedisBackend};
use aside_test::RedisServer;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
#[error("database error")]
struct DbError;

fn server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

fn cache(redis: &RedisServer, ns: &str) -> Cache {
    Cache::builder()
        .namespace(ns)
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .backend_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A caller whose key is cached for it (an untagged entry, read untagged)
/// must get it at once, even while a caller that asked for a tag the entry
/// lacks is loading the key: that load is not this caller's miss. Joined
/// blind, the untagged caller waits for the load and gets its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_not_held_by_a_load_of_the_key_with_other_tags() {
    let redis = server();
    let cache = cache(&redis, "rvc1");
    let tagged = EntryOptions::new().tag("t");
    let rounds = 40;
    let mut failed = 0;
    for round in 0..rounds {
        let key = format!("k{round}");
        let v: Option<String> = cache
            .get_or_load(&key, || async {
                Ok::<_, DbError>(Some("cached".to_owned()))
            })
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("cached"));

        // A tagged caller misses (the entry lacks the tag) and loads; its
        // loader is held, then fails.
        let gate = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let (c, k, g, s, o) = (
            cache.clone(),
            key.clone(),
            gate.clone(),
            started.clone(),
            tagged.clone(),
        );
        let loading = tokio::spawn(async move {
            c.get_or_load_with(&k, &o, move || async move {
                s.notify_one();
                g.notified().await;
                Err::<Option<String>, _>(DbError)
            })
            .await
        });
        started.notified().await;

        let coalesced = cache.stats().coalesced;
        let (c, k) = (cache.clone(), key.clone());
        let reader = tokio::spawn(async move {
            c.get_or_load(&k, || async {
                Ok::<_, DbError>(Some("reloaded".to_owned()))
            })
            .await
        });
        // Wait (bounded) until the reader either answered or joined.
        for _ in 0..2_500 {
            if reader.is_finished() || cache.stats().coalesced > coalesced {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        gate.notify_one();
        assert!(loading.await.unwrap().is_err());
        let seen: Result<Option<String>, aside::Error> = reader.await.unwrap();
        if seen.as_ref().ok().and_then(|v| v.as_deref()) != Some("cached") {
            failed += 1;
            eprintln!("round {round}: the untagged reader saw {seen:?}");
        }
    }
    assert_eq!(
        failed, 0,
        "{failed} of {rounds} untagged reads of a cached key waited for a tagged load and failed"
    );
}
