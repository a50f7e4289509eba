//! Runs the built `aside listen`: bad input fails with a message, and end to
//! end, an UPDATE made with plain SQL removes the cached key from Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::str::FromStr as _;
use std::sync::mpsc;
use std::time::Duration;

use aside::{Cache, RedisBackend};
use aside_test::RedisServer;
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
    let redis = RedisServer::start().expect("redis-server");
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

    let redis = RedisServer::start().expect("redis-server");
    let namespace = format!("cli{suffix}");
    let map = format!("{schema}.products:key=product:{{id}},tag=category:{{category_id}}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aside"))
        .args(["listen", "--install", "--pg-url", &pg_url, "--redis-url"])
        .arg(redis.url())
        .args(["--namespace", &namespace, "--map", &map, "--channel"])
        .arg(format!("aside_cli_{suffix}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn aside listen");
    let stdout = child.stdout.take().expect("stdout");
    let child = Running(child);
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
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

    drop(child);
    let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await;
}
