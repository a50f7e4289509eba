//! Scenario `curves`: how costs scale, one curve per question, each point
//! the median of the run's rounds (interleaved where two contenders meet).
//!
//! - **Tags per entry** (0, 1, 4, 16): a hit's time on the memory backend
//!   and on Redis. A tagged entry is read with its tags' current tokens in
//!   the same round trip; each tag adds a token to read and compare.
//! - **Entries carrying a tag** (1 to 100,000): the time of one tag
//!   invalidation. aside bumps one token, whatever the number of entries;
//!   the seeds keep a Redis set of the keys per tag (`SADD` on every fill)
//!   and invalidate by reading it and deleting every key (`SMEMBERS`,
//!   `DEL` in chunks of 1,000, then the set).
//! - **Concurrent tasks** (1 to 256): hits per second on the memory
//!   backend against a raw moka `get`, and on Redis against a raw
//!   redis-rs `GET` + decode, interleaved; every task reads 1,000 keys in
//!   turn (from its own offset), as a service reading many items does.
//!
//! `--plots DIR` draws the three as `curves.png` (see `plot`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aside::backend::{MemoryBackend, RedisBackend};
use aside::{Cache, EntryOptions};
use plotters::prelude::*;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};

use super::{Opts, Spread, table};
use crate::{Product, product};

const TAGS: [usize; 4] = [0, 1, 4, 16];
const CARRIERS: [usize; 4] = [1, 100, 10_000, 100_000];
const TASKS: [usize; 5] = [1, 4, 16, 64, 256];
/// Keys the throughput curve reads in turn.
const KEYS: usize = 1_000;
/// Hits per point and round in process (each key read ~100 times).
const IN_PROCESS_HITS: usize = 100_000;
/// Hits timed per point and round.
const HITS: usize = 4_000;

fn tagged(n: usize) -> EntryOptions {
    (0..n).fold(EntryOptions::new(), |o, i| o.tag(format!("t{i}")))
}

async fn hit(cache: &Cache, key: &str, options: &EntryOptions) -> Product {
    cache
        .get_or_load_with(key, options, || async {
            Ok::<_, std::convert::Infallible>(Some(product()))
        })
        .await
        .unwrap()
        .unwrap()
}

/// Nanoseconds per hit of `key` with `tags` tags, `HITS` hits, one task.
async fn per_hit(cache: &Cache, key: &str, tags: usize) -> f64 {
    let options = tagged(tags);
    hit(cache, key, &options).await;
    let started = Instant::now();
    for _ in 0..HITS {
        std::hint::black_box(hit(cache, key, &options).await);
    }
    started.elapsed().as_nanos() as f64 / HITS as f64
}

async fn tags_curve(opts: &Opts) -> Value {
    let memory = Cache::builder()
        .backend(MemoryBackend::new())
        .namespace("curve-tags")
        .build()
        .unwrap();
    let redis = Cache::builder()
        .backend(RedisBackend::new(&opts.url).unwrap())
        .namespace("curve-tags")
        .build()
        .unwrap();
    let mut rows = Vec::new();
    let mut t = table(&["tags per entry", "memory hit", "Redis hit"]);
    for n in TAGS {
        let (mut m, mut r) = (Vec::new(), Vec::new());
        for _ in 0..opts.rounds.max(3) {
            m.push(per_hit(&memory, &format!("k{n}"), n).await);
            r.push(per_hit(&redis, &format!("k{n}"), n).await);
        }
        let (m, r) = (Spread::of(&m).median, Spread::of(&r).median);
        t.add_row(vec![
            n.to_string(),
            format!("{m:.0} ns"),
            format!("{:.1} µs", r / 1e3),
        ]);
        rows.push(json!({"tags": n, "memory_ns": m, "redis_ns": r}));
    }
    println!("\nHit cost against tags per entry (1 task, median of rounds)\n{t}");
    Value::Array(rows)
}

/// The seeds' tag sets: every entry's key added to its tag's set.
async fn fill_tag_set(conn: &mut ConnectionManager, n: usize) {
    for start in (0..n).step_by(1_000) {
        let mut pipe = redis::pipe();
        for i in start..n.min(start + 1_000) {
            let key = format!("seed:p:{i}");
            pipe.cmd("SET").arg(&key).arg("v").ignore();
            pipe.cmd("SADD").arg("seed:tag:c").arg(&key).ignore();
        }
        let () = pipe.query_async(conn).await.unwrap();
    }
}

/// The seeds' invalidation: every key in the set deleted, then the set.
async fn invalidate_tag_set(conn: &mut ConnectionManager) {
    let keys: Vec<String> = redis::cmd("SMEMBERS")
        .arg("seed:tag:c")
        .query_async(conn)
        .await
        .unwrap();
    for chunk in keys.chunks(1_000) {
        let _: i64 = redis::cmd("DEL")
            .arg(chunk)
            .query_async(conn)
            .await
            .unwrap();
    }
    let _: i64 = redis::cmd("DEL")
        .arg("seed:tag:c")
        .query_async(conn)
        .await
        .unwrap();
}

