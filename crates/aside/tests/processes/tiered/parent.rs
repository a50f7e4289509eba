//! The parent's side: A's writes, the children, and the checks of what
//! they report.

use super::*;

/// What A does in one write.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Invalidate(usize),
    Set(usize),
    Tag(usize),
    Namespace,
}

impl Op {
    pub fn random() -> Op {
        let mut rng = rand::rng();
        let i = rng.random_range(0..KEYS);
        match rng.random_range(0..100) {
            0..40 => Op::Invalidate(i),
            40..65 => Op::Set(i),
            65..95 => Op::Tag(i % GROUPS),
            _ => Op::Namespace,
        }
    }

    pub fn keys(self) -> Vec<usize> {
        match self {
            Op::Invalidate(i) | Op::Set(i) => vec![i],
            Op::Tag(g) => (0..KEYS).filter(|i| i % GROUPS == g).collect(),
            Op::Namespace => (0..KEYS).collect(),
        }
    }
}

/// The writer: bumps the truth of the op's keys, then invalidates (or
/// `set`s) through A; once that returned, records the writes and checks
/// that A itself already reads the new versions.
pub struct Writer {
    pub cache: Cache,
    pub backend: TieredBackend,
    pub conn: MultiplexedConnection,
    pub run: Run,
    pub writes: Vec<Write>,
}

impl Writer {
    pub async fn apply(&mut self, op: Op) {
        let keys = op.keys();
        let mut versions = Vec::with_capacity(keys.len());
        for &i in &keys {
            let v: u64 = redis::cmd("INCR")
                .arg(self.run.truth(i))
                .query_async(&mut self.conn)
                .await
                .unwrap();
            versions.push(v);
        }
        let c = &self.cache;
        let outcome = match op {
            Op::Invalidate(i) => c.invalidate(key(i)).await.unwrap(),
            Op::Set(i) => {
                c.set_with(key(i), versions[0], &options(i)).await.unwrap();
                Invalidation::Applied
            }
            Op::Tag(g) => c.invalidate_tag(group(g)).await.unwrap(),
            Op::Namespace => c.invalidate_namespace().await.unwrap(),
        };
        let applied_at = now_ns();
        assert!(outcome.is_applied(), "{op:?} was {outcome:?}");
        for (&i, &v) in keys.iter().zip(&versions) {
            self.writes.push(Write {
                key: i,
                version: v,
                applied_at,
            });
        }
        // In the writing instance the promise has no lag.
        for (&i, &v) in keys.iter().zip(&versions) {
            let got = read(c, &self.conn, &self.run, i).await;
            assert!(
                got >= v,
                "A read {} at {got} after writing {v} ({op:?})",
                key(i)
            );
        }
    }

    /// Bumps the truth of `op`'s keys and invalidates them through this
    /// writer, whatever the outcome (nothing recorded, nothing checked).
    /// A `set` becomes an invalidation: a second writer's `set` of an older
    /// version landing after another writer's newer write is the writers'
    /// own race, not a stale read.
    pub async fn try_apply(&mut self, op: Op) {
        for i in op.keys() {
            let _: u64 = redis::cmd("INCR")
                .arg(self.run.truth(i))
                .query_async(&mut self.conn)
                .await
                .unwrap();
        }
        let c = &self.cache;
        let _ = match op {
            Op::Invalidate(i) | Op::Set(i) => c.invalidate(key(i)).await.map(|_| ()),
            Op::Tag(g) => c.invalidate_tag(group(g)).await.map(|_| ()),
            Op::Namespace => c.invalidate_namespace().await.map(|_| ()),
        };
    }

    /// Another write whose only purpose is a backplane message (`probe`
    /// is a key nobody reads).
    pub async fn probe(&self) {
        assert!(self.cache.invalidate("probe").await.unwrap().is_applied());
    }
}

/// Starts a child; the handle yields its result once it has exited.
pub fn spawn_worker(config: WorkerConfig) -> tokio::task::JoinHandle<WorkerResult> {
    spawn_worker_pid(config).1
}

