//! Scenario 5: the seeds' Python read path (`benches/python/seed_cache.py`,
//! redis-py, threads) against aside's Redis hit at the same concurrency, on
//! the same Redis. Rounds alternate a Python run (its own process, a fixed
//! time) and aside blocks; the figure is aside's ops/s over Python's. Three
//! aside contenders: its Redis backend as built by default (one `GET` per
//! read, the same work as the seed), its Redis backend with
//! `coalesce_reads(true)` (concurrent reads of the hot key share `GET`s
//! sent after each of them began), and its tiered backend (an L1 hit, the
//! deployment that keeps reads off the network).
//!
//! Needs `python3` with redis-py; without it the scenario says so and is
//! skipped (no figures are made up).

use std::process::Command;

use serde_json::{Value, json};

use super::hit::{Contender, block, memory_contenders, redis_contenders};
use super::{Opts, Spread, ratios, table, verdict};

const THREADS: [usize; 2] = [1, 64];
const TARGET: f64 = 20.0;
const PY_SECONDS: &str = "2";

fn script() -> String {
    format!("{}/python/seed_cache.py", env!("CARGO_MANIFEST_DIR"))
}

/// Why Python cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    match Command::new("python3")
        .args(["-c", "import redis"])
        .output()
    {
        Err(e) => Some(format!("python3 not found ({e})")),
        Ok(o) if !o.status.success() => Some(format!(
            "redis-py is missing (`pip install redis`): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

fn python_run(url: &str, threads: usize) -> Value {
    let out = Command::new("python3")
        .args([&script(), url, &threads.to_string(), PY_SECONDS])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "seed_cache.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub async fn run(opts: &Opts) -> Value {
    if let Some(why) = unavailable() {
        println!("\nPython seed: SKIPPED, {why}");
        return json!({ "skipped": why });
    }
    let redis = redis_contenders(&opts.url).await;
    let find = |name: &str| {
        redis
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.clone())
            .unwrap()
    };
    let (apart, shared) = (find("aside (Redis)"), find("aside (Redis, coalesce_reads)"));
    let tiered = memory_contenders(&opts.url)
        .await
        .into_iter()
        .find(|(n, _)| *n == "aside (tiered, L1 hit)")
        .map(|(_, c)| c)
        .unwrap();
    let rounds = opts.rounds.clamp(1, 3);
    println!("\nPython seed (redis-py, threads, JSON) vs aside Redis hit, {rounds} rounds");
    let mut t = table(&[
        "threads/tasks",
        "Python ops/s (median)",
        "Python p50 / p99",
        "aside Redis ops/s",
        "/ Python (median, min..max)",
        "aside Redis coalesce_reads: ops/s",
        "/ Python",
        "aside tiered ops/s",
        "aside tiered / Python",
        "target >= 20x",
    ]);
    let mut out = Vec::new();
    for n in THREADS {
        let (mut py, mut rs, mut sh, mut tr, mut py_lat) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            for who in super::rotation(4, r) {
                match who {
                    0 => {
                        let v = python_run(&opts.url, n);
                        py.push(v["ops_per_s"].as_f64().unwrap());
                        py_lat.push((v["p50_us"].as_f64().unwrap(), v["p99_us"].as_f64().unwrap()));
                    }
                    1 => rs.push(aside_ops_per_s(&apart, n, false).await),
                    2 => sh.push(aside_ops_per_s(&shared, n, false).await),
                    _ => tr.push(aside_ops_per_s(&tiered, n, true).await),
                }
            }
        }
        let ratio = Spread::of(&ratios(&rs, &py));
        let shared_ratio = Spread::of(&ratios(&sh, &py));
        let tiered_ratio = Spread::of(&ratios(&tr, &py));
        let (p50, p99) = py_lat[py_lat.len() / 2];
        t.add_row(vec![
            n.to_string(),
            format!("{:.0}", Spread::of(&py).median),
            format!("{p50:.0} µs / {p99:.0} µs"),
            format!("{:.0}", Spread::of(&rs).median),
            ratio.show(1),
            format!("{:.0}", Spread::of(&sh).median),
            shared_ratio.show(1),
            format!("{:.0}", Spread::of(&tr).median),
            tiered_ratio.show(0),
            format!(
                "Redis: {}; Redis coalesce_reads: {}; tiered: {}",
                verdict(ratio.median >= TARGET),
                verdict(shared_ratio.median >= TARGET),
                verdict(tiered_ratio.median >= TARGET)
            ),
        ]);
        out.push(json!({
            "concurrency": n, "python_ops_per_s": py, "aside_ops_per_s": rs,
            "aside_tiered_ops_per_s": tr, "aside_coalescing_ops_per_s": sh,
            "coalescing_ratio": shared_ratio.json(), "coalescing_met": shared_ratio.median >= TARGET,
            "python_p50_p99_us": py_lat, "ratio": ratio.json(),
            "tiered_ratio": tiered_ratio.json(),
            "target": TARGET, "met": ratio.median >= TARGET,
            "tiered_met": tiered_ratio.median >= TARGET,
        }));
    }
    println!("{t}");
    Value::Array(out)
}

/// aside's Redis hit throughput at `tasks` concurrent tasks, over about as
/// many ops as keep the block near a second.
async fn aside_ops_per_s(aside: &Contender, tasks: usize, in_memory: bool) -> f64 {
    let per_task = match (in_memory, tasks) {
        (true, 1) => 2_000_000,
        (true, _) => 30_000,
        (false, 1) => 5_000,
        (false, _) => 400,
    };
    let (took, _) = block(aside, tasks, per_task, false).await;
    (tasks as f64 * f64::from(per_task)) / took.as_secs_f64()
}
