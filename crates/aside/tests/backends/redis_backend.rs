//! The shared scenarios, and Redis-specific behaviour, on a real redis-server.

use std::time::Duration;

use aside::Cache;
use aside::backend::RedisBackend;
use aside_test::RedisServer;
use aside_test::fixtures::redis_server;
use aside_test::redis_stats::raw;

use crate::scenarios::{self, DbDown, Product, product};

fn cache_on(redis: &RedisServer) -> Cache {
    scenarios::builder()
        .namespace("t")
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap()
}

macro_rules! scenario {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let redis = redis_server();
            scenarios::$name(&cache_on(&redis)).await;
        }
    )*};
}

scenario!(
    tag_invalidation_hides_every_tagged_entry,
    fill_that_raced_a_tag_invalidation_is_dropped,
    namespace_invalidation_must_be_enabled,
    fill_that_raced_an_invalidation_is_dropped,
    fill_that_raced_a_set_is_dropped,
    hit_and_miss,
    negative_caching,
    falsy_values_are_hits,
    invalidate_reloads,
    set_updates,
    loader_error_is_returned_and_not_cached,
    loader_panic_reaches_every_waiter,
    cancelled_caller_does_not_strand_others,
    type_change_reloads,
    oversized_values_are_served_not_stored,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_callers_one_load() {
    let redis = redis_server();
    let cache = cache_on(&redis);
    for round in 0..5 {
        cache.invalidate("cold").await.unwrap();
        scenarios::single_flight(&cache, 1000).await;
        assert_eq!(cache.stats().loads, round + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_written_to_redis_is_within_the_jitter_range() {
    let redis = redis_server();
    let cache = Cache::builder()
        .namespace("t")
        .ttl(Duration::from_secs(100))
        .ttl_jitter(0.2)
        .negative_ttl(Some(Duration::from_secs(10)))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    let mut conn = raw(&redis).await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..50u64 {
        cache
            .set(aside::Key::new("p").part(i), product(i))
            .await
            .unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("{{t:p:{i}}}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((79_000..=100_000).contains(&pttl), "pttl {pttl}");
        seen.insert(pttl / 1000);
    }
    assert!(seen.len() > 5, "TTLs are spread, not equal: {seen:?}");
    // Negative entries get the negative TTL (jittered too).
    let _: Option<Product> = cache
        .get_or_load("absent", || async { Ok::<_, DbDown>(None) })
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg("{t:absent}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((7_900..=10_000).contains(&pttl), "negative pttl {pttl}");
}

/// Whatever sits under a key (another program's value, a truncated write, a
/// future format, an entry of the previous format, a decompression bomb),
/// aside reloads and overwrites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_foreign_bytes_are_reloaded_and_overwritten() {
    let redis = redis_server();
    let cache = cache_on(&redis);
    let mut conn = raw(&redis).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // A live header (written now, one hour TTL: see `envelope.rs`) with
    // the given flags, so the payload is really decoded rather than
    // skipped as expired.
    let header = |flags: u8| {
        let mut h = vec![0xA5, 0x1D, 2, 1 | flags];
        h.extend_from_slice(&now.to_be_bytes()[2..]);
        h.extend_from_slice(&3_600_000u64.to_be_bytes()[3..]);
        h.extend_from_slice(&[0; 8]);
        h.push(0); // no tag or namespace dependencies
        h
    };
    let mut truncated = header(0);
    truncated.truncate(20);
    let mut future_version = header(0);
    future_version[2] = 99;
    let mut bomb = header(0x10);
    bomb.extend_from_slice(&u32::MAX.to_le_bytes());
    bomb.extend_from_slice(&[1, 2, 3]);
    let mut bad_payload = header(0);
    bad_payload.extend_from_slice(b"\xc1\xc1\xc1 not msgpack");
    // What aside wrote before format 2: the same fields, 8-byte times and
    // TTLs, a valid payload of another product.
    let mut format_1 = vec![0xA5, 0x1D, 1, 1, 0];
    format_1.extend_from_slice(&now.to_be_bytes());
    format_1.extend_from_slice(&3_600_000u64.to_be_bytes());
    format_1.extend_from_slice(&[0; 12]);
    format_1.push(0);
    format_1.extend_from_slice(&rmp_serde::to_vec(&product(2)).unwrap());
    let samples: Vec<(&str, Vec<u8>)> = vec![
        ("foreign-text", b"{\"id\": 1}".to_vec()),
        ("empty", Vec::new()),
        ("truncated", truncated),
        ("future-version", future_version),
        ("format-1", format_1),
        ("lz4-bomb", bomb),
        ("bad-payload", bad_payload),
    ];
    for (name, bytes) in &samples {
        let before = cache.stats().decode_errors;
        let _: () = redis::cmd("SET")
            .arg(cache.physical_key(name))
            .arg(bytes.as_slice())
            .query_async(&mut conn)
            .await
            .unwrap();
        let got: Option<Product> = cache
            .get_or_load(*name, || async { Ok::<_, DbDown>(Some(product(1))) })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, Some(product(1)), "{name}");
        let stored: Vec<u8> = redis::cmd("GET")
            .arg(cache.physical_key(name))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            &stored[..2],
            &[0xA5, 0x1D],
            "{name}: overwritten with an aside entry"
        );
        assert_eq!(cache.get::<Product>(*name).await.unwrap(), Some(product(1)));
        // Counted per read that found it: the caller's and the loader's re-check.
        assert_eq!(cache.stats().decode_errors - before, 2, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_acl_user_and_database_from_the_url() {
    let redis = RedisServer::builder()
        .password("s3cret")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    // A URL without the password: the backend fails, get_or_load degrades.
    let no_auth = Cache::builder()
        .backend(RedisBackend::new(&format!("redis://127.0.0.1:{}", redis.port())).unwrap())
        .build()
        .unwrap();
    let v: Option<u8> = no_auth
        .get_or_load("k", || async { Ok::<_, DbDown>(Some(1)) })
        .await
        .unwrap();
    assert_eq!(v, Some(1));
    assert!(no_auth.stats().backend_errors >= 1);
    assert!(
        no_auth.get::<u8>("k").await.is_err(),
        "explicit get reports the failure"
    );

    // Password and database 3.
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", redis.port());
    let cache = Cache::builder()
        .namespace("db3")
        .backend(RedisBackend::new(&url).unwrap())
        .build()
        .unwrap();
    cache.set("k", 7u32).await.unwrap();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let exists_db3: u32 = redis::cmd("EXISTS")
        .arg("{db3:k}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists_db3, 1);
    let _: () = redis::cmd("SELECT")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let exists_db0: u32 = redis::cmd("EXISTS")
        .arg("{db3:k}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists_db0, 0, "written to database 3 only");

    // An ACL user limited to its own key prefix.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "svc", "on", ">pw", "~{svc:*", "+@all"][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let user_url = format!("redis://svc:pw@127.0.0.1:{}", redis.port());
    let cache = Cache::builder()
        .namespace("svc")
        .backend(RedisBackend::new(&user_url).unwrap())
        .build()
        .unwrap();
    cache.set("x", 1u8).await.unwrap();
    assert_eq!(cache.get::<u8>("x").await.unwrap(), Some(1));
    let outside = Cache::builder()
        .namespace("other")
        .backend(RedisBackend::new(&user_url).unwrap())
        .build()
        .unwrap();
    assert!(
        outside.set("x", 1u8).await.is_err(),
        "ACL denies keys outside ~svc:*"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_urls_are_config_errors() {
    for url in [
        "not a url",
        "http://127.0.0.1",
        "redis://127.0.0.1:notaport",
    ] {
        let err = RedisBackend::new(url).unwrap_err();
        assert!(err.is_config(), "{url}: {err}");
    }
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let err = RedisBackend::new("redis://127.0.0.1:6379").unwrap_err();
    assert!(err.is_config());
}

/// Redis keeps what it is told to keep: a key made persistent (or restored
/// from a snapshot) must still stop being served at the entry's own expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_past_its_recorded_expiry_is_a_miss_even_if_redis_keeps_it() {
    use aside::clock::ManualClock;
    use std::sync::Arc;
    let redis = redis_server();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cache = Cache::builder()
        .namespace("t")
        .ttl(Duration::from_secs(10))
        .ttl_jitter(0.0)
        .clock(clock.clone())
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    cache.set("k", 5u32).await.unwrap();
    let persisted: u8 = redis::cmd("PERSIST")
        .arg("{t:k}")
        .query_async(&mut raw(&redis).await)
        .await
        .unwrap();
    assert_eq!(persisted, 1, "the key now has no Redis TTL");
    assert_eq!(cache.get::<u32>("k").await.unwrap(), Some(5));
    clock.advance(Duration::from_secs(11));
    assert_eq!(cache.get::<u32>("k").await.unwrap(), None);
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_work_with_a_private_ca() {
    let redis = RedisServer::builder()
        .tls()
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = RedisBackend::builder(redis.url())
        .tls_root_cert(redis.ca_pem().unwrap())
        .build()
        .unwrap();
    let cache = Cache::builder().backend(backend).build().unwrap();
    cache.set("tls", product(1)).await.unwrap();
    assert_eq!(cache.get::<Product>("tls").await.unwrap(), Some(product(1)));

    // Without trusting the CA the handshake fails: get_or_load degrades.
    let untrusted = Cache::builder()
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap();
    let got: Option<Product> = untrusted
        .get_or_load("tls", || async { Ok::<_, DbDown>(Some(product(2))) })
        .await
        .unwrap();
    assert_eq!(got, Some(product(2)));
    assert!(untrusted.stats().backend_errors >= 1);
}

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn rediss_without_the_tls_feature_is_a_config_error() {
    let err = RedisBackend::new("rediss://127.0.0.1:6380").unwrap_err();
    assert!(err.is_config());
    assert!(err.to_string().contains("tls"), "{err}");
}

macro_rules! namespaced {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let redis = super::redis_server();
            let cache = scenarios::builder()
                .namespace("t")
                .namespace_invalidation(true)
                .backend(RedisBackend::new(&redis.url()).unwrap())
                .build()
                .unwrap();
            scenarios::$name(&cache).await;
        }
    )*};
}

/// With namespace invalidation on (every read is an MGET of the entry and
/// the namespace version).
mod with_namespace_invalidation {
    use crate::scenarios;
    use aside::backend::RedisBackend;
    namespaced!(
        namespace_invalidation_hides_everything,
        hit_and_miss,
        negative_caching,
        invalidate_reloads,
        tag_invalidation_hides_every_tagged_entry,
        fill_that_raced_an_invalidation_is_dropped,
        fill_that_raced_a_tag_invalidation_is_dropped,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions_do_not_share_entries() {
    let redis = redis_server();
    let on = |v| {
        scenarios::builder()
            .namespace("t")
            .schema_version(v)
            .backend(RedisBackend::new(&redis.url()).unwrap())
            .build()
            .unwrap()
    };
    scenarios::schema_versions_do_not_share_entries(&on(1), &on(2)).await;
}

/// Tag counters live in the namespace's slot, expire, and are one key per tag
/// however many entries carry the tag; invalidating the tag removes it (no
/// counter is ever incremented, so none can come back with an old value),
/// and no per-key marker is left behind by `set`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_is_one_expiring_token_whatever_the_number_of_entries() {
    let redis = redis_server();
    let cache = cache_on(&redis);
    for i in 0..100u64 {
        cache
            .set_with(format!("e{i}"), i, &aside::EntryOptions::new().tag("big"))
            .await
            .unwrap();
    }
    let mut conn = raw(&redis).await;
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert_eq!(keys, 101, "100 entries and one tag token");
    let token: String = redis::cmd("GET")
        .arg("{t}:t:big")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(token.parse::<u64>().is_ok_and(|t| t > 0), "{token}");
    let pttl: i64 = redis::cmd("PTTL")
        .arg("{t}:t:big")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0, "tag tokens expire (no leak): {pttl}");
    cache.invalidate_tag("big").await.unwrap();
    let exists: u64 = redis::cmd("EXISTS")
        .arg("{t}:t:big")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "an invalidated tag's token is removed");
    for i in 0..100u64 {
        assert_eq!(cache.get::<u64>(format!("e{i}")).await.unwrap(), None);
    }
}

/// The lease request finds the key's lease already holding its own token
/// (a retry after a reply was lost): it holds it, whether the plain
/// commands answer or the script does (a foreign marker sends the request
/// to the script); and a lease held by another token is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_already_holding_the_token_is_held_not_busy() {
    use aside::backend::{AcquireRequest, Backend, Lease, LeaseAsk};

    let redis = redis_server();
    let backend = RedisBackend::new(&redis.url()).unwrap();
    let mut conn = raw(&redis).await;
    let ask = LeaseAsk::new("T1", Duration::from_secs(10));
    for (key, foreign_marker) in [("own:a", false), ("own:b", true)] {
        let keys = [key.to_owned()];
        let set = |k: String, v: &str| {
            redis::cmd("SET")
                .arg(k)
                .arg(v)
                .arg("PX")
                .arg(10_000)
                .clone()
        };
        let () = set(format!("{{{key}}}:l"), "T1")
            .query_async(&mut conn)
            .await
            .unwrap();
        if foreign_marker {
            let () = set(format!("{{{key}}}:g"), "not a token")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let got = backend
            .acquire(&AcquireRequest::new(&keys, &[], Duration::from_secs(60)).with_lease(ask))
            .await
            .unwrap();
        assert_eq!(
            got[0].token.lease(),
            &Lease::Held("T1".into()),
            "{key} (foreign marker: {foreign_marker})"
        );
        let other = backend
            .acquire(
                &AcquireRequest::new(&keys, &[], Duration::from_secs(60))
                    .with_lease(LeaseAsk::new("T2", Duration::from_secs(10))),
            )
            .await
            .unwrap();
        assert!(
            matches!(other[0].token.lease(), Lease::Busy(left) if *left > Duration::from_secs(5)),
            "{key}: {:?}",
            other[0].token.lease()
        );
    }
}
