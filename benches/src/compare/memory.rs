//! Scenario 6: memory.
//!
//! In process: resident memory per cached entry for 100,000 small entries,
//! aside's `MemoryBackend` against a raw `moka::future::Cache<String,
//! Product>`. Each measurement runs in a fresh child process (this binary
//! with `--mem-child`), so that one contender's freed pages do not hide the
//! other's: RSS after the inserts minus RSS before, over N. (A counting
//! global allocator would need `unsafe`, which the workspace forbids.)
//!
//! In Redis: bytes per key of aside's entries against naive `SETEX` of the
//! same MessagePack bytes (`used_memory` delta and `MEMORY USAGE`), what
//! else aside leaves in Redis after its loads (`DBSIZE`), and the size of the
//! keys a load in flight holds (its marker and lease).

use std::convert::Infallible;
use std::process::Command;
use std::time::Duration;

use aside::backend::{MemoryBackend, RedisBackend};
use aside::{Cache, EntryOptions};
use redis::aio::ConnectionManager;
use serde_json::{Value, json};

use super::{Opts, Spread, table};
use crate::{Product, product};

const N_PROCESS: usize = 100_000;
const N_REDIS: usize = 10_000;
const CHILD_RUNS: usize = 3;

fn row(i: usize) -> Product {
    Product {
        id: i as u64,
        ..product()
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// The child: fills one contender with `n` entries and prints bytes/entry.
pub fn child(which: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let moka: moka::future::Cache<String, Product> = moka::future::Cache::new(1_000_000);
        let cache = Cache::builder()
            .backend(MemoryBackend::builder().max_entries(1_000_000).build())
            .build()
            .unwrap();
        let before = rss_bytes();
        for i in 0..n {
            let key = format!("product:{i}");
            match which {
                "moka" => moka.insert(key, row(i)).await,
                _ => cache.set(&key, row(i)).await.unwrap(),
            }
        }
        moka.run_pending_tasks().await;
        let after = rss_bytes();
        println!("{}", (after - before) as f64 / n as f64);
    });
}

fn child_run(which: &str) -> f64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--mem-child", which, &N_PROCESS.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

async fn used_memory(conn: &mut ConnectionManager) -> i64 {
    let info = super::cost::info(conn, "memory").await;
    super::cost::info_field(&info, "used_memory:") as i64
}

async fn cmd_i64(conn: &mut ConnectionManager, args: &[&str]) -> i64 {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async::<Option<i64>>(conn)
        .await
        .unwrap()
        .unwrap_or(-1)
}

async fn all_keys(conn: &mut ConnectionManager) -> Vec<String> {
    redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap()
}