async fn carriers_curve(opts: &Opts) -> Value {
    let mut conn = redis::Client::open(opts.url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let cache = Cache::builder()
        .backend(RedisBackend::new(&opts.url).unwrap())
        .namespace("curve-carriers")
        .build()
        .unwrap();
    let options = EntryOptions::new().tag("c");
    let mut loaded = 0;
    let mut rows = Vec::new();
    let mut t = table(&[
        "entries carrying the tag",
        "aside invalidate_tag",
        "tag set (seeds)",
    ]);
    for n in CARRIERS {
        // aside: the entries are really there (loaded in batches of 1,000).
        while loaded < n {
            let keys: Vec<String> = (loaded..n.min(loaded + 1_000))
                .map(|i| format!("p:{i}"))
                .collect();
            loaded += keys.len();
            let _: Vec<Option<u64>> = cache
                .get_many_or_load_with(&keys, &options, |misses| async move {
                    Ok::<_, std::convert::Infallible>(
                        misses.into_iter().map(|k| (k, 1u64)).collect(),
                    )
                })
                .await
                .unwrap();
        }
        let (mut a, mut s) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let started = Instant::now();
            assert!(cache.invalidate_tag("c").await.unwrap().is_applied());
            a.push(started.elapsed().as_nanos() as f64);
            fill_tag_set(&mut conn, n).await;
            let started = Instant::now();
            invalidate_tag_set(&mut conn).await;
            s.push(started.elapsed().as_nanos() as f64);
        }
        let (a, s) = (Spread::of(&a).median, Spread::of(&s).median);
        t.add_row(vec![
            n.to_string(),
            format!("{:.1} µs", a / 1e3),
            format!("{:.1} µs", s / 1e3),
        ]);
        rows.push(json!({"entries": n, "aside_ns": a, "tag_set_ns": s}));
    }
    println!("\nOne tag invalidation against the entries carrying the tag (median of 3)\n{t}");
    Value::Array(rows)
}

/// Hits per second of `f` (given the key's number) on `tasks` tasks,
/// `hits` in all, each task from its own offset in the keys.
async fn throughput<F, Fut>(tasks: usize, hits: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Product> + Send,
{
    let per = (hits / tasks).max(50);
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let f = f.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    std::hint::black_box(f((t * 37 + i) % KEYS).await);
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (per * tasks) as f64 / started.elapsed().as_secs_f64()
}

async fn tasks_curve(opts: &Opts) -> Value {
    let moka: moka::future::Cache<String, Product> = moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(3_600))
        .build();
    let memory = Cache::builder()
        .backend(MemoryBackend::new())
        .build()
        .unwrap();
    let redis = Cache::builder()
        .backend(RedisBackend::new(&opts.url).unwrap())
        .namespace("curve-tasks")
        .build()
        .unwrap();
    let plain = EntryOptions::new();
    let keys: Arc<[String]> = (0..KEYS).map(|i| format!("product:{i}")).collect();
    let physical: Arc<[String]> = keys.iter().map(|k| redis.physical_key(k)).collect();
    for key in keys.iter() {
        moka.insert(key.clone(), product()).await;
        hit(&memory, key, &plain).await;
        hit(&redis, key, &plain).await;
    }
    let conn = redis::Client::open(opts.url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let mut rows = Vec::new();
    let mut t = table(&[
        "tasks",
        "aside memory / moka (hits/s)",
        "aside Redis / raw GET + decode (hits/s)",
    ]);
    for tasks in TASKS {
        let (mut mm, mut ma, mut rr, mut ra) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..opts.rounds.max(3) {
            let moka_hit = {
                let (moka, keys) = (moka.clone(), keys.clone());
                move |i: usize| {
                    let (moka, keys) = (moka.clone(), keys.clone());
                    async move { moka.get(&keys[i]).await.unwrap() }
                }
            };
            let memory_hit = {
                let (memory, keys) = (memory.clone(), keys.clone());
                move |i: usize| {
                    let (memory, keys) = (memory.clone(), keys.clone());
                    async move { hit(&memory, &keys[i], &EntryOptions::new()).await }
                }
            };
            let raw_hit = {
                let (conn, physical) = (conn.clone(), physical.clone());
                move |i: usize| {
                    let (mut conn, physical) = (conn.clone(), physical.clone());
                    async move {
                        let bytes: Vec<u8> = redis::cmd("GET")
                            .arg(&physical[i])
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        rmp_serde::from_slice::<Product>(&bytes[super::hit::HEADER..]).unwrap()
                    }
                }
            };
            let redis_hit = {
                let (redis, keys) = (redis.clone(), keys.clone());
                move |i: usize| {
                    let (redis, keys) = (redis.clone(), keys.clone());
                    async move { hit(&redis, &keys[i], &EntryOptions::new()).await }
                }
            };
            if round % 2 == 0 {
                mm.push(throughput(tasks, IN_PROCESS_HITS, moka_hit).await);
                ma.push(throughput(tasks, IN_PROCESS_HITS, memory_hit).await);
                rr.push(throughput(tasks, HITS, raw_hit).await);
                ra.push(throughput(tasks, HITS, redis_hit).await);
            } else {
                ra.push(throughput(tasks, HITS, redis_hit).await);
                rr.push(throughput(tasks, HITS, raw_hit).await);
                ma.push(throughput(tasks, IN_PROCESS_HITS, memory_hit).await);
                mm.push(throughput(tasks, IN_PROCESS_HITS, moka_hit).await);
            }
        }
        let [mm, ma, rr, ra] = [&mm, &ma, &rr, &ra].map(|v| Spread::of(v).median);
        t.add_row(vec![
            tasks.to_string(),
            format!("{ma:.0} / {mm:.0} = {:.2}", ma / mm),
            format!("{ra:.0} / {rr:.0} = {:.2}", ra / rr),
        ]);
        rows.push(json!({
            "tasks": tasks, "moka": mm, "aside_memory": ma,
            "raw_redis": rr, "aside_redis": ra,
        }));
    }
    println!(
        "\nHit throughput against concurrent tasks ({KEYS} keys in turn, median of rounds)\n{t}"
    );
    Value::Array(rows)
}

pub async fn run(opts: &Opts) -> Value {
    json!({
        "tags": tags_curve(opts).await,
        "carriers": carriers_curve(opts).await,
        "tasks": tasks_curve(opts).await,
    })
}

/// One curve of a panel: its name and `(x, y)` points.
type Curve = (String, Vec<(f64, f64)>);

fn points(rows: &Value, x: &str, y: &str, scale: f64) -> Vec<(f64, f64)> {
    rows.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r[x].as_f64()?, r[y].as_f64()? / scale)))
        .collect()
}

