//! Runs each example of `examples/` against a redis-server of its own, so
//! that an example that no longer compiles, or whose assertions no longer
//! hold, fails the tests. An example's body is its `run(url)` function; its
//! `main` only reads `ASIDE_REDIS_URL` (and is not called here).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use aside_test::fixtures::redis_server;

#[allow(dead_code)]
#[path = "../examples/basic_redis.rs"]
mod basic_redis;
#[allow(dead_code)]
#[path = "../examples/fail_safe.rs"]
mod fail_safe;
#[allow(dead_code)]
#[path = "../examples/leases_swr.rs"]
mod leases_swr;
#[allow(dead_code)]
#[path = "../examples/tags.rs"]
mod tags;

macro_rules! example {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let redis = redis_server();
            if let Err(e) = $name::run(&redis.url()).await {
                panic!("example {} failed: {e}", stringify!($name));
            }
        }
    )*};
}

example!(basic_redis, tags, leases_swr, fail_safe);
