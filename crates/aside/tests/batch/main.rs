//! Batch lookups (`get_many_or_load`, `set_many`) and warming. On every
//! backend (`lookups`; the memory backend, a real redis-server and the
//! two-level backend over it): hits and misses in one call, duplicates,
//! omitted keys, tags, fail-safe, loads shared with other batches and
//! single calls. Then: batches and single calls racing to register their
//! loads (`simultaneous_loads`), round trips counted by Redis itself
//! (`round_trips`), one batch shared by two OS processes
//! (`across_processes`), stale entries, queued invalidations and leases
//! held elsewhere (`policies`), requests that time out or carry large
//! values (`requests`), what is left in Redis once the TTLs ran out
//! (`leftovers`), the backends' batch operations key by key
//! (`fill_many_tokens`) and their agreement on edge cases
//! (`backends_agree`), the consistency promise under a random workload
//! (`promise`, `promise_across_instances`), other instances' copies
//! (`tiered_copies`), and `Cache::warm` with hot-key tracking (`warm`).
//!
//! The helpers below are shared by the modules (`use super::*`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::backend::RedisBackend;
use aside::backend::{MemoryBackend, TieredBackend};
use aside::{Cache, EntryOptions, ErrorKind};
use aside_test::RedisServer;
use aside_test::fixtures::{DbDown, redis_server};
use aside_test::redis_stats::{commandstats, raw, reset_stats};
use tokio::sync::oneshot;

mod across_processes;
mod backends_agree;
mod fill_many_tokens;
mod leftovers;
mod lookups;
mod policies;
mod promise;
mod promise_across_instances;
mod requests;
mod round_trips;
mod simultaneous_loads;
mod tiered_copies;
mod warm;

fn builder(namespace: &str) -> aside::CacheBuilder {
    Cache::builder()
        .namespace(namespace)
        .ttl(Duration::from_secs(60))
        .compression(aside::Compression::None)
}

fn redis_backend(redis: &RedisServer) -> RedisBackend {
    RedisBackend::new(&redis.url()).unwrap()
}

fn memory() -> Cache {
    builder("b").backend(MemoryBackend::new()).build().unwrap()
}

fn on_redis(redis: &RedisServer) -> Cache {
    let backend = RedisBackend::new(&redis.url()).unwrap();
    builder("b").backend(backend).build().unwrap()
}

fn tiered(redis: &RedisServer) -> Cache {
    let l2 = RedisBackend::new(&redis.url()).unwrap();
    let backend = TieredBackend::builder(l2).build().unwrap();
    builder("b").backend(backend).build().unwrap()
}

/// A batch loader's record: the keys of each call.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Vec<String>>>>);

impl Calls {
    fn record(&self, keys: &[String]) {
        self.0.lock().unwrap().push(keys.to_vec());
    }
    fn all(&self) -> Vec<Vec<String>> {
        self.0.lock().unwrap().clone()
    }
    /// How many times each key was loaded, over every call.
    fn per_key(&self) -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for k in self.all().into_iter().flatten() {
            *n.entry(k).or_insert(0) += 1;
        }
        n
    }
}

/// What the test loaders return.
type Loaded =
    std::pin::Pin<Box<dyn Future<Output = Result<HashMap<String, String>, DbDown>> + Send>>;

/// A loader that records its keys and returns `v:<key>` for each.
fn loader(calls: &Calls, delay: Duration) -> impl FnOnce(Vec<String>) -> Loaded + Send + 'static {
    let calls = calls.clone();
    move |keys: Vec<String>| {
        Box::pin(async move {
            calls.record(&keys);
            tokio::time::sleep(delay).await;
            Ok(keys
                .into_iter()
                .map(|k| (k.clone(), format!("v:{k}")))
                .collect())
        })
    }
}

fn keys(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("k{i}")).collect()
}

/// A loader that finds every key it is asked for, as its own value.
async fn echo(keys: Vec<String>) -> Result<HashMap<String, String>, DbDown> {
    Ok(keys.into_iter().map(|k| (k.clone(), k)).collect())
}
