//! Keys: a crafted unhashed key must not equal a hashed one. A key longer
//! than `max_key_len` is stored under a readable prefix and a digest; the
//! logical key that spells that backend key unhashed must map elsewhere,
//! and each must get its own value.

use aside::Cache;

/// For a long (hashed) key, the logical key whose unhashed form would spell
/// the same backend key — `n:<prefix>#<digest>` minus `n:` — must map
/// elsewhere, and each must get its own value.
async fn crafted_twin_is_a_different_key(long: &str) {
    let cache = Cache::builder()
        .namespace("n")
        .max_key_len(80)
        .build()
        .unwrap();
    let hashed = cache.backend_key(long);
    let crafted = hashed.strip_prefix("n:").unwrap().to_owned();
    assert_ne!(crafted, long);
    assert_ne!(
        cache.backend_key(&crafted),
        hashed,
        "{crafted:?} and a {}-byte key share a backend key",
        long.len()
    );
    let a: Option<String> = cache
        .get_or_load(long, || async {
            Ok::<_, std::io::Error>(Some("long".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(a.as_deref(), Some("long"));
    let b: Option<String> = cache
        .get_or_load(&crafted, || async {
            Ok::<_, std::io::Error>(Some("crafted".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(
        b.as_deref(),
        Some("crafted"),
        "the crafted key read the long key's entry"
    );
    let again: Option<String> = cache
        .get_or_load(long, || async {
            Ok::<_, std::io::Error>(Some("reloaded".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(
        again.as_deref(),
        Some("long"),
        "the crafted key overwrote the long key"
    );
}

/// An ASCII long key: its hashed form is exactly `max_key_len` bytes, and the
/// crafted twin's unhashed form is too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_key_does_not_collide_with_hashed_key_at_the_limit() {
    crafted_twin_is_a_different_key(&"x".repeat(200)).await;
}

/// A multi-byte long key whose readable prefix is cut back to a char boundary:
/// unless padded, its hashed form is a byte *shorter* than the limit, so
/// "hash at the limit" alone would keep the twin unhashed and equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_key_does_not_collide_with_hashed_key_cut_on_a_char_boundary() {
    crafted_twin_is_a_different_key(&"é".repeat(100)).await;
}
