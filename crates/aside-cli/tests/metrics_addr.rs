//! `--metrics-addr`: a running `aside demo` serves its cache's counters for
//! Prometheus, and an address that cannot be served is a clear error. (The
//! long-running case, `aside listen`, is scraped in `listen.rs`.)

mod common;

use std::io::{BufRead as _, BufReader};
use std::time::{Duration, Instant};

use common::{aside, scrape, spawn};

/// The counter `name{labels} value` on a Prometheus page.
fn sample(page: &str, series: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn the_demo_serves_its_counters_while_it_runs() {
    let namespace = format!("metrics{:08x}", rand::random::<u32>());
    let mut child = spawn(&[
        "demo",
        "--rows",
        "500",
        "--duration",
        "3",
        "--concurrency",
        "4",
        "--json",
        "--namespace",
        &namespace,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let Some(stderr) = child.stderr.take() else {
        panic!("no stderr")
    };
    let mut stderr = BufReader::new(stderr).lines();
    let said = match stderr.next() {
        Some(Ok(line)) => line,
        other => panic!("nothing on stderr: {other:?}"),
    };
    let url = match said.strip_prefix("serving metrics on ") {
        Some(url) => url.to_owned(),
        None => panic!("the first line on stderr is {said:?}"),
    };

    // The runs last 3 s each, the aside run first; the export is 1 s late at
    // most, and the counters stay on the page until the command ends.
    let hits =
        format!("aside_requests_total{{cache=\"{namespace}\",level=\"memory\",result=\"hit\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let page = scrape(&url);
        if let Some(n) = sample(&page, &hits).filter(|n| *n > 0) {
            assert!(
                page.contains("# TYPE aside_requests_total counter"),
                "{page}"
            );
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no {hits} on the page within 30 s:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let output = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stderr.next().is_none(), "more on stderr");
    let doc: serde_json::Value = match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(e) => panic!("not one JSON document ({e}):\n{stdout}"),
    };
    // What the page said is the cache's own count, caught up to some moment
    // of the run.
    let total = doc["aside_stats"]["hits"].as_u64().unwrap_or(0);
    assert!(
        seen <= total,
        "the page said {seen} hits, the cache counted {total}"
    );
}

#[test]
fn an_address_that_cannot_be_served_is_a_clear_error() {
    // Held for the test's length: the command cannot take it.
    let taken = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| {
        let addr = l.local_addr()?;
        Ok((l, addr))
    }) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    let addr = taken.1.to_string();
    let run = aside(&["warm", "--all", "--rows", "10", "--metrics-addr", &addr]);
    let message = run.error();
    assert!(
        message.contains(&format!("could not listen on --metrics-addr {addr}")),
        "{message}"
    );

    let run = aside(&["warm", "--all", "--metrics-addr", "localhost"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--metrics-addr"), "{run:?}");
}

#[test]
fn print_sql_serves_nothing_so_it_refuses_a_metrics_address() {
    let run = aside(&[
        "listen",
        "--pg-url",
        "postgres://127.0.0.1:1/none",
        "--redis-url",
        "redis://127.0.0.1:1",
        "--namespace",
        "shop",
        "--map",
        "products:key=product:{id}",
        "--print-sql",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("--print-sql") && run.stderr.contains("--metrics-addr"),
        "{run:?}"
    );
}
