//! Tags and namespaces: invalidating every entry of a category, or a whole
//! namespace, with one write each, whatever the number of entries.
//!
//! `ASIDE_REDIS_URL=redis://127.0.0.1:6379 cargo run -p aside --example tags`
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aside::backend::RedisBackend;
use aside::{Cache, EntryOptions, Key};

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// A cache on `redis_url` in `namespace`, with namespace invalidation on
/// (every read then also checks the namespace's version, in the same round
/// trip as the entry).
async fn cache(redis_url: &str, namespace: &str) -> Result<Cache, Box<dyn Error>> {
    let cache = Cache::builder()
        .namespace(namespace)
        .namespace_invalidation(true)
        .backend(RedisBackend::new(redis_url)?)
        .backend_timeout(Duration::from_secs(2))
        .build()?;
    cache.ping().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
        format!("cannot reach Redis ({e}{cause}); start redis-server, or set ASIDE_REDIS_URL (default {DEFAULT_URL})")
    })?;
    // Another run of this example may have left entries: start clean.
    cache.invalidate_namespace().await?;
    Ok(cache)
}

/// A product's name, cached with the tag of its category. `loads` counts
/// the loader's runs (the database's `SELECT`s).
async fn name(
    cache: &Cache,
    id: i64,
    category: i64,
    loads: &Arc<AtomicU32>,
) -> Result<String, Box<dyn Error>> {
    // A tag is a string; building it like a key escapes its parts.
    let options = EntryOptions::new().tag(Key::new("category").part(category).to_string());
    let loads = loads.clone();
    let got = cache
        .get_or_load_with(Key::new("product").part(id), &options, move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some(format!("product {id}")))
        })
        .await?;
    got.ok_or_else(|| "the loader always returns a value".into())
}

pub async fn run(redis_url: &str) -> Result<(), Box<dyn Error>> {
    let shop = cache(redis_url, "example-shop").await?;
    let loads = Arc::new(AtomicU32::new(0));
    let catalogue = [(1, 7), (2, 7), (3, 8)]; // (product, category)

    for (id, category) in catalogue {
        name(&shop, id, category, &loads).await?;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 3);

    // Category 7 changed (say, a discount on every product in it): one
    // write makes products 1 and 2 unreadable; product 3 stays cached.
    let done = shop.invalidate_tag(Key::new("category").part(7)).await?;
    assert!(done.is_applied());
    for (id, category) in catalogue {
        name(&shop, id, category, &loads).await?;
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        5,
        "1 and 2 reloaded, 3 was a hit"
    );

    // Namespaces separate applications sharing one Redis: the same key in
    // another namespace is another entry.
    let blog = cache(redis_url, "example-blog").await?;
    let blog_loads = Arc::new(AtomicU32::new(0));
    name(&blog, 1, 7, &blog_loads).await?;
    assert_eq!(blog_loads.load(Ordering::SeqCst), 1, "not the shop's entry");

    // Invalidating a namespace is one write too: every shop entry reloads,
    // the blog's entry is untouched.
    assert!(shop.invalidate_namespace().await?.is_applied());
    for (id, category) in catalogue {
        name(&shop, id, category, &loads).await?;
    }
    name(&blog, 1, 7, &blog_loads).await?;
    assert_eq!(loads.load(Ordering::SeqCst), 8, "every shop entry reloaded");
    assert_eq!(
        blog_loads.load(Ordering::SeqCst),
        1,
        "the blog's entry was a hit"
    );

    let s = shop.stats();
    println!(
        "tags: shop hits {}, misses {}; tag invalidations {}, namespace invalidations {}",
        s.hits, s.misses, s.tag_invalidations, s.namespace_invalidations
    );
    assert_eq!(s.hits, 1);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("ASIDE_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    run(&url).await
}
