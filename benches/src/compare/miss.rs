//! Scenario 3: the miss path with a 1 ms loader, one task, a fresh key per
//! call. aside's `get_or_load` on Redis (lease script, loader, fill script)
//! against naive cache-aside (`GET`, load, `SET EX` of the MessagePack
//! bytes). The loader is the same `tokio::time::sleep(1 ms)` for both.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use aside::Cache;
use aside::backend::RedisBackend;
use hdrhistogram::Histogram;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};

use super::{Opts, Spread, histogram, human_ns, ratios, record, rotation, table};
use crate::{Product, product};

const LOADER: Duration = Duration::from_millis(1);
const PER_BLOCK: u32 = 20;

async fn loader() -> Product {
    tokio::time::sleep(LOADER).await;
    product()
}

async fn naive(conn: &mut ConnectionManager, key: &str) -> Product {
    let got: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
    if let Some(bytes) = got {
        return rmp_serde::from_slice(&bytes).unwrap();
    }
    let v = loader().await;
    let () = redis::cmd("SET")
        .arg(key)
        .arg(rmp_serde::to_vec(&v).unwrap())
        .arg("EX")
        .arg(600)
        .query_async(conn)
        .await
        .unwrap();
    v
}

pub async fn run(opts: &Opts) -> Value {
    let cache = Cache::builder()
        .backend(RedisBackend::new(&opts.url).unwrap())
        .namespace("miss")
        .build()
        .unwrap();
    let mut conn = redis::Client::open(opts.url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let names = ["naive GET + load + SET EX", "aside get_or_load"];
    let mut per_op: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut lat: [Histogram<u64>; 2] = [histogram(), histogram()];
    let mut seq = 0u64;
    // Round 0 warms up (scripts loaded, connections open) and is not counted.
    for round in 0..=opts.rounds {
        for i in rotation(2, round) {
            let start = Instant::now();
            for _ in 0..PER_BLOCK {
                seq += 1;
                let key = format!("miss:{seq}");
                let t = Instant::now();
                let v = if i == 0 {
                    naive(&mut conn, &key).await
                } else {
                    cache
                        .get_or_load(&key, || async { Ok::<_, Infallible>(Some(loader().await)) })
                        .await
                        .unwrap()
                        .unwrap()
                };
                assert_eq!(v, product());
                if round > 0 {
                    record(&mut lat[i], t.elapsed());
                }
            }
            if round > 0 {
                per_op[i].push(start.elapsed().as_secs_f64() * 1e9 / f64::from(PER_BLOCK));
            }
        }
    }
    println!("\nMiss path: 1 ms loader, fresh key per call, one task");
    let mut t = table(&[
        "contender",
        "time per miss (median, min..max)",
        "p50",
        "p99",
    ]);
    for i in 0..2 {
        let s = Spread::of(&per_op[i]);
        t.add_row(vec![
            names[i].to_owned(),
            format!(
                "{} ({}..{})",
                human_ns(s.median),
                human_ns(s.min),
                human_ns(s.max)
            ),
            human_ns(lat[i].value_at_quantile(0.5) as f64),
            human_ns(lat[i].value_at_quantile(0.99) as f64),
        ]);
    }
    println!("{t}");
    let r = Spread::of(&ratios(&per_op[1], &per_op[0]));
    let extra = Spread::of(
        &per_op[1]
            .iter()
            .zip(&per_op[0])
            .map(|(a, n)| a - n)
            .collect::<Vec<_>>(),
    );
    println!(
        "aside / naive time per miss: {} (aside's extra per miss: {} median)",
        r.show(3),
        human_ns(extra.median)
    );
    json!({
        "loader_ms": 1,
        "naive_ns": Spread::of(&per_op[0]).json(),
        "aside_ns": Spread::of(&per_op[1]).json(),
        "naive_p50_ns": lat[0].value_at_quantile(0.5), "naive_p99_ns": lat[0].value_at_quantile(0.99),
        "aside_p50_ns": lat[1].value_at_quantile(0.5), "aside_p99_ns": lat[1].value_at_quantile(0.99),
        "ratio_aside_over_naive": r.json(),
        "extra_ns": extra.json(),
    })
}
