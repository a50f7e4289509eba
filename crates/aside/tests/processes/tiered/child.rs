//! A child's body: readers of every key through a `TieredBackend`, runs of
//! equal answers, and stats snapshots for the parent.

use super::*;

fn snapshot(backend: &TieredBackend) -> Report {
    let s = backend.stats();
    Report {
        at: now_ns(),
        l1_hits: s.l1_hits,
        l1_misses: s.l1_misses,
        received: s.received,
        gaps: s.gaps,
    }
}

pub async fn work(config: WorkerConfig) -> WorkerResult {
    let run = config.run.clone();
    let conn = connect(&config.data_url).await;
    let (cache, backend) = build_with(
        &run,
        &config.data_url,
        config.events_url.as_deref(),
        Duration::from_millis(config.max_l1_age_ms),
        config.strict.then(Strict::new),
        config.unbounded,
    );
    if config.events_url.is_some() {
        until_live(&backend).await;
    }
    if config.writer {
        return write(config, cache, backend, conn).await;
    }
    // Every key into L1, until one pass is all L1 hits (a fill can lose to
    // another process's load of the same key; the next read copies it;
    // strict: copies are served once this instance has registered).
    let mut passes = 0;
    let warm_until = Instant::now() + Duration::from_secs(5);
    loop {
        let hits = backend.stats().l1_hits;
        for i in 0..KEYS {
            read(&cache, &conn, &run, i).await;
        }
        if backend.stats().l1_hits - hits == KEYS as u64 {
            break;
        }
        passes += 1;
        if config.strict {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            passes < 20 || (config.strict && Instant::now() < warm_until),
            "the keys do not stay in L1: {:?}",
            backend.stats()
        );
    }

    let stopping = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..config.hog_threads)
        .map(|_| {
            let stopping = stopping.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stopping.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    // Greedy readers keep the runtime's workers: the stop and the stats go
    // through a thread of their own, on a blocking connection.
    let watcher = config.greedy.then(|| {
        let (backend, run, stopping, name, url) = (
            backend.clone(),
            run.clone(),
            stopping.clone(),
            config.name.clone(),
            config.data_url.clone(),
        );
        std::thread::spawn(move || {
            let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
            while !stopping.load(Ordering::Relaxed) {
                let json = serde_json::to_string(&snapshot(&backend)).unwrap();
                let (_, stop): ((), Option<String>) = redis::pipe()
                    .cmd("SET")
                    .arg(run.stats(&name))
                    .arg(json)
                    .cmd("GET")
                    .arg(run.stop())
                    .query(&mut conn)
                    .unwrap();
                if stop.is_some() {
                    stopping.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    });
    let reporter = (!config.greedy).then(|| {
        let (backend, run, stopping, name) = (
            backend.clone(),
            run.clone(),
            stopping.clone(),
            config.name.clone(),
        );
        let mut conn = conn.clone();
        tokio::spawn(async move {
            while !stopping.load(Ordering::Relaxed) {
                let json = serde_json::to_string(&snapshot(&backend)).unwrap();
                let (_, stop): ((), Option<String>) = redis::pipe()
                    .cmd("SET")
                    .arg(run.stats(&name))
                    .arg(json)
                    .cmd("GET")
                    .arg(run.stop())
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if stop.is_some() {
                    stopping.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    let mut c = conn.clone();
    let _: () = redis::cmd("SET")
        .arg(run.ready(&config.name))
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();

    let mut readers = JoinSet::new();
    let greedy = config.greedy;
    for _ in 0..READERS {
        let (cache, conn, run, stopping) =
            (cache.clone(), conn.clone(), run.clone(), stopping.clone());
        readers.spawn(async move {
            let mut runs: Vec<ReadRun> = Vec::new();
            let mut open: Vec<Option<usize>> = vec![None; KEYS];
            let (mut reads, mut read_ns, mut max_read_ns) = (0, 0, 0);
            while !stopping.load(Ordering::Relaxed) {
                for (i, open) in open.iter_mut().enumerate() {
                    let start = now_ns();
                    let version = read(&cache, &conn, &run, i).await;
                    let took = now_ns() - start;
                    read_ns += took;
                    max_read_ns = max_read_ns.max(took);
                    reads += 1;
                    match *open {
                        Some(at) if runs[at].version == version => {
                            runs[at].last = start;
                            runs[at].reads += 1;
                        }
                        _ => {
                            *open = Some(runs.len());
                            runs.push(ReadRun {
                                key: i,
                                version,
                                first: start,
                                last: start,
                                reads: 1,
                            });
                        }
                    }
                }
                if !greedy {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (reads, read_ns, max_read_ns, runs)
        });
    }
    let mut result = WorkerResult {
        name: config.name.clone(),
        reads: 0,
        read_ns: 0,
        max_read_ns: 0,
        runs: Vec::new(),
        stats: Report::default(),
    };
    while let Some(joined) = readers.join_next().await {
        let (reads, read_ns, max_read_ns, runs) = joined.unwrap();
        result.reads += reads;
        result.read_ns += read_ns;
        result.max_read_ns = result.max_read_ns.max(max_read_ns);
        result.runs.extend(runs);
    }
    if let Some(reporter) = reporter {
        reporter.await.unwrap();
    }
    if let Some(watcher) = watcher {
        watcher.join().unwrap();
    }
    for hog in hogs {
        hog.join().unwrap();
    }
    result.stats = snapshot(&backend);
    result
}

/// A writer child: random writes (each one checked as the parent's are)
/// until stopped, its write in progress flagged at [`Run::busy`] so that the
/// parent can kill it in the middle of one.
async fn write(
    config: WorkerConfig,
    cache: Cache,
    backend: TieredBackend,
    conn: MultiplexedConnection,
) -> WorkerResult {
    let run = config.run.clone();
    let mut flags = conn.clone();
    let mut w = parent::Writer {
        cache,
        backend,
        conn,
        run: run.clone(),
        writes: Vec::new(),
    };
    let _: () = redis::cmd("SET")
        .arg(run.ready(&config.name))
        .arg(1)
        .query_async(&mut flags)
        .await
        .unwrap();
    loop {
        let stop: Option<String> = redis::cmd("GET")
            .arg(run.stop())
            .query_async(&mut flags)
            .await
            .unwrap();
        if stop.is_some() {
            break;
        }
        let busy = run.busy(&config.name);
        let _: () = redis::cmd("SET")
            .arg(&busy)
            .arg(now_ns())
            .query_async(&mut flags)
            .await
            .unwrap();
        // Not `Writer::apply`: with B stopped, a strict write may end
        // unconfirmed (queued, an error); W records nothing and goes on.
        w.try_apply(parent::Op::random()).await;
        let _: () = redis::cmd("DEL")
            .arg(&busy)
            .query_async(&mut flags)
            .await
            .unwrap();
        let pause = rand::rng().random_range(10..30);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    WorkerResult {
        name: config.name,
        reads: 0,
        read_ns: 0,
        max_read_ns: 0,
        runs: Vec::new(),
        stats: snapshot(&w.backend),
    }
}
