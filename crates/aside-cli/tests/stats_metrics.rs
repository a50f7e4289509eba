//! `aside stats --metrics-url` against a tiny HTTP server that serves the
//! Prometheus page of a real cache's export (the `metrics` feature through
//! `metrics-exporter-prometheus`): the command's figures are the cache's.
//! One test in this binary: the Prometheus recorder is process-global.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aside::backend::MemoryBackend;
use aside::{Cache, EntryOptions};
use common::aside;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

#[derive(Debug, thiserror::Error)]
#[error("database down")]
struct DbDown;

/// Serves `page()` to every GET on a port of its own, until the process
/// ends; `chunked` pages go out in chunks, the others with a length.
fn serve(page: Arc<Mutex<String>>, chunked: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // Read the request's head (it has no body).
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let body = page.lock().unwrap().clone();
            let response = if chunked {
                let (a, b) = body.split_at(body.len() / 2);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

/// Waits until the export has caught up with `cache`'s counters.
fn exported(handle: &PrometheusHandle, cache: &Cache) -> String {
    let hits = cache.stats().hits;
    let line =
        format!("aside_requests_total{{cache=\"shop\",level=\"memory\",result=\"hit\"}} {hits}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = handle.render();
        if page.contains(&line) && page.contains("aside_invalidations_total") {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "never exported {line:?}:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stats_read_a_services_prometheus_page() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cache = rt.block_on(async {
        Cache::builder()
            .namespace("shop")
            .backend(MemoryBackend::new())
            .metrics_interval(Duration::from_millis(20))
            .build()
            .unwrap()
    });
    rt.block_on(async {
        let opts = EntryOptions::new().tag("category:7");
        for id in 0..4u32 {
            for _ in 0..3 {
                let v: Option<u32> = cache
                    .get_or_load_with(format!("p:{id}"), &opts, move || async move {
                        Ok::<_, DbDown>(Some(id))
                    })
                    .await
                    .unwrap();
                assert_eq!(v, Some(id));
            }
        }
        for _ in 0..2 {
            let none: Option<u32> = cache
                .get_or_load("absent", || async { Ok::<_, DbDown>(None) })
                .await
                .unwrap();
            assert_eq!(none, None);
        }
        let failed: Result<Option<u32>, _> =
            cache.get_or_load("broken", || async { Err(DbDown) }).await;
        assert!(failed.is_err());
        cache.invalidate_tag("category:7").await.unwrap();
    });
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.negative_hits, stats.loads), (8, 1, 6));
    let page = Arc::new(Mutex::new(exported(&handle, &cache)));
    let port = serve(Arc::clone(&page), false);
    let url = format!("http://127.0.0.1:{port}/metrics");

    let doc = aside(&["stats", "--metrics-url", &url, "--json"]).json();
    assert_eq!(doc["source"], "metrics");
    let shop = &doc["caches"]["shop"];
    assert_eq!(shop["requests"]["hit"], 8.0);
    assert_eq!(shop["requests"]["negative"], 1.0);
    assert_eq!(shop["requests"]["miss"], stats.misses as f64);
    assert_eq!(shop["hit_ratio"].as_f64().unwrap(), stats.hit_ratio());
    assert_eq!(shop["loads"], 6.0);
    assert_eq!(shop["load_errors"], 1.0);
    assert_eq!(shop["invalidations"]["tag"], 1.0);
    assert_eq!(shop["invalidations_queued"], 0.0);
    assert!(shop["mean_load_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(doc["caches"].as_object().unwrap().len(), 1);

    let table = aside(&["stats", "--metrics-url", &url]);
    assert!(table.ok(), "{table:?}");
    let hit_ratio = format!("{:.1}%", stats.hit_ratio() * 100.0);
    for shown in ["shop", "hit ratio", hit_ratio.as_str(), "tags invalidated"] {
        assert!(
            table.stdout.contains(shown),
            "{shown} not in:\n{}",
            table.stdout
        );
    }

    // The same page in chunks.
    let chunked = serve(Arc::clone(&page), true);
    let chunked = format!("http://127.0.0.1:{chunked}/metrics");
    let doc = aside(&["stats", "--metrics-url", &chunked, "--json"]).json();
    assert_eq!(doc["caches"]["shop"]["requests"]["hit"], 8.0);

    // A cache that is not there, and a page without aside's metrics.
    let message = aside(&["stats", "--metrics-url", &url, "--namespace", "other"])
        .error()
        .to_owned();
    assert!(
        message.contains("no aside metrics for cache \"other\""),
        "{message}"
    );
    *page.lock().unwrap() = "# nothing of aside\nup 1\n".to_owned();
    let message = aside(&["stats", "--metrics-url", &url]).error().to_owned();
    assert!(message.contains("no aside metrics at"), "{message}");
    *page.lock().unwrap() = "this is not { a metrics page".to_owned();
    let message = aside(&["stats", "--metrics-url", &url]).error().to_owned();
    assert!(message.contains("not a Prometheus text page"), "{message}");
}
