//! The example service over real HTTP, on SQLite with the in-process cache
//! and on PostgreSQL with Redis: reads after writes are fresh, concurrent
//! requests for cold keys reach the database once per key, and `/metrics`
//! reports what the requests did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aside_example_service::INVALIDATION_HEADER;
use aside_example_service::{AppState, Config, Product, router};
use aside_test::RedisServer;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The service on a free port of 127.0.0.1, in this process, and a client.
struct Service {
    addr: SocketAddr,
    state: AppState,
    client: Client<HttpConnector, Full<Bytes>>,
    server: tokio::task::JoinHandle<()>,
    /// The test's Redis, if any (PostgreSQL is shared by the binary).
    redis: Option<RedisServer>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What a request got back.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn product(&self) -> Product {
        assert_eq!(self.status, StatusCode::OK, "body: {:?}", self.body);
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Service {
    async fn start(config: Config, redis: Option<RedisServer>) -> Service {
        let state = AppState::new(&config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Service {
            addr,
            state,
            client,
            server,
            redis,
        }
    }

    async fn request(&self, method: Method, path: &str, body: Option<String>) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, id: i64) -> Reply {
        self.request(Method::GET, &format!("/products/{id}"), None)
            .await
    }

    async fn put(&self, id: i64, name: &str, price_cents: i64) -> Product {
        self.put_reply(id, name, price_cents).await.product()
    }

    async fn put_reply(&self, id: i64, name: &str, price_cents: i64) -> Reply {
        let body = serde_json::json!({ "name": name, "price_cents": price_cents }).to_string();
        self.request(Method::PUT, &format!("/products/{id}"), Some(body))
            .await
    }

    async fn delete(&self, id: i64) -> StatusCode {
        self.request(Method::DELETE, &format!("/products/{id}"), None)
            .await
            .status
    }
}

fn config(namespace: &str) -> Config {
    Config {
        namespace: namespace.to_owned(),
        seed_rows: 100,
        // Loads take long enough for concurrent requests to meet.
        load_delay: Duration::from_millis(20),
        // A busy 2-core machine is not a Redis failure.
        backend_timeout: Duration::from_secs(2),
        metrics_interval: Duration::from_millis(50),
        ..Config::default()
    }
}

/// SQLite in memory and the in-process cache.
async fn on_sqlite(namespace: &str) -> Service {
    Service::start(config(namespace), None).await
}

/// PostgreSQL (a schema of this test's own) and a Redis of its own.
async fn on_postgres_redis(namespace: &str) -> Service {
    let url = aside_test::pg_url().unwrap_or_else(|e| panic!("{e}"));
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let schema = format!("svc_{}", namespace.replace('-', "_"));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let config = Config {
        database_url: format!("{url}{separator}options%5Bsearch_path%5D={schema}"),
        redis_url: Some(redis.url()),
        ..config(namespace)
    };
    Service::start(config, Some(redis)).await
}

/// (a) Every read that begins after a write's response sees that write,
/// while other requests keep loading the same products concurrently (the
/// loads that race the writes).
async fn reads_after_writes_are_fresh(service: Service) {
    let service = Arc::new(service);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..4 {
        let (service, stop) = (service.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let _ = service.get(i % 5 + 1).await;
                i += 1;
            }
        }));
    }
    for round in 0..60_i64 {
        let id = round % 5 + 1;
        let written = service
            .put(id, &format!("name {round}"), 1000 + round)
            .await;
        let read = service.get(id).await.product();
        assert_eq!(read, written, "round {round}: a read after a PUT");
        if round % 4 == 0 {
            assert_eq!(service.delete(id).await, StatusCode::NO_CONTENT);
            let read = service.get(id).await;
            assert_eq!(
                read.status,
                StatusCode::NOT_FOUND,
                "round {round}: a read after a DELETE"
            );
            let recreated = service.put(id, "back", 1).await;
            assert_eq!(service.get(id).await.product(), recreated, "round {round}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    assert!(
        service.state.cache().stats().hits > 0,
        "the cache answered reads"
    );
}

/// (b) 200 concurrent GETs over 20 cold products: one `SELECT` per product.
async fn one_select_per_cold_key(service: Service) {
    let service = Arc::new(service);
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..200_i64 {
        let service = service.clone();
        let id = i % 20 + 1;
        requests.spawn(async move { (id, service.get(id).await.product()) });
    }
    while let Some(done) = requests.join_next().await {
        let (id, product) = done.unwrap();
        assert_eq!((product.id, product.price_cents), (id, 100 * id));
    }
    let repo = service.state.repo();
    for id in 1..=20 {
        assert_eq!(repo.selects(id), 1, "product {id}");
    }
    assert_eq!(repo.selects_total(), 20);
    let s = service.state.cache().stats();
    assert_eq!((s.loads, s.hits + s.misses), (20, 200));
}

/// (c) `/metrics` counts the reads as the test made them: 10 misses, 30
/// hits, a missing product read twice (a miss, then a negative hit), and
/// a write's invalidation then a miss.
async fn metrics_match_the_requests(service: Service, namespace: &str) {
    for _ in 0..4 {
        for id in 1..=10 {
            service.get(id).await.product();
        }
    }
    for _ in 0..2 {
        assert_eq!(service.get(5000).await.status, StatusCode::NOT_FOUND);
    }
    service.put(1, "renamed", 5).await;
    assert_eq!(service.get(1).await.product().name, "renamed");
    let expected = [
        ("aside_requests_total", "result=\"miss\"", 12),
        ("aside_requests_total", "result=\"hit\"", 30),
        ("aside_requests_total", "result=\"negative\"", 1),
        ("aside_loads_total", "", 12),
        ("aside_invalidations_total", "kind=\"key\"", 1),
    ];
    let label = format!("cache=\"{namespace}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = service.request(Method::GET, "/metrics", None).await;
        assert_eq!(reply.status, StatusCode::OK);
        let page = String::from_utf8(reply.body.to_vec()).unwrap();
        let seen: Vec<u64> = expected
            .iter()
            .map(|(name, label2, _)| value(&page, name, &[&label, label2]))
            .collect();
        let wanted: Vec<u64> = expected.iter().map(|e| e.2).collect();
        if seen == wanted {
            break;
        }
        // The export runs every 50 ms; a value past what was expected
        // would never come back down.
        assert!(
            Instant::now() < deadline && seen.iter().zip(&wanted).all(|(s, w)| s <= w),
            "metrics {seen:?}, expected {wanted:?}:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = service.state.cache().stats();
    assert_eq!((s.misses, s.hits, s.negative_hits), (12, 30, 1));
}

/// The value of the series `name` whose labels contain every one of
/// `labels` (0 when there is none yet).
fn value(page: &str, name: &str, labels: &[&str]) -> u64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_reads_after_writes_are_fresh() {
    reads_after_writes_are_fresh(on_sqlite("fresh-sqlite").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_one_select_per_cold_key() {
    one_select_per_cold_key(on_sqlite("cold-sqlite").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_metrics_match_the_requests() {
    metrics_match_the_requests(on_sqlite("metrics-sqlite").await, "metrics-sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_reads_after_writes_are_fresh() {
    reads_after_writes_are_fresh(on_postgres_redis("fresh-pg").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_one_select_per_cold_key() {
    one_select_per_cold_key(on_postgres_redis("cold-pg").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_metrics_match_the_requests() {
    metrics_match_the_requests(on_postgres_redis("metrics-pg").await, "metrics-pg").await;
}

/// Redis goes away after a read: the `PUT`'s invalidation is queued, the
/// response says so, and this instance's reads stay fresh (from the
/// database) until Redis is back and the queue has drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_invalidation_is_reported_and_reads_stay_fresh() {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let config = Config {
        redis_url: Some(redis.url()),
        ..config("queued")
    };
    let mut service = Service::start(config, Some(redis)).await;
    assert_eq!(service.get(3).await.product().price_cents, 300);
    let applied = service.put_reply(3, "applied", 301).await;
    assert!(applied.headers.get(INVALIDATION_HEADER).is_none());

    service.redis.as_mut().unwrap().stop();
    let reply = service.put_reply(3, "during the outage", 302).await;
    assert_eq!(reply.product().price_cents, 302);
    assert_eq!(reply.headers.get(INVALIDATION_HEADER).unwrap(), "queued");
    for _ in 0..3 {
        assert_eq!(service.get(3).await.product().price_cents, 302);
    }
    assert_eq!(service.state.cache().pending_invalidations(), 1);

    service.redis.as_mut().unwrap().restart().unwrap();
    let cache = service.state.cache().clone();
    cache
        .flush_invalidations(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(service.get(3).await.product().price_cents, 302);
}

/// A Redis that does not answer at start-up is not fatal: the service
/// starts and answers from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_not_fatal() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = Config {
        redis_url: Some(format!("redis://127.0.0.1:{port}")),
        ..config("unreachable")
    };
    let service = Service::start(config, None).await;
    assert_eq!(service.get(4).await.product().price_cents, 400);
    let reply = service.put_reply(4, "written", 401).await;
    assert_eq!(reply.headers.get(INVALIDATION_HEADER).unwrap(), "queued");
    assert_eq!(service.get(4).await.product().price_cents, 401);
}
