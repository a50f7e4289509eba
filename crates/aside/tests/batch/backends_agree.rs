//! Edge cases on which the memory, Redis and two-level backends must give
//! the same answers and make the same loader calls: an empty batch, keys
//! asked twice, keys over `max_key_len`, keys the loader leaves out (with
//! negative caching on and off), keys it returns without being asked, and a
//! batch of 2,500 keys split into chunks.

use std::sync::{Arc, Mutex};

use super::*;

type Transcript = Vec<String>;

/// What the test loader returns.
type Loaded = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<HashMap<String, String>, DbDown>> + Send>,
>;

/// A loader that records its call, leaves out `absent*` and adds a key
/// nobody asked for.
fn loader(log: &Arc<Mutex<Transcript>>) -> impl FnOnce(Vec<String>) -> Loaded + Send + 'static {
    let log = Arc::clone(log);
    move |keys: Vec<String>| {
        Box::pin(async move {
            let shown: Vec<String> = keys.iter().map(|k| k.chars().take(12).collect()).collect();
            log.lock()
                .unwrap()
                .push(format!("loader {} {shown:?}", keys.len()));
            let mut found: HashMap<String, String> = keys
                .into_iter()
                .filter(|k| !k.starts_with("absent"))
                .map(|k| (k.clone(), format!("v:{k}")))
                .collect();
            found.insert("unasked".to_owned(), "v:unasked".to_owned());
            Ok(found)
        })
    }
}

async fn scenario(cache: Cache) -> Transcript {
    let log = Arc::new(Mutex::new(Vec::new()));
    let say = |s: String| log.lock().unwrap().push(s);
    let empty: Vec<Option<String>> = cache
        .get_many_or_load(Vec::<String>::new(), loader(&log))
        .await
        .unwrap();
    say(format!("empty {empty:?}"));
    let long = "L".repeat(400);
    let keys = vec![
        "x".to_owned(),
        long.clone(),
        "x".to_owned(),
        "absent".to_owned(),
        "y".to_owned(),
    ];
    for round in 0..2 {
        let got = cache
            .get_many_or_load(keys.clone(), loader(&log))
            .await
            .unwrap();
        let shown: Vec<Option<String>> = got
            .into_iter()
            .map(|g| g.map(|v| v.chars().take(12).collect()))
            .collect();
        say(format!("round {round} {shown:?}"));
    }
    // Keys the loader returned unasked are not cached: no token was read
    // for them before the load, so nothing proves them current.
    let unasked = cache.get::<String>("unasked").await.unwrap();
    say(format!("unasked {unasked:?}"));
    let many: Vec<String> = (0..2500).map(|i| format!("m{i}")).collect();
    for round in 0..2 {
        let got = cache
            .get_many_or_load(many.clone(), loader(&log))
            .await
            .unwrap();
        let right = got
            .iter()
            .zip(&many)
            .all(|(g, k)| g.as_deref() == Some(format!("v:{k}").as_str()));
        say(format!("many {round} in order: {right}"));
    }
    let mut out = log.lock().unwrap().clone();
    // The 2,500 keys' loader call lists them in order: keep the count only.
    for line in &mut out {
        if line.starts_with("loader 2500") {
            *line = "loader 2500".to_owned();
        }
    }
    out
}

fn memory(negative: bool) -> Cache {
    let b = builder("ag")
        .backend(MemoryBackend::new())
        .batch_chunk_size(1000);
    negative_ttl(b, negative).build().unwrap()
}

fn on_redis(redis: &RedisServer, negative: bool) -> Cache {
    let b = builder("ag")
        .backend(redis_backend(redis))
        .batch_chunk_size(1000);
    negative_ttl(b, negative).build().unwrap()
}

fn tiered(redis: &RedisServer, negative: bool) -> Cache {
    let backend = TieredBackend::builder(redis_backend(redis))
        .build()
        .unwrap();
    let b = builder("ag").backend(backend).batch_chunk_size(1000);
    negative_ttl(b, negative).build().unwrap()
}

fn negative_ttl(b: aside::CacheBuilder, on: bool) -> aside::CacheBuilder {
    b.negative_ttl(on.then_some(Duration::from_secs(60)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_agree_on_edge_cases() {
    for negative in [true, false] {
        let on_memory = scenario(memory(negative)).await;
        let redis = redis_server();
        let on_redis = scenario(on_redis(&redis, negative)).await;
        let redis = redis_server();
        let on_tiered = scenario(tiered(&redis, negative)).await;
        assert_eq!(on_memory, on_redis, "negative caching {negative}");
        assert_eq!(on_memory, on_tiered, "negative caching {negative}");
        // The second round asks the loader for nothing, or for the absent
        // key alone when "not found" is not cached.
        let second_round_loads: Vec<&String> = on_memory
            .iter()
            .skip_while(|l| !l.starts_with("round 0"))
            .skip(1)
            .take_while(|l| !l.starts_with("round 1"))
            .collect();
        if negative {
            assert!(second_round_loads.is_empty(), "{on_memory:#?}");
        } else {
            assert_eq!(
                second_round_loads,
                [r#"loader 1 ["absent"]"#],
                "{on_memory:#?}"
            );
        }
        assert!(
            on_memory.contains(&"unasked None".to_owned()),
            "{on_memory:#?}"
        );
    }
}
