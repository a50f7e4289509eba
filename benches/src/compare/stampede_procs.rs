//! Scenario 4b (`--only stampede4`): the stampede over four processes. N
//! callers (100, 1,000), N/4 in each of four processes, ask for one cold
//! key at once; the loader takes 50 ms and each process counts its calls.
//!
//! The harness runs this binary four times as children (`--stampede-child
//! URL INDEX`), each with its own tokio runtime (2 workers, as the parent),
//! its own Redis connections and its own `Cache` over `RedisBackend`: one
//! load per round then needs aside's Redis lease, not its in-process single
//! flight. The contenders are those of the stampede in one process
//! (`stampede.rs`, shared code), plus the `cached` crate's Redis macro:
//!
//! - naive cache-aside on Redis; the seeds' `SET NX` lock + 100 ms poll;
//! - aside, one `Cache` per process;
//! - `#[concurrent_cached(redis = true, ttl_secs = 300)]` (a static
//!   `AsyncRedisCache` per process, URL from `CACHED_REDIS_CONNECTION_STRING`);
//! - `#[cached(sync_writes = "by_key")]`: in memory, so its lock is per
//!   process and 4 loads per round are what it is built to give.
//!
//! Per round the parent sends each child one line (strategy, callers, a fresh
//! key, a start time 100 ms ahead on the system clock). A child spawns its
//! callers, which wait on a local barrier; it sleeps until the start time and
//! releases them; each caller times from its own start to its answer. The
//! child answers one JSON line: its latencies, loader calls, wrong values
//! and how late it released (the parent reports the spread of the four
//! release times: a late process finds more of the work done). The parent
//! sums the loader calls over the processes and counts Redis commands per
//! round (`INFO` delta).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aside::Cache;
use aside::backend::RedisBackend;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::stampede::{
    CALLERS, CALLS, LOAD_NS_MAX, Strategy, Tally, commands, gather, report, spawn_callers,
};
use super::{Opts, histogram, human_ns, record};

const PROCESSES: usize = 4;
/// How far ahead of "now" the parent sets a round's start: time for every
/// child to read its line and spawn its callers on a busy machine.
const LEAD: Duration = Duration::from_millis(100);
const STRATEGIES: [Strategy; 5] = [
    Strategy::Naive,
    Strategy::SeedLock,
    Strategy::Aside,
    Strategy::CachedRedis,
    Strategy::CachedByKey,
];

fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The child: reads one round per line on stdin until EOF, answers one JSON
/// line per round on stdout.
pub fn child(url: &str, index: usize) {
    let rt = crate::runtime().unwrap();
    rt.block_on(async {
        let conn = redis::Client::open(url)
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let cache = Cache::builder()
            .backend(RedisBackend::new(url).unwrap())
            .namespace("stampede4")
            .build()
            .unwrap();
        let _: Option<String> = cache.get("warm-up").await.unwrap();
        println!("ready");
        // Blocking reads are fine here: `block_on` runs this future on the
        // main thread, the callers and aside's tasks on the two workers.
        for line in std::io::stdin().lock().lines() {
            let line = line.unwrap();
            let msg: Value = serde_json::from_str(&line).unwrap();
            let s = Strategy::from_tag(msg["strategy"].as_str().unwrap()).unwrap();
            let n = usize::try_from(msg["callers"].as_u64().unwrap()).unwrap();
            let key = msg["key"].as_str().unwrap().to_owned();
            let start_at = msg["start_unix_ns"].as_i64().unwrap();
            CALLS.store(0, Relaxed);
            LOAD_NS_MAX.store(0, Relaxed);
            let stats_before = cache.stats();
            let (barrier, callers) =
                spawn_callers(s, &conn, &cache, &key, n, &format!("p{index}-"));
            let wait = start_at - unix_ns(SystemTime::now());
            if wait > 0 {
                tokio::time::sleep(Duration::from_nanos(wait.unsigned_abs())).await;
            }
            barrier.wait().await;
            let late_ns = unix_ns(SystemTime::now()) - start_at;
            let (took, wrong) = gather(callers).await;
            let lat: Vec<u64> = took
                .iter()
                .map(|t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
                .collect();
            // What aside's callers did in this process (zero for the others).
            let (a, b) = (cache.stats(), stats_before);
            let out = json!({
                "latencies_ns": lat, "loads": CALLS.load(Relaxed),
                "wrong": wrong, "late_ns": late_ns, "ahead_ns": wait,
                "loader_max_ns": LOAD_NS_MAX.load(Relaxed),
                "aside": [a.joined - b.joined, a.lease_waits - b.lease_waits,
                    a.lease_timeouts - b.lease_timeouts, a.joins_retried - b.joins_retried,
                    a.backend_errors - b.backend_errors, a.backend_timeouts - b.backend_timeouts],
            });
            println!("{out}");
        }
    });
}

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(url: &str, index: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--stampede-child", url, &index.to_string()])
            .env("CACHED_REDIS_CONNECTION_STRING", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line).unwrap();
        assert!(read > 0, "a stampede child exited early");
        line
    }
}