/// `curves.png`: the three curves of the summary's `curves`, one panel
/// each, both axes logarithmic (x from 1; tags per entry plotted at n + 1).
///
/// # Errors
/// When the file cannot be written.
pub fn plot(dir: &Path, curves: &Value) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let shift = |v: Vec<(f64, f64)>| v.into_iter().map(|(x, y)| (x + 1.0, y)).collect();
    let panels: Vec<Panel<'_>> = vec![
        (
            "Hit cost against tags per entry",
            "tags per entry + 1",
            "µs per hit",
            vec![
                (
                    "aside memory".into(),
                    shift(points(&curves["tags"], "tags", "memory_ns", 1e3)),
                ),
                (
                    "aside Redis".into(),
                    shift(points(&curves["tags"], "tags", "redis_ns", 1e3)),
                ),
            ],
        ),
        (
            "One tag invalidation against entries carrying it",
            "entries carrying the tag",
            "ms per invalidation",
            vec![
                (
                    "aside (one token)".into(),
                    points(&curves["carriers"], "entries", "aside_ns", 1e6),
                ),
                (
                    "tag set (seeds)".into(),
                    points(&curves["carriers"], "entries", "tag_set_ns", 1e6),
                ),
            ],
        ),
        (
            "Hit throughput against concurrent tasks",
            "tasks",
            "thousand hits per second",
            vec![
                (
                    "raw moka".into(),
                    points(&curves["tasks"], "tasks", "moka", 1e3),
                ),
                (
                    "aside memory".into(),
                    points(&curves["tasks"], "tasks", "aside_memory", 1e3),
                ),
                (
                    "raw redis-rs GET".into(),
                    points(&curves["tasks"], "tasks", "raw_redis", 1e3),
                ),
                (
                    "aside Redis".into(),
                    points(&curves["tasks"], "tasks", "aside_redis", 1e3),
                ),
            ],
        ),
    ];
    let path = dir.join("curves.png");
    draw(&path, panels)?;
    Ok(path)
}

/// The panels of `curves.png`, each a title, its axes' descriptions and
/// its curves.
type Panel<'a> = (&'a str, &'a str, &'a str, Vec<Curve>);

fn draw(path: &Path, panels: Vec<Panel<'_>>) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1400, 1400)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((2, 2));
    for (area, (title, x_desc, y_desc, curves)) in areas.iter().zip(panels) {
        let all = curves.iter().flat_map(|(_, p)| p.iter().copied());
        let (x_hi, y_lo, y_hi) = all.fold((1.0f64, f64::INFINITY, 0.0f64), |(x, lo, hi), p| {
            (x.max(p.0), lo.min(p.1), hi.max(p.1))
        });
        let y_lo = if y_lo.is_finite() {
            y_lo.max(1e-3) * 0.5
        } else {
            1e-3
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (1.0..x_hi * 1.5).log_scale(),
                (y_lo..y_hi.max(y_lo) * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, (name, pts)) in curves.iter().enumerate() {
            let style = Palette99::pick(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 20, y)],
                        Palette99::pick(i).stroke_width(2),
                    )
                });
            chart.draw_series(
                pts.iter()
                    .map(|p| Circle::new(*p, 3, Palette99::pick(i).filled())),
            )?;
        }
        super::plots::legend(&mut chart)?;
    }
    root.present()?;
    Ok(())
}