/// [`spawn_worker`], with the child's process id (to stop or kill it).
pub fn spawn_worker_pid(config: WorkerConfig) -> (u32, tokio::task::JoinHandle<WorkerResult>) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let name = config.name.clone();
    let child = tokio::process::Command::new(&exe)
        .args([
            worker_test().as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_ENV, serde_json::to_string(&config).unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropped on the timeout below (or a panic): killed.
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start worker {name} ({exe:?}): {e}"));
    let pid = child.id().expect("a running child has an id");
    let handle = tokio::spawn(async move {
        let out = tokio::time::timeout(WORKER_LIMIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!("worker {name} still running after {WORKER_LIMIT:?}: killed")
            })
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result = stdout
            .lines()
            // libtest prints `test worker ... ` before it, on the same line.
            .find_map(|l| {
                l.find(RESULT_PREFIX)
                    .map(|at| &l[at + RESULT_PREFIX.len()..])
            })
            .map(|json| serde_json::from_str::<WorkerResult>(json).unwrap());
        match result {
            Some(r) if out.status.success() => r,
            _ => panic!(
                "worker {name} failed ({}):\n--- stdout (end):\n{}\n--- stderr:\n{}",
                out.status,
                tail(&stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    });
    (pid, handle)
}

pub fn tail(s: &str) -> &str {
    let mut at = s.len().saturating_sub(4000);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

pub async fn get_json<T: for<'de> Deserialize<'de>>(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> Option<T> {
    let raw: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
    raw.map(|r| serde_json::from_str(&r).unwrap())
}

/// A child's latest stats snapshot taken after `after` (wall-clock ns).
pub async fn report_after(
    conn: &mut MultiplexedConnection,
    run: &Run,
    name: &str,
    after: i64,
) -> Report {
    // Generous: other tests' children and CPU hogs may share the machine.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = get_json::<Report>(conn, &run.stats(name)).await
            && r.at > after
        {
            return r;
        }
        assert!(Instant::now() < deadline, "no stats from {name}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits (up to `within`) for a snapshot of `name` that satisfies `until`.
pub async fn wait_report(
    conn: &mut MultiplexedConnection,
    run: &Run,
    name: &str,
    within: Duration,
    what: &str,
    until: impl Fn(&Report) -> bool,
) -> Report {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = get_json::<Report>(conn, &run.stats(name)).await
            && until(&r)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn wait_ready(conn: &mut MultiplexedConnection, run: &Run, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for name in names {
        loop {
            let ready: Option<String> = redis::cmd("GET")
                .arg(run.ready(name))
                .query_async(conn)
                .await
                .unwrap();
            if ready.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "worker {name} never got ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub use aside_test::staleness::{Stale, percentile, stale_runs};

pub fn describe(name: &str, result: &WorkerResult, stale: &[Stale]) -> String {
    format!(
        "{name}: {} reads ({:.1} µs on average, longest {:.1} ms) in {} runs; stale after a returned write: {} runs, lag p50 {:.2} ms, \
         p99 {:.2} ms, max {:.2} ms; stats {:?}",
        result.reads,
        result.read_ns as f64 / 1e3 / result.reads.max(1) as f64,
        ms(result.max_read_ns),
        result.runs.len(),
        stale.len(),
        percentile(stale, 0.5),
        percentile(stale, 0.99),
        stale.last().map_or(0.0, |s| ms(s.lag_ns)),
        result.stats
    )
}

pub async fn stop(conn: &mut MultiplexedConnection, run: &Run) {
    let _: () = redis::cmd("SET")
        .arg(run.stop())
        .arg(1)
        .query_async(conn)
        .await
        .unwrap();
}

/// Probes until B has heard a message from A published after now: B is
/// subscribed again. Returns the wall-clock time (ns) at which the parent saw
/// it, and how long after the call that was.
pub async fn until_heard(a: &Writer, conn: &mut MultiplexedConnection, run: &Run) -> (i64, i64) {
    let from = now_ns();
    let base = report_after(conn, run, "B", from).await.received;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        a.probe().await;
        let probed = now_ns();
        let r = report_after(conn, run, "B", probed).await;
        if r.received > base {
            let seen = now_ns();
            return (seen, seen - from);
        }
        assert!(Instant::now() < deadline, "B never heard A again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
