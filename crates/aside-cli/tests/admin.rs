//! Runs the built `aside` binary's admin commands against a Redis of their
//! own: a cache fills entries with tags, `inspect` shows them, `invalidate`
//! makes them unreadable, `stats --redis` follows the server's figures; and
//! bad input fails with one line and a non-zero exit, never a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use aside::backend::RedisBackend;
use aside::{Cache, EntryOptions};
use aside_test::RedisServer;
use aside_test::fixtures::redis_server;
use common::{aside, closed_port};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
}

#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
struct Never;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cache(redis: &RedisServer, namespace: &str) -> Cache {
    Cache::builder()
        .namespace(namespace)
        .ttl(Duration::from_secs(600))
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .build()
        .unwrap()
}

/// Loads product `id` through `cache`, tagged `category:<category>`.
async fn load(cache: &Cache, id: u64, category: u64) -> Option<Product> {
    let opts = EntryOptions::new().tag(format!("category:{category}"));
    cache
        .get_or_load_with(format!("product:{id}"), &opts, move || async move {
            Ok::<_, Never>(Some(Product {
                id,
                name: format!("product {id}"),
            }))
        })
        .await
        .unwrap()
}

#[test]
fn inspect_shows_an_entry_and_invalidate_makes_it_unreadable() {
    let redis = redis_server();
    let url = redis.url();
    let rt = runtime();
    let cache = rt.block_on(async { cache(&redis, "shop") });
    rt.block_on(async {
        load(&cache, 1, 7).await;
        load(&cache, 2, 7).await;
        load(&cache, 3, 8).await;
    });
    let inspect = |key: &str, json: bool| {
        let mut args = vec!["inspect", key, "--redis", &url, "--namespace", "shop"];
        if json {
            args.push("--json");
        }
        aside(&args)
    };

    let doc = inspect("product:1", true).json();
    assert_eq!(doc["key"], "product:1");
    assert_eq!(doc["storage_key"], "{shop:product:1}");
    assert_eq!(doc["state"], "fresh");
    assert_eq!(doc["current"], true);
    assert_eq!(doc["readable"], true);
    assert_eq!(doc["negative"], false);
    assert_eq!(doc["codec"], "messagepack");
    assert_eq!(doc["compressed"], false);
    assert_eq!(doc["value"], json!({ "id": 1, "name": "product 1" }));
    assert_eq!(
        doc["lease"],
        json!({ "key": "{shop:product:1}:l", "held": false })
    );
    let pttl = doc["pttl_ms"].as_u64().expect("a TTL");
    assert!(pttl > 500_000 && pttl <= 600_000, "{pttl}");
    assert!(doc["size"].as_u64().unwrap() > doc["payload_size"].as_u64().unwrap());
    let dep = &doc["dependencies"][0];
    assert_eq!(dep["tag"], "category:7");
    assert_eq!(dep["storage_key"], "{shop}:t:category:7");
    assert_eq!(dep["holds"], true);
    assert_eq!(dep["recorded"], dep["current"]);
    assert!(dep["recorded"].as_str().unwrap().parse::<u64>().unwrap() > 0);

    let table = inspect("product:1", false);
    assert!(table.ok(), "{table:?}");
    for shown in [
        "{shop:product:1}",
        "category:7",
        "holds",
        "\"product 1\"",
        "messagepack",
    ] {
        assert!(
            table.stdout.contains(shown),
            "{shown} not in:\n{}",
            table.stdout
        );
    }

    let done = aside(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "shop",
        "--tag",
        "category:7",
        "--json",
    ])
    .json();
    assert_eq!(
        done,
        json!({ "namespace": "shop", "kind": "tags", "names": ["category:7"], "applied": true })
    );
    let doc = inspect("product:1", true).json();
    assert_eq!(doc["state"], "invalidated");
    assert_eq!(
        (doc["current"].clone(), doc["readable"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(doc["dependencies"][0]["holds"], false);
    assert_eq!(doc["dependencies"][0]["current"], serde_json::Value::Null);
    rt.block_on(async {
        // Every entry of the tag is gone for readers; the other tag's stays.
        assert_eq!(cache.get::<Product>("product:1").await.unwrap(), None);
        assert_eq!(cache.get::<Product>("product:2").await.unwrap(), None);
        assert_eq!(
            cache
                .get::<Product>("product:3")
                .await
                .unwrap()
                .map(|p| p.id),
            Some(3)
        );
    });

    let out = aside(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "shop",
        "--key",
        "product:3",
    ]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        "invalidated 1 key in namespace \"shop\": \"product:3\""
    );
    let gone = inspect("product:3", false);
    assert_eq!(
        gone.error(),
        "error: no entry for key \"product:3\" in namespace \"shop\""
    );
    rt.block_on(async {
        assert_eq!(cache.get::<Product>("product:3").await.unwrap(), None);
    });
}

#[test]
fn invalidate_all_namespace_reaches_caches_with_namespace_invalidation() {
    let redis = redis_server();
    let url = redis.url();
    let rt = runtime();
    let cache = rt.block_on(async {
        Cache::builder()
            .namespace("docs")
            .namespace_invalidation(true)
            .backend(RedisBackend::new(&url).unwrap())
            .build()
            .unwrap()
    });
    rt.block_on(async {
        cache.set("a", 1u32).await.unwrap();
        assert_eq!(cache.get::<u32>("a").await.unwrap(), Some(1));
    });
    let out = aside(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "docs",
        "--all-namespace",
    ]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.contains("invalidated namespace \"docs\""),
        "{}",
        out.stdout
    );
    rt.block_on(async {
        assert_eq!(cache.get::<u32>("a").await.unwrap(), None);
    });
}