pub async fn run(opts: &Opts) -> Value {
    // In process, alternating children.
    let (mut moka, mut aside) = (Vec::new(), Vec::new());
    for r in 0..CHILD_RUNS {
        if r % 2 == 0 {
            moka.push(child_run("moka"));
            aside.push(child_run("aside"));
        } else {
            aside.push(child_run("aside"));
            moka.push(child_run("moka"));
        }
    }
    let (m, a) = (Spread::of(&moka), Spread::of(&aside));
    println!(
        "\nMemory per entry in process ({N_PROCESS} entries, RSS delta in a fresh process, {CHILD_RUNS} runs)"
    );
    let mut t = table(&["contender", "bytes/entry (median, min..max)"]);
    t.add_row(vec!["raw moka (String key, Product)".to_owned(), m.show(0)]);
    t.add_row(vec!["aside MemoryBackend".to_owned(), a.show(0)]);
    println!("{t}");
    println!("aside / moka: {:.2}", a.median / m.median);

    // In Redis. This scenario runs last: it empties the server between steps.
    let mut conn = redis::Client::open(opts.url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let cache = Cache::builder()
        .backend(RedisBackend::new(&opts.url).unwrap())
        .namespace("mem")
        .build()
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let m0 = used_memory(&mut conn).await;
    for i in 0..N_REDIS {
        let got: Option<Product> = cache
            .get_or_load(format!("product:{i}"), move || async move {
                Ok::<_, Infallible>(Some(row(i)))
            })
            .await
            .unwrap();
        assert!(got.is_some());
    }
    let aside_db = cmd_i64(&mut conn, &["DBSIZE"]).await;
    let aside_bytes = (used_memory(&mut conn).await - m0) as f64 / N_REDIS as f64;
    let entry_key = cache.physical_key("product:1");
    let aside_usage = cmd_i64(&mut conn, &["MEMORY", "USAGE", &entry_key]).await;
    let entry_len = cmd_i64(&mut conn, &["STRLEN", &entry_key]).await;
    let sample_other: Vec<String> = all_keys(&mut conn)
        .await
        .into_iter()
        .filter(|k| !k.contains("product:"))
        .take(5)
        .collect();

    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let m1 = used_memory(&mut conn).await;
    for i in 0..N_REDIS {
        let () = redis::cmd("SETEX")
            .arg(format!("product:{i}"))
            .arg(600)
            // Named fields, as aside encodes: the difference is then aside's
            // header and key layout, not the payload format.
            .arg(rmp_serde::to_vec_named(&row(i)).unwrap())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let naive_db = cmd_i64(&mut conn, &["DBSIZE"]).await;
    let naive_bytes = (used_memory(&mut conn).await - m1) as f64 / N_REDIS as f64;
    let naive_usage = cmd_i64(&mut conn, &["MEMORY", "USAGE", "product:1"]).await;
    let naive_len = cmd_i64(&mut conn, &["STRLEN", "product:1"]).await;

    // Bytes per key by value size: aside's entries against a plain SETEX of
    // the same MessagePack value, under the same key names (the namespace
    // as a prefix; aside adds its hash-tag braces).
    let mut sized = Vec::new();
    for size in [16usize, 100, 1024] {
        // Hex digits from a fixed LCG: nothing LZ4 (above 1 KiB) can
        // shrink, so both store the whole value.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let value: String = (0..size.saturating_sub(3))
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                char::from_digit(((x >> 60) & 0xf) as u32, 16).unwrap_or('0')
            })
            .collect();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        let m0 = used_memory(&mut conn).await;
        for i in 0..N_REDIS {
            let v = value.clone();
            let got: Option<String> = cache
                .get_or_load(format!("sized:{i}"), move || async move {
                    Ok::<_, Infallible>(Some(v))
                })
                .await
                .unwrap();
            assert!(got.is_some());
        }
        let aside = (used_memory(&mut conn).await - m0) as f64 / N_REDIS as f64;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        let m1 = used_memory(&mut conn).await;
        let bytes = rmp_serde::to_vec_named(&value).unwrap();
        for i in 0..N_REDIS {
            let () = redis::cmd("SETEX")
                .arg(format!("mem:sized:{i}"))
                .arg(600)
                .arg(bytes.as_slice())
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let naive = (used_memory(&mut conn).await - m1) as f64 / N_REDIS as f64;
        sized.push((bytes.len(), aside, naive));
    }

    // The keys of one load in flight (tagged, so its tag token shows too).
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let c2 = cache.clone();
    let slow = tokio::spawn(async move {
        c2.get_or_load_with("slow", &EntryOptions::new().tag("t"), || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Infallible>(Some(product()))
        })
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut in_flight = Vec::new();
    for k in all_keys(&mut conn).await {
        let ty: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        let usage = cmd_i64(&mut conn, &["MEMORY", "USAGE", &k]).await;
        in_flight.push((k, ty, usage));
    }
    assert!(slow.await.unwrap().is_some());
    let after_fill: Vec<String> = all_keys(&mut conn).await;

    println!("\nRedis memory ({N_REDIS} keys loaded through each)");
    let mut t = table(&[
        "",
        "DBSIZE",
        "used_memory / key",
        "MEMORY USAGE of one entry",
        "STRLEN",
    ]);
    t.add_row(vec![
        "aside get_or_load".to_owned(),
        aside_db.to_string(),
        format!("{aside_bytes:.0} B"),
        format!("{aside_usage} B"),
        format!("{entry_len} B"),
    ]);
    t.add_row(vec![
        "naive SETEX of the same MessagePack (named)".to_owned(),
        naive_db.to_string(),
        format!("{naive_bytes:.0} B"),
        format!("{naive_usage} B"),
        format!("{naive_len} B"),
    ]);
    println!("{t}");
    let mut t = table(&[
        "value bytes",
        "aside used_memory / key",
        "SETEX used_memory / key",
        "aside / SETEX",
    ]);
    for (len, aside, naive) in &sized {
        t.add_row(vec![
            len.to_string(),
            format!("{aside:.0} B"),
            format!("{naive:.0} B"),
            format!("{:.3}", aside / naive),
        ]);
    }
    println!("{t}");
    println!("keys other than entries after the {N_REDIS} loads (sample): {sample_other:?}");
    println!("one tagged load in flight holds (key, type, MEMORY USAGE): {in_flight:?}");
    println!("after its fill: {after_fill:?}");
    json!({
        "process": {"n": N_PROCESS, "moka_bytes_per_entry": m.json(), "aside_bytes_per_entry": a.json()},
        "redis": {
            "n": N_REDIS, "aside_dbsize": aside_db, "naive_dbsize": naive_db,
            "aside_used_memory_per_key": aside_bytes, "naive_used_memory_per_key": naive_bytes,
            "aside_memory_usage_entry": aside_usage, "naive_memory_usage_entry": naive_usage,
            "aside_strlen": entry_len, "naive_strlen": naive_len,
            "in_flight_keys": in_flight.iter().map(|(k, t, u)| json!({"key": k, "type": t, "bytes": u})).collect::<Vec<_>>(),
            "keys_after_fill": after_fill,
            "by_value_size": sized.iter().map(|(len, a, n)| json!({"value_bytes": len, "aside_used_memory_per_key": a, "setex_used_memory_per_key": n})).collect::<Vec<_>>(),
        }
    })
}
