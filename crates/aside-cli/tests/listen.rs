//! Runs the built `aside listen`: bad input fails with a message, and end to
//! end, an UPDATE made with plain SQL removes the cached key from Redis, and
//! the invalidations show on the command's own Prometheus page
//! (`--metrics-addr`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output};
use std::str::FromStr as _;
use std::sync::mpsc;
use std::time::Duration;

use aside::Cache;
use aside::backend::RedisBackend;
use aside_test::fixtures::redis_server;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

/// This binary's own PostgreSQL (started on a free port, stopped when the
/// binary exits), or `ASIDE_TEST_PG_URL`'s; a panic that says how to install
/// PostgreSQL when it is missing.
fn pg_url() -> String {
    aside_test::pg_url().unwrap_or_else(|e| panic!("{e}"))
}

fn listen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aside"))
        .arg("listen")
        .args(args)
        .output()
        .expect("run the aside binary")
}

/// Asserts a failure whose stderr says `expected`.
fn fails_with(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "stderr does not say {expected:?}:\n{stderr}"
    );
}

#[test]
fn bad_input_exits_non_zero_with_a_message() {
    let base = [
        "--pg-url",
        "postgres://postgres@127.0.0.1:1/test",
        "--redis-url",
        "redis://127.0.0.1:1",
        "--namespace",
        "shop",
        "--map",
    ];
    let with = |map: &str| listen(&[&base[..], &[map]].concat());
    fails_with(&with("products"), "no `:` after the table name");
    fails_with(&with("products:key=product:{id"), "without its `}`");
    fails_with(&with("products:kee=product:{id}"), "unknown item");
    fails_with(&with("products:"), "empty item");
    // A good mapping, and nothing to talk to.
    fails_with(
        &with("products:key=product:{id}"),
        "could not reach Redis at redis://127.0.0.1:1",
    );
    let redis = redis_server();
    let url = redis.url();
    let output = listen(&[
        "--pg-url",
        "postgres://postgres@127.0.0.1:1/test",
        "--redis-url",
        &url,
        "--namespace",
        "shop",
        "--map",
        "products:key=product:{id}",
    ]);
    fails_with(&output, "could not listen on PostgreSQL at postgres://");
}

/// Kills the child on drop, so a failed assertion leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_removes_the_cached_key_from_redis() {
    let suffix = format!("{:016x}", rand::random::<u64>());
    let schema = format!("aside_cli_{suffix}");
    let pg_url = pg_url();
    let options = PgConnectOptions::from_str(&pg_url).expect("URL");
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await
        .unwrap_or_else(|e| panic!("could not connect to PostgreSQL at {pg_url}: {e}"));
    let ddl = format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.products (id int PRIMARY KEY, name text, category_id int);
         INSERT INTO {schema}.products VALUES (1, 'lamp', 3);"
    );
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(&admin)
        .await
        .expect("schema");

    let redis = redis_server();
    let namespace = format!("cli{suffix}");
    let map = format!("{schema}.products:key=product:{{id}},tag=category:{{category_id}}");
    let (redis_url, channel) = (redis.url(), format!("aside_cli_{suffix}"));
    let mut child = common::spawn(&[
        "listen",
        "--install",
        "--pg-url",
        &pg_url,
        "--redis-url",
        &redis_url,
        "--namespace",
        &namespace,
        "--map",
        &map,
        "--channel",
        &channel,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let child = Running(child);
    let (tx, lines) = mpsc::channel::<String>();
    let errors = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Stderr goes into the same stream, so waiting for a line sees both.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if errors.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |what: &str, within: Duration| -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(what);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {what:?} within {within:?}; saw {seen:?}");
    };
    let started = wait_for("listening on channel", Duration::from_secs(20));
    assert!(
        started.iter().any(|l| l.contains("installed triggers")),
        "{started:?}"
    );
    // Said on stderr before the cache was built.
    let metrics_url = started
        .iter()
        .find_map(|l| l.strip_prefix("serving metrics on "))
        .unwrap_or_else(|| panic!("no metrics address said: {started:?}"))
        .to_owned();

    // The application's cache: same Redis, same namespace.
    let cache = Cache::builder()
        .namespace(namespace.as_str())
        .namespace_invalidation(true)
        .backend(RedisBackend::new(&redis.url()).expect("redis URL"))
        .build()
        .expect("cache");
    let name: Option<String> = cache
        .get_or_load("product:1", || async {
            Ok::<_, std::io::Error>(Some("lamp".to_owned()))
        })
        .await
        .expect("fill");
    assert_eq!(name.as_deref(), Some("lamp"));
    let physical = cache.physical_key("product:1");
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let exists = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let key = physical.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<i64>(&mut conn)
                .await
                .expect("EXISTS")
        }
    };
    assert_eq!(exists(&mut conn).await, 1, "{physical} was not cached");

    let mut writer = PgConnection::connect_with(&options).await.expect("connect");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "UPDATE {schema}.products SET name = 'brass lamp' WHERE id = 1"
    )))
    .execute(&mut writer)
    .await
    .expect("update");
    writer.close().await.expect("close");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while exists(&mut conn).await == 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{physical} is still in Redis 2 s after the UPDATE"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let said = wait_for("product:1", Duration::from_secs(2));
    let line = said.last().cloned().unwrap_or_default();
    assert!(
        line.contains("UPDATE") && line.contains("category:3"),
        "{line}"
    );

    // The bridge's cache exports what it did on the command's own page
    // (at most one export interval, 1 s, late).
    let key_line = format!(
        "aside_invalidations_total{{cache=\"{namespace}\",level=\"redis\",kind=\"key\"}} 1"
    );
    let tag_line = format!(
        "aside_invalidations_total{{cache=\"{namespace}\",level=\"redis\",kind=\"tag\"}} 1"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = common::scrape(&metrics_url);
        if page.contains(&key_line) && page.contains(&tag_line) {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {key_line:?} and {tag_line:?} on the page 10 s after the UPDATE:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        page.contains("# TYPE aside_invalidations_total counter"),
        "{page}"
    );
    // And `aside stats` reads that page.
    let stats = Command::new(env!("CARGO_BIN_EXE_aside"))
        .args([
            "stats",
            "--json",
            "--namespace",
            &namespace,
            "--metrics-url",
            &metrics_url,
        ])
        .output()
        .expect("run aside stats");
    assert!(stats.status.success(), "{stats:?}");
    let figures: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("JSON");
    let invalidations = &figures["caches"][namespace.as_str()]["invalidations"];
    assert_eq!(invalidations["key"], 1.0, "{figures}");
    assert_eq!(invalidations["tag"], 1.0, "{figures}");

    drop(child);
    let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await;
}
