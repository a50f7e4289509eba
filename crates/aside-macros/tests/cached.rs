//! `#[aside::cached]` on the memory backend: what is cached, under which
//! key, and what comes back when the body fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use aside::{Cache, Key};

fn new_cache() -> Cache {
    Cache::builder()
        .namespace("t")
        .build()
        .expect("valid config")
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum AppError {
    #[error("no database today")]
    Db,
    #[error("bad input {0}")]
    Input(u64),
    #[error("cache: {0}")]
    Cache(String),
}

impl From<aside::Error> for AppError {
    fn from(e: aside::Error) -> Self {
        let source = std::error::Error::source(&e).map(ToString::to_string);
        AppError::Cache(format!("{e} ({})", source.unwrap_or_default()))
    }
}

#[tokio::test]
async fn a_free_fn_called_twice_runs_its_body_once() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);
    static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[aside::cached(cache = CACHE)]
    async fn double(n: u64) -> Result<u64, AppError> {
        RUNS.fetch_add(1, SeqCst);
        Ok(n * 2)
    }

    assert_eq!(double(21).await, Ok(42));
    assert_eq!(double(21).await, Ok(42));
    assert_eq!(RUNS.load(SeqCst), 1);
    // The derived key: the function's path, the version, the argument as JSON.
    assert_eq!(
        CACHE.get::<u64>("cached.double:v1:21").await.unwrap(),
        Some(42)
    );
}

#[tokio::test]
async fn different_arguments_make_different_keys() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);
    static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[aside::cached(cache = CACHE, key = "square:{n}")]
    async fn square(n: u64) -> Result<u64, AppError> {
        RUNS.fetch_add(1, SeqCst);
        Ok(n * n)
    }

    assert_eq!(square(3).await, Ok(9));
    assert_eq!(square(4).await, Ok(16));
    assert_eq!(square(3).await, Ok(9));
    assert_eq!(RUNS.load(SeqCst), 2);
    assert_eq!(
        CACHE.get::<u64>(Key::new("square").part(4)).await.unwrap(),
        Some(16)
    );
}

#[tokio::test]
async fn separators_in_arguments_do_not_collide() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);

    #[aside::cached(cache = CACHE, key = "pair:{a}:{b}")]
    async fn explicit(a: String, b: &str) -> Result<String, AppError> {
        Ok(format!("{a}|{b}"))
    }

    #[aside::cached(cache = CACHE)]
    async fn derived(a: &str, b: String) -> Result<String, AppError> {
        Ok(format!("{a}|{b}"))
    }

    assert_eq!(explicit("a:b".into(), "c").await.unwrap(), "a:b|c");
    assert_eq!(explicit("a".into(), "b:c").await.unwrap(), "a|b:c");
    assert_eq!(derived("a:b", "c".into()).await.unwrap(), "a:b|c");
    assert_eq!(derived("a", "b:c".into()).await.unwrap(), "a|b:c");
    // The parts are escaped as `Key::part` escapes them.
    let key = Key::new("pair").part("a:b").part("c");
    assert_eq!(
        CACHE.get::<String>(&key).await.unwrap().as_deref(),
        Some("a:b|c")
    );
    let key = Key::new("pair").part("a").part("b:c");
    assert_eq!(
        CACHE.get::<String>(&key).await.unwrap().as_deref(),
        Some("a|b:c")
    );
}

#[tokio::test]
async fn none_is_cached_as_a_negative_entry() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    static PLAIN_RUNS: AtomicUsize = AtomicUsize::new(0);

    #[aside::cached(cache = CACHE, key = "user:{id}")]
    async fn user(id: u64) -> Result<Option<String>, AppError> {
        RUNS.fetch_add(1, SeqCst);
        Ok((id == 1).then(|| "ada".to_owned()))
    }

    #[aside::cached(cache = CACHE, key = "plain:{id}")]
    async fn plain(id: u64) -> Option<String> {
        PLAIN_RUNS.fetch_add(1, SeqCst);
        (id == 1).then(|| "ada".to_owned())
    }

    assert_eq!(user(2).await, Ok(None));
    assert_eq!(user(2).await, Ok(None));
    assert_eq!(user(1).await, Ok(Some("ada".into())));
    assert_eq!(RUNS.load(SeqCst), 2);
    assert_eq!(plain(2).await, None);
    assert_eq!(plain(2).await, None);
    assert_eq!(plain(1).await.as_deref(), Some("ada"));
    assert_eq!(PLAIN_RUNS.load(SeqCst), 2);
    assert_eq!(CACHE.stats().negative_hits, 2);
}