#[test]
fn stats_from_redis_follow_the_reads() {
    let redis = redis_server();
    let url = redis.url();
    let rt = runtime();
    let shop = rt.block_on(async { cache(&redis, "shop") });
    // A namespace with glob characters: counted as itself, never as a
    // pattern matching "shop" (or anything else).
    let globby = rt.block_on(async { cache(&redis, "sh*p") });
    rt.block_on(async {
        for id in 1..=3 {
            load(&shop, id, 7).await;
        }
        load(&globby, 1, 7).await;
    });
    let stats = |ns: &str| aside(&["stats", "--redis", &url, "--namespace", ns, "--json"]).json();
    let before = stats("shop");
    assert_eq!(before["source"], "redis");
    assert_eq!(before["namespace"]["entries"], 3);
    assert_eq!(before["namespace"]["tag_tokens"], 1);
    assert_eq!(before["namespace"]["namespace_token"], false);
    assert_eq!(stats("sh*p")["namespace"]["entries"], 1);
    assert_eq!(stats("s?op")["namespace"]["entries"], 0);
    assert!(before["keys"].as_u64().unwrap() >= 4 + 2);
    assert!(before["used_memory"].as_u64().unwrap() > 0);

    rt.block_on(async {
        for _ in 0..5 {
            assert!(shop.get::<Product>("product:1").await.unwrap().is_some());
        }
        for id in 100..103 {
            assert!(
                shop.get::<Product>(format!("product:{id}"))
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    });
    let after = stats("shop");
    let grew = |field: &str| after[field].as_u64().unwrap() - before[field].as_u64().unwrap();
    // Each hit reads the entry (and its tag's token with it); each miss
    // reads an absent key.
    assert!(grew("keyspace_hits") >= 5, "{before}\n{after}");
    assert!(grew("keyspace_misses") >= 3, "{before}\n{after}");
    let ratio = after["hit_ratio"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{ratio}");

    let table = aside(&["stats", "--redis", &url]);
    assert!(table.ok(), "{table:?}");
    for shown in [
        "keyspace hit ratio",
        "evicted keys",
        "used memory",
        "keys (DBSIZE)",
    ] {
        assert!(
            table.stdout.contains(shown),
            "{shown} not in:\n{}",
            table.stdout
        );
    }
}

#[test]
fn bad_input_fails_with_one_line() {
    let down = format!("redis://127.0.0.1:{}", closed_port());
    for args in [
        vec!["inspect", "k", "--redis", &down],
        vec![
            "invalidate",
            "--redis",
            &down,
            "--namespace",
            "shop",
            "--key",
            "k",
        ],
        vec!["stats", "--redis", &down],
    ] {
        let message = aside(&args).error().to_owned();
        assert!(
            message.contains("could not reach Redis at redis://127.0.0.1:"),
            "{message}"
        );
    }
    let secret = format!("redis://:hunter2@127.0.0.1:{}", closed_port());
    let message = aside(&["inspect", "k", "--redis", &secret])
        .error()
        .to_owned();
    assert!(
        message.contains("redis://***@127.0.0.1:") && !message.contains("hunter2"),
        "{message}"
    );

    for url in ["not a url", "http://127.0.0.1:6379"] {
        let message = aside(&["stats", "--redis", url]).error().to_owned();
        assert!(message.contains("invalid --redis URL"), "{message}");
    }

    let message = aside(&["stats", "--metrics-url", "https://127.0.0.1/metrics"])
        .error()
        .to_owned();
    assert!(message.contains("only http:// is supported"), "{message}");
    let closed = format!("http://127.0.0.1:{}/metrics", closed_port());
    let message = aside(&["stats", "--metrics-url", &closed])
        .error()
        .to_owned();
    assert!(
        message.contains("could not connect to http://127.0.0.1:"),
        "{message}"
    );

    // Argument errors are clap's: exit code 2 and a usage message.
    for args in [
        vec!["invalidate", "--redis", &down, "--namespace", "shop"],
        vec!["stats"],
        vec!["inspect", "--redis", &down],
    ] {
        let out = aside(&args);
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains("Usage"), "{out:?}");
    }
}

/// Under the least-privilege user of `docs/operations.md` ("Running against
/// a locked-down Redis"), `inspect` and `invalidate` work; `stats --redis`
/// needs `+info +dbsize +scan` besides, and says so when refused.
#[test]
fn admin_commands_under_the_readmes_acl_user() {
    let redis = redis_server();
    let rt = runtime();
    let acl = "on >pw resetkeys ~{shop:* ~{shop}:* resetchannels &aside:fills &aside:events -@all \
               +get +mget +set +del +pexpire +pttl +exists +type +publish +subscribe +unsubscribe \
               +ping +evalsha +eval +script|load";
    rt.block_on(async {
        let mut admin = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut set_user = redis::cmd("ACL");
        set_user.arg("SETUSER").arg("shop");
        for rule in acl.split_whitespace() {
            set_user.arg(rule);
        }
        set_user.query_async::<()>(&mut admin).await.unwrap();
    });
    let url = redis.url().replacen("redis://", "redis://shop:pw@", 1);
    let cache = rt.block_on(async {
        Cache::builder()
            .namespace("shop")
            .backend(RedisBackend::new(&url).unwrap())
            .build()
            .unwrap()
    });
    rt.block_on(async {
        load(&cache, 1, 7).await;
    });
    let doc = aside(&[
        "inspect",
        "product:1",
        "--redis",
        &url,
        "--namespace",
        "shop",
        "--json",
    ])
    .json();
    assert_eq!(doc["current"], true);
    let done = aside(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "shop",
        "--tag",
        "category:7",
    ]);
    assert!(done.ok(), "{done:?}");
    let doc = aside(&[
        "inspect",
        "product:1",
        "--redis",
        &url,
        "--namespace",
        "shop",
        "--json",
    ])
    .json();
    assert_eq!(doc["current"], false);

    let refused = aside(&["stats", "--redis", &url]).error().to_owned();
    assert!(
        refused.contains("no permissions to run the 'info' command") && !refused.contains(":pw@"),
        "{refused}"
    );
    rt.block_on(async {
        let mut admin = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("shop")
            .arg("+info")
            .arg("+dbsize")
            .arg("+scan")
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
    });
    let doc = aside(&["stats", "--redis", &url, "--namespace", "shop", "--json"]).json();
    assert_eq!(doc["namespace"]["entries"], 1);
}

/// Redis answers the connection check, then takes no write (`CLIENT PAUSE
/// WRITE`): the invalidation is queued, retried for a while, and reported
/// as not applied, with a non-zero exit (the queue ends with the process).
#[test]
fn an_invalidation_redis_does_not_take_is_reported_not_applied() {
    let redis = redis_server();
    let url = redis.url();
    let rt = runtime();
    rt.block_on(async {
        let mut admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(20_000)
            .arg("WRITE")
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
    });
    let out = aside(&[
        "invalidate",
        "--redis",
        &url,
        "--namespace",
        "shop",
        "--key",
        "k",
    ]);
    let message = out.error();
    assert!(
        message.contains("did not take the invalidation, which may not have been applied"),
        "{message}"
    );
    assert_eq!(out.code, Some(1));
}
