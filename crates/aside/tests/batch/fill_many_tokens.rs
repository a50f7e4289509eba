//! The batch operations of each backend answer key by key as the single
//! ones do (the `Backend` contract): a fill whose tokens are current is
//! stored, one whose tokens are not is refused and leaves nothing, whatever
//! the other fills of the same request hold.

use aside::backend::{AcquireRequest, Backend, Entry, FillRequest, FillToken, ReadRequest, Stored};

use super::*;

const TTL: Duration = Duration::from_secs(60);

/// Takes the tokens of `x` under the counter, removes the counter (a tag's
/// invalidation), takes the tokens of `y`, then fills both in one request
/// in the order given. Returns what `fill_many` answered, and whether each
/// key then holds an entry.
async fn mixed_tokens(backend: &dyn Backend, x_first: bool) -> (Vec<bool>, Vec<bool>) {
    let counter = vec!["fm:t:v".to_owned()];
    let (x, y) = ("fm:x".to_owned(), "fm:y".to_owned());
    let token = |key: &String| {
        let keys = [key.clone()];
        let counter = &counter;
        async move {
            let request = AcquireRequest::new(&keys, counter, TTL);
            backend.acquire(&request).await.unwrap().remove(0).token
        }
    };
    let old = token(&x).await;
    backend.remove_versions(&counter).await.unwrap();
    let current = token(&y).await;
    let entry = |key: &str| Entry::new(key, Stored::new(vec![1u8, 2, 3]), TTL);
    let mut fills: Vec<(Entry, FillToken)> = vec![(entry(&x), old), (entry(&y), current)];
    if !x_first {
        fills.reverse();
    }
    let request = FillRequest::new(&fills, &counter);
    let mut stored = backend.fill(&request).await.unwrap();
    if !x_first {
        stored.reverse();
    }
    let keys = [x.clone(), y.clone()];
    let found = backend.read(&ReadRequest::new(&keys, &[])).await.unwrap();
    let present: Vec<bool> = found.entries.iter().map(Option::is_some).collect();
    (stored, present)
}

async fn check(backend: &dyn Backend, name: &str) {
    for x_first in [true, false] {
        let (stored, present) = mixed_tokens(backend, x_first).await;
        assert_eq!(
            stored,
            [false, true],
            "{name}, stale fill first: {x_first}: the fill with current tokens must be stored"
        );
        assert_eq!(
            present,
            [false, true],
            "{name}, stale fill first: {x_first}: a refused fill must leave nothing"
        );
        backend
            .invalidate(&["fm:x".to_owned(), "fm:y".to_owned()])
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_many_answers_each_fill_by_its_own_tokens() {
    check(&MemoryBackend::new(), "memory").await;
    let redis = redis_server();
    check(&redis_backend(&redis), "redis").await;
    let redis = redis_server();
    let tiered = TieredBackend::builder(redis_backend(&redis))
        .build()
        .unwrap();
    check(&tiered, "tiered").await;
}