#[tokio::test]
async fn an_error_comes_back_as_itself_and_is_not_cached() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);
    static RUNS: AtomicUsize = AtomicUsize::new(0);

    async fn check(n: u64) -> Result<u64, AppError> {
        if n > 100 {
            Err(AppError::Input(n))
        } else {
            Ok(n)
        }
    }

    #[aside::cached(cache = CACHE, key = "flaky:{n}")]
    async fn flaky(n: u64) -> Result<u64, AppError> {
        // The first run fails; `?` converts into the function's error type.
        let n = check(n).await?;
        if RUNS.fetch_add(1, SeqCst) == 0 {
            return Err(AppError::Db);
        }
        Ok(n)
    }

    assert_eq!(flaky(5).await, Err(AppError::Db));
    assert_eq!(flaky(5).await, Ok(5));
    assert_eq!(flaky(5).await, Ok(5));
    assert_eq!(RUNS.load(SeqCst), 2);
    assert_eq!(flaky(500).await, Err(AppError::Input(500)));
    assert_eq!(flaky(500).await, Err(AppError::Input(500)));
}

#[tokio::test]
async fn io_result_and_boxed_errors_work() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);

    #[aside::cached(cache = CACHE, key = "io:{n}")]
    async fn io(n: u64) -> std::io::Result<u64> {
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "zero"));
        }
        Ok(n)
    }

    #[aside::cached(cache = CACHE, key = "boxed:{n}")]
    async fn boxed(n: u64) -> Result<Option<u64>, Box<dyn std::error::Error + Send + Sync>> {
        if n == 0 {
            return Err("zero".into());
        }
        Ok(Some(n))
    }

    assert_eq!(io(3).await.unwrap(), 3);
    assert_eq!(
        io(0).await.unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(boxed(3).await.unwrap(), Some(3));
    assert_eq!(boxed(0).await.unwrap_err().to_string(), "zero");
}

#[tokio::test]
async fn a_panicking_body_is_an_error_of_the_function() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);

    #[aside::cached(cache = CACHE, key = "boom")]
    async fn boom() -> Result<u64, AppError> {
        panic!("boom");
    }

    match boom().await {
        Err(AppError::Cache(message)) => assert!(message.contains("panicked"), "{message}"),
        other => panic!("expected a cache error, got {other:?}"),
    }
}

#[derive(Clone)]
struct Users {
    cache: Cache,
    tenant: String,
    runs: std::sync::Arc<AtomicUsize>,
}

impl Users {
    #[aside::cached(cache = self.cache, key = "user:{self.tenant}:{id}", tags = ["users", "tenant:{self.tenant}"])]
    async fn name(&self, id: u64, suffix: &str) -> Result<String, AppError> {
        self.runs.fetch_add(1, SeqCst);
        Ok(format!("{}/{id}{suffix}", self.tenant))
    }
}

#[tokio::test]
async fn a_method_with_a_key_and_tags() {
    let cache = new_cache();
    let users = |tenant: &str| Users {
        cache: cache.clone(),
        tenant: tenant.into(),
        runs: Default::default(),
    };
    let (acme, globex) = (users("acme"), users("globex"));
    assert_eq!(acme.name(1, "!").await.unwrap(), "acme/1!");
    assert_eq!(acme.name(1, "?").await.unwrap(), "acme/1!"); // `suffix` is not in the key
    assert_eq!(globex.name(1, "!").await.unwrap(), "globex/1!");
    assert_eq!(acme.runs.load(SeqCst), 1);
    assert_eq!(globex.runs.load(SeqCst), 1);

    // A tag invalidation makes the next call run the body.
    cache.invalidate_tag("tenant:acme").await.unwrap();
    assert_eq!(acme.name(1, "!").await.unwrap(), "acme/1!");
    assert_eq!(globex.name(1, "!").await.unwrap(), "globex/1!");
    assert_eq!(acme.runs.load(SeqCst), 2);
    assert_eq!(globex.runs.load(SeqCst), 1);
    cache.invalidate_tag("users").await.unwrap();
    assert_eq!(globex.name(1, "!").await.unwrap(), "globex/1!");
    assert_eq!(globex.runs.load(SeqCst), 2);
}