/// One round over every process; the children's answers in process order.
fn exchange(procs: &mut [Proc], s: Strategy, per_proc: usize, key: &str) -> Vec<Value> {
    let start_at = unix_ns(SystemTime::now() + LEAD);
    let msg = json!({
        "strategy": s.tag(), "callers": per_proc, "key": key, "start_unix_ns": start_at,
    });
    for p in procs.iter_mut() {
        writeln!(p.stdin, "{msg}").unwrap();
        p.stdin.flush().unwrap();
    }
    procs
        .iter_mut()
        .map(|p| serde_json::from_str(&p.read_line()).unwrap())
        .collect()
}

pub async fn run(opts: &Opts) -> Value {
    let conn = redis::Client::open(opts.url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let mut procs: Vec<Proc> = (0..PROCESSES).map(|i| Proc::spawn(&opts.url, i)).collect();
    // The blocking pipe reads run on this worker (block_in_place): the
    // parent has nothing else to do while a round runs in the children.
    tokio::task::block_in_place(|| {
        for p in &mut procs {
            assert_eq!(p.read_line().trim(), "ready");
        }
    });
    let rounds = opts.rounds.min(10);
    let (mut tallies, mut late_all, mut ahead_min) = (Vec::new(), Vec::new(), i64::MAX);
    // Per row, per round: the spread of the processes' release times (last
    // minus first): a process that releases late finds more of the work
    // done by the others, and its callers time from their own start.
    let mut spread_all = Vec::new();
    let mut extra_rows: Vec<Vec<Value>> = Vec::new();
    let mut splits: Vec<[Histogram<u64>; 2]> = Vec::new();
    for n in CALLERS {
        let mut by: Vec<Tally> = STRATEGIES.iter().map(|s| Tally::new(*s, n)).collect();
        let mut extra_by = vec![Vec::new(); STRATEGIES.len()];
        // Callers in a process that ran the loader, and in one that did not.
        let mut split: Vec<[Histogram<u64>; 2]> = STRATEGIES
            .iter()
            .map(|_| [histogram(), histogram()])
            .collect();
        // Round 0 warms up (connections, `cached`'s lazily built store) and
        // is not counted.
        for r in 0..=rounds {
            for i in super::rotation(STRATEGIES.len(), r) {
                let key = format!("p{i}:{n}:{r}");
                // Let stragglers (background fills, lock deletes) settle
                // before the count starts.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let before = commands(&conn).await;
                let answers = tokio::task::block_in_place(|| {
                    exchange(&mut procs, STRATEGIES[i], n / PROCESSES, &key)
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
                let cmds = commands(&conn).await - before - 1;
                if r == 0 {
                    continue;
                }
                let (mut lat, mut loads, mut wrong) = (Vec::new(), 0, 0);
                let (mut first, mut last) = (i64::MAX, i64::MIN);
                let (mut counters, mut loader_max) = ([0_u64; 6], 0);
                for a in &answers {
                    let mine: Vec<Duration> = a["latencies_ns"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|ns| Duration::from_nanos(ns.as_u64().unwrap()))
                        .collect();
                    let side = usize::from(a["loads"].as_u64().unwrap() == 0);
                    for d in &mine {
                        record(&mut split[i][side], *d);
                    }
                    lat.extend(mine);
                    loads += a["loads"].as_u64().unwrap();
                    wrong += a["wrong"].as_u64().unwrap();
                    let late = a["late_ns"].as_i64().unwrap();
                    (first, last) = (first.min(late), last.max(late));
                    late_all.push(late);
                    loader_max = a["loader_max_ns"].as_u64().unwrap().max(loader_max);
                    for (sum, c) in counters.iter_mut().zip(a["aside"].as_array().unwrap()) {
                        *sum += c.as_u64().unwrap();
                    }
                    ahead_min = ahead_min.min(a["ahead_ns"].as_i64().unwrap());
                }
                by[i].add_round(&lat, loads, cmds, wrong);
                extra_by[i].push(json!({
                    "release_spread_ns": last - first, "aside_counters": counters,
                    "loader_max_ns": loader_max,
                }));
                spread_all.push(last - first);
            }
        }
        extra_rows.extend(extra_by);
        splits.extend(split);
        tallies.extend(by);
    }
    for mut p in procs {
        drop(p.stdin);
        let status = tokio::task::block_in_place(|| p.child.wait().unwrap());
        assert!(status.success(), "a stampede child failed: {status}");
    }
    let mut v = report(
        &format!(
            "Stampede over {PROCESSES} processes: N callers (N/{PROCESSES} per process), one cold \
             key, 50 ms loader ({rounds} rounds each; cached by_key locks per process)"
        ),
        &tallies,
    );
    println!(
        "p50 of the callers in the process(es) that ran the loader / in those that did not; the \
         longest run of the 50 ms loader (the sleep overruns when the machine is busy):"
    );
    let rows = v.as_array_mut().unwrap().iter_mut();
    for ((row, extra), [loaded, waited]) in rows.zip(extra_rows).zip(splits) {
        // aside's counters over the processes, per round: coalesced, lease
        // waits, lease timeouts, joins retried, backend errors, timeouts.
        let p50 = |h: &Histogram<u64>| (!h.is_empty()).then(|| h.value_at_quantile(0.5));
        let (l, w) = (p50(&loaded), p50(&waited));
        row["p50_in_loading_processes_ns"] = json!(l);
        row["p50_in_other_processes_ns"] = json!(w);
        let show = |p: Option<u64>| p.map_or_else(|| "-".to_owned(), |p| human_ns(p as f64));
        let (mut sums, mut loader_max) = ([0_u64; 6], 0);
        for e in &extra {
            loader_max = e["loader_max_ns"].as_u64().unwrap().max(loader_max);
            for (sum, c) in sums.iter_mut().zip(e["aside_counters"].as_array().unwrap()) {
                *sum += c.as_u64().unwrap();
            }
        }
        let counted = if sums.iter().any(|c| *c > 0) {
            format!(
                " (aside, all rounds: {} coalesced, {} lease waits, {} lease timeouts, {} joins \
                 retried, {} backend errors, {} timeouts)",
                sums[0], sums[1], sums[2], sums[3], sums[4], sums[5]
            )
        } else {
            String::new()
        };
        println!(
            "  {} N = {}: {} / {}; longest loader run {}{counted}",
            row["strategy"].as_str().unwrap_or(""),
            row["callers"],
            show(l),
            show(w),
            human_ns(loader_max as f64)
        );
        row["per_round"] = json!(extra);
    }
    // How well the processes started together.
    let median_max = |v: &mut Vec<i64>| {
        v.sort_unstable();
        let median = v.get(v.len() / 2).copied().unwrap_or(0);
        (median, v.last().copied().unwrap_or(0))
    };
    let (late_median, late_max) = median_max(&mut late_all);
    let (spread_median, spread_max) = median_max(&mut spread_all);
    println!(
        "children released their callers {:.2} ms (median) / {:.2} ms (max) after the common \
         start, within {:.2} ms (median) / {:.2} ms (max) of each other; the closest a round's \
         line arrived before its start: {:.1} ms",
        late_median as f64 / 1e6,
        late_max as f64 / 1e6,
        spread_median as f64 / 1e6,
        spread_max as f64 / 1e6,
        ahead_min as f64 / 1e6
    );
    json!({
        "processes": PROCESSES,
        "release_late_ns": {"median": late_median, "max": late_max},
        "release_spread_ns": {"median": spread_median, "max": spread_max},
        "line_ahead_of_start_min_ns": ahead_min,
        "rows": v,
    })
}
