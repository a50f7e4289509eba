//! Loaders with names: `Loader` and `BatchLoader` implemented on types of
//! the caller's own, next to the closures they are blanket-implemented for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aside::{BatchLoadFuture, BatchLoader, Cache, ErrorKind, LoadFuture, Loader};

#[derive(Debug, thiserror::Error)]
#[error("no connection left in the pool")]
struct PoolExhausted;

/// A stand-in for a repository over a connection pool: rows by id, and a
/// count of the queries it ran.
#[derive(Clone, Default)]
struct Repo {
    rows: Arc<Mutex<HashMap<String, String>>>,
    queries: Arc<AtomicUsize>,
    down: bool,
}

impl Repo {
    fn with(rows: &[(&str, &str)]) -> Self {
        let repo = Repo::default();
        repo.rows
            .lock()
            .unwrap()
            .extend(rows.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        repo
    }
}

/// One row by key.
struct Row {
    repo: Repo,
    key: String,
}

impl Loader<String> for Row {
    type Error = PoolExhausted;
    type Future = LoadFuture<String, PoolExhausted>;

    fn load(self) -> Self::Future {
        Box::pin(async move {
            self.repo.queries.fetch_add(1, Ordering::SeqCst);
            if self.repo.down {
                return Err(PoolExhausted);
            }
            Ok(self.repo.rows.lock().unwrap().get(&self.key).cloned())
        })
    }
}

/// Many rows in one query.
impl BatchLoader<String> for Repo {
    type Error = PoolExhausted;
    type Future = BatchLoadFuture<String, PoolExhausted>;

    fn load(self, keys: Vec<String>) -> Self::Future {
        Box::pin(async move {
            self.queries.fetch_add(1, Ordering::SeqCst);
            if self.down {
                return Err(PoolExhausted);
            }
            let rows = self.rows.lock().unwrap();
            Ok(keys
                .into_iter()
                .filter_map(|k| rows.get(&k).map(|v| (k, v.clone())))
                .collect())
        })
    }
}

fn cache() -> Cache {
    Cache::builder().namespace("named").build().unwrap()
}

#[tokio::test]
async fn a_struct_is_a_loader() {
    let cache = cache();
    let repo = Repo::with(&[("user:1", "ada")]);
    let row = |key: &str| Row {
        repo: repo.clone(),
        key: key.to_owned(),
    };
    assert_eq!(
        cache.get_or_load("user:1", row("user:1")).await.unwrap(),
        Some("ada".to_owned())
    );
    // Cached: the second call runs no query.
    assert_eq!(
        cache.get_or_load("user:1", row("user:1")).await.unwrap(),
        Some("ada".to_owned())
    );
    assert_eq!(
        cache.get_or_load("user:2", row("user:2")).await.unwrap(),
        None
    );
    assert_eq!(repo.queries.load(Ordering::SeqCst), 2);
    // A closure still is one, on the same cache, and the value type can
    // still be named first.
    let v = cache
        .get_or_load::<String, _>("user:4", || async { Ok::<_, PoolExhausted>(None) })
        .await
        .unwrap();
    assert_eq!(v, None);
    let v: Option<String> = cache
        .get_or_load("user:3", || async {
            Ok::<_, PoolExhausted>(Some("bob".into()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("bob"));
}

#[tokio::test]
async fn a_named_loaders_error_is_the_errors_source() {
    let cache = cache();
    let repo = Repo {
        down: true,
        ..Repo::default()
    };
    let e = cache
        .get_or_load(
            "user:1",
            Row {
                repo,
                key: "user:1".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Loader);
    let source = std::error::Error::source(&e).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("no connection left in the pool"));
}

#[tokio::test]
async fn a_struct_is_a_batch_loader() {
    let cache = cache();
    let repo = Repo::with(&[("a", "1"), ("b", "2")]);
    let got = cache
        .get_many_or_load(["a", "b", "c"], repo.clone().into_fn())
        .await
        .unwrap();
    assert_eq!(got, [Some("1".to_owned()), Some("2".to_owned()), None]);
    // All cached, "c" as a negative entry: no second query.
    let again = cache
        .get_many_or_load(["a", "b", "c"], repo.clone().into_fn())
        .await
        .unwrap();
    assert_eq!(again, got);
    assert_eq!(repo.queries.load(Ordering::SeqCst), 1);
    let down = Repo {
        down: true,
        ..Repo::default()
    };
    let e = cache
        .get_many_or_load(["d"], down.into_fn())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Loader);
}

#[tokio::test]
async fn a_named_batch_loader_warms_a_cache() {
    let cache = cache();
    let repo = Repo::with(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let loader = repo.clone();
    let report = cache
        .warm(
            ["a", "b", "c", "d"],
            move |keys| loader.clone().load(keys),
            &aside::WarmOptions::new().chunk_size(2).concurrency(1),
        )
        .await
        .unwrap();
    assert_eq!((report.loaded, report.failed), (4, 0));
    // One query per chunk of two keys.
    assert_eq!(repo.queries.load(Ordering::SeqCst), 2);
    assert_eq!(
        cache.get::<String>("b").await.unwrap().as_deref(),
        Some("2")
    );
}