#[tokio::test]
async fn tags_on_a_free_fn() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);
    static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[aside::cached(cache = CACHE, key = "product:{id}", ttl = "5m", tags = ["products", "category:{category}"])]
    async fn product(id: u64, category: u32) -> Result<String, AppError> {
        RUNS.fetch_add(1, SeqCst);
        Ok(format!("product {id} in {category}"))
    }

    product(1, 7).await.unwrap();
    product(2, 8).await.unwrap();
    product(1, 7).await.unwrap();
    assert_eq!(RUNS.load(SeqCst), 2);
    CACHE.invalidate_tag("category:7").await.unwrap();
    product(1, 7).await.unwrap();
    product(2, 8).await.unwrap();
    assert_eq!(RUNS.load(SeqCst), 3);
    CACHE.invalidate_tag("products").await.unwrap();
    product(2, 8).await.unwrap();
    assert_eq!(RUNS.load(SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_run_the_body_once() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);
    static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[aside::cached(cache = CACHE, key = "slow:{id}")]
    async fn slow(id: u64) -> Result<u64, AppError> {
        RUNS.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(id + 1)
    }

    let calls: Vec<_> = (0..100).map(|_| tokio::spawn(slow(9))).collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), Ok(10));
    }
    assert_eq!(RUNS.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_of_a_failed_load_get_the_error_converted() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);
    static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[aside::cached(cache = CACHE, key = "down")]
    async fn down() -> Result<u64, AppError> {
        RUNS.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err(AppError::Db)
    }

    let calls: Vec<_> = (0..20).map(|_| tokio::spawn(down())).collect();
    let mut own = 0;
    for call in calls {
        match call.await.unwrap() {
            Err(AppError::Db) => own += 1,
            Err(AppError::Cache(message)) => assert!(message.contains("no database today")),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(RUNS.load(SeqCst), 1);
    assert_eq!(own, 1, "the caller whose body ran gets its own error");
}

#[tokio::test]
async fn a_version_bump_changes_the_key() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);

    #[aside::cached(cache = CACHE, version = 2)]
    async fn versioned(id: u64) -> Result<u32, AppError> {
        Ok(u32::try_from(id).unwrap_or(0) + 1)
    }

    // What the version 1 function (of another return type) left.
    CACHE
        .set("cached.versioned:v1:7", "old shape".to_owned())
        .await
        .unwrap();
    assert_eq!(versioned(7).await, Ok(8));
    assert_eq!(
        CACHE.get::<u32>("cached.versioned:v2:7").await.unwrap(),
        Some(8)
    );
    assert_eq!(
        CACHE
            .get::<String>("cached.versioned:v1:7")
            .await
            .unwrap()
            .as_deref(),
        Some("old shape")
    );
}

#[tokio::test]
async fn arguments_of_any_serialisable_type_make_the_derived_key() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);
    static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[derive(Clone, serde::Serialize)]
    struct Filter {
        name: String,
        limit: u32,
    }

    #[aside::cached(cache = CACHE)]
    async fn search(filter: Filter, tags: &[String], page: Option<u32>) -> Result<u32, AppError> {
        RUNS.fetch_add(1, SeqCst);
        Ok(filter.limit + tags.len() as u32 + page.unwrap_or(0))
    }

    let filter = |limit| Filter {
        name: "a:b".into(),
        limit,
    };
    let tags = vec!["x".to_owned()];
    assert_eq!(search(filter(10), &tags, None).await, Ok(11));
    assert_eq!(search(filter(10), &tags, None).await, Ok(11));
    assert_eq!(search(filter(10), &tags, Some(1)).await, Ok(12));
    assert_eq!(search(filter(20), &tags, None).await, Ok(21));
    assert_eq!(RUNS.load(SeqCst), 3);
    let key = Key::new("cached.search")
        .part("v1")
        .part(r#"{"name":"a:b","limit":10}"#)
        .part(r#"["x"]"#)
        .part("null");
    assert_eq!(CACHE.get::<u32>(&key).await.unwrap(), Some(11));
}

#[tokio::test]
async fn a_negative_entry_under_a_value_key_runs_the_body() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);

    #[aside::cached(cache = CACHE, key = "shared:{id}")]
    async fn may_be_none(id: u64) -> Option<u64> {
        (id > 1).then_some(id)
    }

    #[aside::cached(cache = CACHE, key = "shared:{id}")]
    async fn always(id: u64) -> Result<u64, AppError> {
        Ok(id)
    }

    assert_eq!(may_be_none(1).await, None);
    assert_eq!(always(1).await, Ok(1));
}

