//! The admin commands against a Redis Cluster of their own (three
//! primaries from `aside_test::RedisCluster`), given one node's URL and
//! `--cluster`: `stats --redis` sums every primary (a namespace's entries
//! spread over all three, so one node's figures would fall short),
//! `inspect` reads an entry wherever its slot lives, `invalidate` of a tag
//! and of keys makes the entries unreadable through the application's own
//! cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use aside::backend::RedisBackend;
use aside::{Cache, EntryOptions};
use aside_test::RedisCluster;
use common::aside;
use serde_json::json;

const PRODUCTS: u64 = 30;

#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
struct Never;

async fn load(cache: &Cache, id: u64) -> Option<String> {
    let opts = EntryOptions::new().tag(format!("category:{}", id % 2));
    cache
        .get_or_load_with(format!("product:{id}"), &opts, move || async move {
            Ok::<_, Never>(Some(format!("product {id}")))
        })
        .await
        .unwrap()
}

#[test]
fn admin_commands_reach_every_primary_of_a_cluster() {
    let cluster = RedisCluster::start(3, 0).unwrap_or_else(|e| panic!("{e}"));
    // One node: the commands find the others.
    let url = cluster.urls()[1].clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = rt.block_on(async {
        let cache = Cache::builder()
            .namespace("shop")
            .ttl(Duration::from_secs(600))
            .backend(RedisBackend::cluster(cluster.urls()).build().unwrap())
            .build()
            .unwrap();
        for id in 0..PRODUCTS {
            load(&cache, id).await;
        }
        cache
    });

    let doc = aside(&[
        "stats",
        "--redis",
        &url,
        "--cluster",
        "--namespace",
        "shop",
        "--json",
    ])
    .json();
    let primaries = doc["cluster_primaries"].as_array().expect("per primary");
    assert_eq!(primaries.len(), 3, "{doc}");
    let per_node: Vec<u64> = primaries
        .iter()
        .map(|p| p["namespace_entries"].as_u64().unwrap())
        .collect();
    assert_eq!(per_node.iter().sum::<u64>(), PRODUCTS, "{doc}");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "the entries are not spread: {per_node:?}"
    );
    assert_eq!(doc["namespace"]["entries"], PRODUCTS, "{doc}");
    assert_eq!(doc["namespace"]["tag_tokens"], 2, "{doc}");
    let keys: u64 = primaries.iter().map(|p| p["keys"].as_u64().unwrap()).sum();
    assert_eq!(doc["keys"], keys, "{doc}");
    // The entries and the two tag tokens at least.
    assert!(keys >= PRODUCTS + 2, "{doc}");
    let table = aside(&["stats", "--redis", &url, "--cluster"]);
    assert!(table.ok(), "{table:?}");
    assert!(
        table.stdout.contains("Redis Cluster at") && table.stdout.contains("3 primaries"),
        "{}",
        table.stdout
    );

    let inspect = |key: &str| {
        aside(&[
            "inspect",
            key,
            "--redis",
            &url,
            "--cluster",
            "--namespace",
            "shop",
            "--json",
        ])
        .json()
    };
    for id in 0..PRODUCTS {
        let doc = inspect(&format!("product:{id}"));
        assert_eq!(doc["state"], "fresh", "{doc}");
        assert_eq!(doc["value"], json!(format!("product {id}")), "{doc}");
    }

    let invalidate = |what: &[&str]| {
        let mut args = vec![
            "invalidate",
            "--redis",
            &url,
            "--cluster",
            "--namespace",
            "shop",
            "--json",
        ];
        args.extend_from_slice(what);
        let done = aside(&args).json();
        assert_eq!(done["applied"], true, "{done}");
    };
    invalidate(&["--tag", "category:1"]);
    invalidate(&["--key", "product:0", "product:2"]);
    rt.block_on(async {
        for id in 0..PRODUCTS {
            let got: Option<String> = cache.get(format!("product:{id}")).await.unwrap();
            let gone = id % 2 == 1 || id == 0 || id == 2;
            assert_eq!(got.is_none(), gone, "product:{id}: {got:?}");
        }
    });
}

/// A primary that is down when the command starts is not silently left out
/// of the sums: redis-rs routes "every primary" to the nodes it could
/// connect to, so the command checks the answers against `CLUSTER SLOTS`.
#[test]
fn stats_over_a_cluster_with_a_primary_down_is_an_error_not_a_partial_sum() {
    let mut cluster = RedisCluster::start(3, 0).unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.urls()[0].clone();
    let whole = aside(&["stats", "--redis", &url, "--cluster", "--json"]);
    assert!(whole.ok(), "{whole:?}");
    let down = cluster.urls()[2].clone();
    cluster.stop_node(2);
    let run = aside(&["stats", "--redis", &url, "--cluster", "--json"]);
    let message = run.error();
    let port = down.rsplit(':').next().unwrap_or_default();
    assert!(
        message.contains("2 of the cluster's 3 primaries answered") && message.contains(port),
        "{message}"
    );
}
