//! Shared pieces of the benchmarks in `benches/`: the value they cache and
//! the hit they time.

use aside::Cache;
use serde::{Deserialize, Serialize};

/// A typical small row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: u64,
    pub name: String,
    pub price_cents: u64,
    pub tags: Vec<String>,
}

/// The product every benchmark caches.
pub fn product() -> Product {
    Product {
        id: 42,
        name: "desk lamp, brass".into(),
        price_cents: 4_999,
        tags: vec!["lighting".into(), "home".into()],
    }
}

/// One `get_or_load` of `product:42`: a hit once the cache is warm.
///
/// # Panics
/// If the cache returns an error (the loader cannot fail).
#[allow(clippy::expect_used)]
pub async fn hit(cache: &Cache) -> Option<Product> {
    cache
        .get_or_load("product:42", || async {
            Ok::<_, std::convert::Infallible>(Some(product()))
        })
        .await
        .expect("a loader that cannot fail")
}

pub mod compare;

/// The runtime every harness here runs on: multi-thread with two workers,
/// as many as the machine kind these figures are for has CPUs.
///
/// # Errors
/// When the runtime cannot start its threads.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