#[tokio::test]
async fn the_cache_is_any_expression_that_derefs_to_a_cache() {
    static CACHE: LazyLock<Cache> = LazyLock::new(new_cache);
    static SHARED: LazyLock<std::sync::Arc<Cache>> =
        LazyLock::new(|| std::sync::Arc::new(new_cache()));
    static RUNS: AtomicUsize = AtomicUsize::new(0);

    fn by_value() -> Cache {
        CACHE.clone()
    }
    fn by_ref() -> &'static Cache {
        &CACHE
    }

    #[aside::cached(cache = by_value(), key = "n:{n}")]
    async fn owned(n: u64) -> Option<u64> {
        RUNS.fetch_add(1, SeqCst);
        Some(n)
    }

    #[aside::cached(cache = by_ref(), key = "n:{n}")]
    async fn borrowed(n: u64) -> Option<u64> {
        RUNS.fetch_add(1, SeqCst);
        Some(n)
    }

    #[aside::cached(cache = SHARED, key = "n:{n}")]
    async fn arc(n: u64) -> Option<u64> {
        RUNS.fetch_add(1, SeqCst);
        Some(n)
    }

    assert_eq!(owned(1).await, Some(1));
    assert_eq!(borrowed(1).await, Some(1)); // the same cache and key: a hit
    assert_eq!(RUNS.load(SeqCst), 1);
    assert_eq!(arc(1).await, Some(1)); // another cache
    assert_eq!(RUNS.load(SeqCst), 2);
}

mod paths {
    pub fn twice(n: u64) -> u64 {
        n * 2
    }
}

#[derive(Clone)]
struct Counter {
    cache: Cache,
    step: u64,
}

impl Counter {
    fn step(&self) -> u64 {
        self.step
    }

    #[aside::cached(cache = self.cache, key = "count:{self.step}:{n}:{label}")]
    async fn count(&self, mut n: u64, mut label: &str) -> Option<String> {
        // A mutable argument, a mutable `&str`, `self` passed on as a
        // reference, and a `self::` path that must stay a path.
        n += self.step();
        label = label.trim();
        let doubled = self::paths::twice(n);
        let me: &Counter = self;
        Some(format!("{label}={doubled}/{}", me.step))
    }
}

#[tokio::test]
async fn bodies_keep_their_meaning() {
    let counter = Counter {
        cache: new_cache(),
        step: 1,
    };
    assert_eq!(counter.count(2, " x ").await.as_deref(), Some("x=6/1"));
    let key = Key::new("count").part(1).part(2).part(" x ");
    assert_eq!(
        counter.cache.get::<String>(&key).await.unwrap().as_deref(),
        Some("x=6/1")
    );
}

/// Every operation fails, as with Redis unreachable.
#[derive(Debug)]
struct Down;

fn down() -> aside::backend::BackendError {
    aside::backend::BackendError::failed(std::io::Error::other("connection refused"))
}

#[async_trait::async_trait]
impl aside::backend::Backend for Down {
    fn profile(&self) -> aside::backend::Profile {
        aside::backend::Profile::remote()
    }
    async fn read(
        &self,
        _: &aside::backend::ReadRequest<'_>,
    ) -> Result<aside::backend::Found, aside::backend::BackendError> {
        Err(down())
    }
    async fn acquire(
        &self,
        _: &aside::backend::AcquireRequest<'_>,
    ) -> Result<Vec<aside::backend::Acquired>, aside::backend::BackendError> {
        Err(down())
    }
    async fn fill(
        &self,
        _: &aside::backend::FillRequest<'_>,
    ) -> Result<Vec<bool>, aside::backend::BackendError> {
        Err(down())
    }
    async fn set(
        &self,
        _: &aside::backend::SetRequest<'_>,
    ) -> Result<(), aside::backend::BackendError> {
        Err(down())
    }
    async fn invalidate(&self, _: &[String]) -> Result<(), aside::backend::BackendError> {
        Err(down())
    }
    async fn remove_versions(&self, _: &[String]) -> Result<(), aside::backend::BackendError> {
        Err(down())
    }
}

#[tokio::test]
async fn a_backend_that_is_down_degrades_to_the_body() {
    static CACHE: LazyLock<Cache> = LazyLock::new(|| {
        Cache::builder()
            .backend(Down)
            .build()
            .expect("valid config")
    });
    static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[aside::cached(cache = CACHE, key = "user:{id}", tags = ["users"])]
    async fn user(id: u64) -> Result<Option<u64>, AppError> {
        RUNS.fetch_add(1, SeqCst);
        Ok(Some(id))
    }

    assert_eq!(user(1).await, Ok(Some(1)));
    assert_eq!(user(1).await, Ok(Some(1)));
    assert_eq!(RUNS.load(SeqCst), 2, "nothing could be cached");
}
