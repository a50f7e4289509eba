//! The Redis backend on a real Redis Cluster (three primaries started by
//! `aside_test::RedisCluster`): the conformance suite, the cache's
//! operations with keys on every primary, and the consistency promise under
//! a random workload of loads and key, tag and namespace invalidations.
//!
//! An entry (`{ns:key}`) and its namespace's tokens (`{ns}:n`,
//! `{ns}:t:<tag>`) live in different slots, so on a cluster a fill's check
//! of the tokens is not atomic with its write; these tests show that reads
//! (which check every entry's tokens) keep the promise all the same.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside::backend::{
    AcquireRequest, Backend, Entry, FillRequest, Inspect, LeaseAsk, RedisBackend, Stored,
};
use aside::backend::{FillWatch, Lease, TieredBackend};
use aside::{Cache, EntryOptions};
use aside_test::{RedisCluster, conformance};

use crate::stress;
use aside_test::fixtures::DbDown;

fn cluster(replicas: usize) -> RedisCluster {
    RedisCluster::start(3, replicas).unwrap_or_else(|e| panic!("{e}"))
}

fn backend(cluster: &RedisCluster) -> RedisBackend {
    RedisBackend::cluster(cluster.urls())
        .build()
        .expect("valid cluster URLs")
}

fn cache(cluster: &RedisCluster, namespace: &str) -> Cache {
    Cache::builder()
        .namespace(namespace)
        .ttl(Duration::from_secs(60))
        .namespace_invalidation(true)
        .backend(backend(cluster))
        .build()
        .unwrap()
}

/// The primaries (ports) serving the entries of `keys` in `cache`.
fn primaries(cluster: &RedisCluster, cache: &Cache, keys: &[String]) -> HashSet<u16> {
    keys.iter()
        .map(|k| {
            let storage = backend(cluster).storage_key(&cache.backend_key(k));
            cluster
                .primary_of_slot(cluster.keyslot(&storage).unwrap())
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_backend_conforms() {
    // Every check uses a namespace of its own: entries and tokens land in
    // slots all over the three primaries.
    let cluster = cluster(0);
    let urls = cluster.urls();
    let make = || RedisBackend::cluster(urls.clone()).build().expect("URLs");
    conformance::run(make).await;
    conformance::run_leases(make).await;
}

/// `inspect` on a cluster: the entry, its lease (one pipeline on the
/// entry's slot) and its tokens (on the namespace's slot), for keys on
/// every primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_inspected_on_every_primary() {
    let cluster = cluster(0);
    let cache = cache(&cluster, "seen");
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    assert_eq!(primaries(&cluster, &cache, &keys).len(), 3);
    let opts = aside::EntryOptions::new().tag("t");
    for (i, key) in keys.iter().enumerate() {
        cache.set_with(key, i, &opts).await.unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let info = cache.inspect(key).await.unwrap().expect("stored");
        assert_eq!(info.decode::<usize>().unwrap(), Some(i));
        assert_eq!(info.storage.entry_key, format!("{{seen:{key}}}"));
        assert_eq!(info.storage.lease_held, Some(false));
        assert!(info.storage.expires_in.is_some());
        let tags: Vec<Option<&str>> = info.dependencies.iter().map(|d| d.tag.as_deref()).collect();
        assert_eq!(tags, [None, Some("t")]);
        assert!(info.is_current());
    }
    cache.invalidate_tag("t").await.unwrap();
    let info = cache.inspect(&keys[0]).await.unwrap().expect("stored");
    assert!(!info.is_current() && info.dependencies[0].holds());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_operations_on_every_primary() {
    let cluster = cluster(0);
    let cache = cache(&cluster, "ops");
    let keys: Vec<String> = (0..24).map(|i| format!("item:{i}")).collect();
    assert_eq!(
        primaries(&cluster, &cache, &keys).len(),
        3,
        "the keys should land on all three primaries"
    );
    let loads = Arc::new(AtomicU64::new(0));
    let load = |key: &str, tag: &str, value: i64| {
        let loads = Arc::clone(&loads);
        let cache = cache.clone();
        let key = key.to_owned();
        let opts = EntryOptions::new().tag(tag);
        async move {
            cache
                .get_or_load_with(&key, &opts, move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, DbDown>(Some(value))
                })
                .await
                .unwrap()
        }
    };
    // get_or_load: one load per key, then hits.
    for (i, k) in keys.iter().enumerate() {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        assert_eq!(load(k, tag, 1).await, Some(1));
        assert_eq!(load(k, tag, 2).await, Some(1), "{k}: a hit");
    }
    assert_eq!(loads.load(Ordering::SeqCst), keys.len() as u64);
    // invalidate: that key only.
    assert!(cache.invalidate(&keys[0]).await.unwrap().is_applied());
    assert_eq!(cache.get::<i64>(&keys[0]).await.unwrap(), None);
    assert_eq!(cache.get::<i64>(&keys[2]).await.unwrap(), Some(1));
    // invalidate_tag: every "odd" entry, on every primary, and no other.
    assert!(cache.invalidate_tag("odd").await.unwrap().is_applied());
    for (i, k) in keys.iter().enumerate().skip(1) {
        let expected = if i % 2 == 0 { Some(1) } else { None };
        assert_eq!(cache.get::<i64>(k).await.unwrap(), expected, "{k}");
    }
    // get_or_load after a tag invalidation loads the new value.
    assert_eq!(load(&keys[1], "odd", 3).await, Some(3));
    assert_eq!(cache.get::<i64>(&keys[1]).await.unwrap(), Some(3));
    // invalidate_namespace: everything.
    assert!(cache.invalidate_namespace().await.unwrap().is_applied());
    for k in &keys {
        assert_eq!(cache.get::<i64>(k).await.unwrap(), None, "{k}");
    }
    // set, then get.
    cache.set(&keys[3], 30_i64).await.unwrap();
    assert_eq!(cache.get::<i64>(&keys[3]).await.unwrap(), Some(30));
    // set_many across every primary, then a batch read of them all.
    cache
        .set_many(keys.iter().map(|k| (k.clone(), 40_i64)))
        .await
        .unwrap();
    let got: Vec<Option<i64>> = cache
        .get_many_or_load(keys.clone(), |_| async {
            Ok::<_, DbDown>(HashMap::<String, i64>::new())
        })
        .await
        .unwrap();
    assert!(got.iter().all(|v| *v == Some(40)), "{got:?}");
    // invalidate_many across every primary.
    assert!(
        cache
            .invalidate_many(keys.iter().take(12))
            .await
            .unwrap()
            .is_applied()
    );
    // get_many_or_load loads exactly the invalidated keys, in one call.
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&asked);
    let got: Vec<Option<i64>> = cache
        .get_many_or_load(keys.clone(), move |missing: Vec<String>| async move {
            seen.lock().unwrap().extend(missing.iter().cloned());
            Ok::<_, DbDown>(missing.into_iter().map(|k| (k, 50_i64)).collect())
        })
        .await
        .unwrap();
    let mut asked = asked.lock().unwrap().clone();
    asked.sort();
    let mut expected: Vec<String> = keys.iter().take(12).cloned().collect();
    expected.sort();
    assert_eq!(asked, expected);
    for (i, v) in got.iter().enumerate() {
        assert_eq!(*v, Some(if i < 12 { 50 } else { 40 }), "{}", keys[i]);
    }
    // And they were stored: read again without a load.
    let got: Vec<Option<i64>> = cache
        .get_many_or_load(keys.clone(), |_| async {
            Err::<HashMap<String, i64>, _>(DbDown)
        })
        .await
        .unwrap();
    assert!(got.iter().all(Option::is_some), "{got:?}");
    // A batch with a tag, then the tag invalidated.
    let opts = EntryOptions::new().tag("batch");
    let tagged: Vec<String> = (0..9).map(|i| format!("tagged:{i}")).collect();
    let got: Vec<Option<i64>> = cache
        .get_many_or_load_with(tagged.clone(), &opts, |missing: Vec<String>| async move {
            Ok::<_, DbDown>(missing.into_iter().map(|k| (k, 60_i64)).collect())
        })
        .await
        .unwrap();
    assert!(got.iter().all(|v| *v == Some(60)));
    assert!(cache.invalidate_tag("batch").await.unwrap().is_applied());
    for k in &tagged {
        assert_eq!(cache.get::<i64>(k).await.unwrap(), None, "{k}");
    }
    let s = cache.stats();
    assert_eq!(s.backend_errors, 0, "{s:?}");
    assert_eq!(s.backend_timeouts, 0, "{s:?}");
}

/// Two caches (two processes' worth) on one cluster, racing loads against
/// key, tag and namespace invalidations: no read that begins after an
/// `Applied` invalidation returns data loaded before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promise_holds_on_a_cluster() {
    let cluster = cluster(0);
    let caches = [cache(&cluster, "race"), cache(&cluster, "race")];
    let report = stress::run(&caches, Duration::from_millis(3000), None).await;
    report.assert_sound();
}

/// The same workload while the primary holding the namespace's tokens
/// hands over to its replica (`CLUSTER FAILOVER`, which loses no
/// acknowledged write): callers see no error (reads that cannot reach the
/// cluster for a moment load from the source; invalidations that cannot
/// are queued and retried, and count only once applied), and no read
/// returns data loaded before an `Applied` invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promise_holds_through_a_failover() {
    let cluster = Arc::new(cluster(1));
    let caches = [cache(&cluster, "fo"), cache(&cluster, "fo")];
    let tokens_slot = cluster.keyslot("{fo}:n").unwrap();
    let primary = cluster.primary_of_slot(tokens_slot).unwrap();
    let c = Arc::clone(&cluster);
    let promoted = Arc::new(std::sync::Mutex::new(None));
    let p = Arc::clone(&promoted);
    let failover = Box::new(move || {
        *p.lock().unwrap() = Some(c.failover(primary));
    });
    let report = stress::run(&caches, Duration::from_millis(6000), Some(failover)).await;
    let promoted = promoted.lock().unwrap().take().expect("the failover ran");
    let promoted = promoted.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.primary_of_slot(tokens_slot).unwrap(), promoted);
    assert!(
        report.during_finished_in_run,
        "the failover ended after the workload: {report:?}"
    );
    report.assert_sound();
}

/// The two-level backend over the cluster, with its backplane (classic
/// pub/sub, which a cluster forwards to every node): it keeps the contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_over_the_cluster_conforms() {
    let cluster = cluster(0);
    let l2 = backend(&cluster);
    let backplane = l2.backplane("aside:events").expect("a client");
    // A cluster backplane has no heartbeats (its messages reach the other
    // nodes over the cluster bus): no staleness bound on it.
    let refused = TieredBackend::builder(l2.clone())
        .backplane(backplane.clone())
        .build();
    assert!(
        refused.as_ref().is_err_and(aside::Error::is_config),
        "a bound needs heartbeats: {refused:?}"
    );
    let tiered = TieredBackend::builder(l2)
        .backplane(backplane)
        .max_staleness(None)
        .build()
        .expect("a tiered backend");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tiered.stats().gaps == 0 {
        assert!(Instant::now() < deadline, "the backplane never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    conformance::run(|| tiered.clone()).await;
    conformance::run_leases(|| tiered.clone()).await;
    assert!(tiered.stats().l1_hits > 0, "the suite never read a copy");
}

/// Waits (up to 15 s) for a reliable watch of `key`: the fill
/// subscription is up.
async fn reliable_watch(backend: &RedisBackend, key: &str) -> FillWatch {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let watch = backend.leases().unwrap().watch_fills(key).unwrap();
        if watch.is_reliable() {
            return watch;
        }
        assert!(
            Instant::now() < deadline,
            "the fill subscription never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One load holds `key`'s lease and fills; a waiter elsewhere is woken.
/// Errors are the backend's (a node lost, a stale slot map).
async fn wake_up(holder: &RedisBackend, waiter: &RedisBackend, key: &str) -> Result<(), String> {
    let ttl = Duration::from_secs(5);
    let keys = [key.to_owned()];
    let acquire = |backend: &RedisBackend, token: &'static str| {
        let request = AcquireRequest::new(&keys, &[], ttl).with_lease(LeaseAsk::new(token, ttl));
        let backend = backend.clone();
        async move {
            let mut got = backend.acquire(&request).await.map_err(|e| e.to_string())?;
            got.pop()
                .map(|a| a.token)
                .ok_or_else(|| format!("{key}: no answer"))
        }
    };
    let token = acquire(holder, "holder").await?;
    // A lease left by an attempt whose reply was lost with a node: an
    // error, and the caller retries with another key.
    if !matches!(token.lease(), Lease::Held(_)) {
        return Err(format!("{key}: lease not taken: {token:?}"));
    }
    let mut watch = reliable_watch(waiter, key).await;
    let busy = acquire(waiter, "waiter").await?;
    if !matches!(busy.lease(), Lease::Busy(_)) {
        return Err(format!(
            "{key}: the waiter did not find the lease busy: {busy:?}"
        ));
    }
    let fills = [(Entry::new(key, Stored::new(b"v".to_vec()), ttl), token)];
    let stored = holder
        .fill(&FillRequest::new(&fills, &[]))
        .await
        .map_err(|e| e.to_string())?;
    if stored != [true] {
        return Err(format!("{key}: the holder's fill was refused"));
    }
    tokio::time::timeout(Duration::from_secs(2), watch.notified())
        .await
        .map_err(|_| format!("{key}: the waiter was not woken by the fill"))
}

/// Fill wake-ups cross the cluster (a script's PUBLISH on the key's
/// primary reaches the subscription on another node), and when the node
/// the subscriptions listen on dies, they move to another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_cross_nodes_and_survive_a_lost_node() {
    let mut cluster = cluster(1);
    let (holder, waiter) = (backend(&cluster), backend(&cluster));
    // Keys on every primary: the subscriptions listen on the first URL's
    // node only.
    let keys: Vec<String> = (0..12).map(|i| format!("wake:k{i}")).collect();
    let on: HashSet<u16> = keys
        .iter()
        .map(|k| {
            let slot = cluster.keyslot(&holder.storage_key(k)).unwrap();
            cluster.primary_of_slot(slot).unwrap()
        })
        .collect();
    assert_eq!(on.len(), 3);
    for k in &keys {
        wake_up(&holder, &waiter, k).await.unwrap();
    }
    // The first node (a primary, which the subscriptions listen on) dies;
    // its replica takes over its slots.
    cluster.stop_node(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let survivor = cluster.nodes()[1].port();
    while !cluster
        .command_on(survivor, &["CLUSTER", "INFO"])
        .is_ok_and(|i| i.contains("cluster_state:ok"))
    {
        assert!(Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for k in &keys {
        let deadline = Instant::now() + Duration::from_secs(10);
        // The cluster connection may need a moment to learn the new map
        // (until then, operations on the lost node's slots fail: the cache
        // degrades to its loader). Each attempt takes a key of its own.
        for attempt in 0.. {
            let k = format!("{k}:after{attempt}");
            match wake_up(&holder, &waiter, &k).await {
                Ok(()) => break,
                Err(e) => assert!(Instant::now() < deadline, "{k}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A slot missing from the client's map of the cluster (a node's view while
/// slots move or a node is being reconnected) must neither fail a read nor
/// be skipped by an invalidation. redis-rs splits a multi-slot `MGET` or
/// `DEL` itself and silently leaves out the slots it cannot place: the read
/// then errs ("Mismatch in the number of multi-slot results") and the `DEL`
/// reports success with that slot's keys still there. The backend splits
/// them per slot itself, each part routed (and redirected) as one command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_the_client_has_not_mapped_is_read_and_invalidated() {
    let cluster = cluster(0);
    let writer = cache(&cluster, "hole");
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        writer.set(key, i as u64).await.unwrap();
    }
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let storage = backend(&cluster).storage_key(&writer.backend_key(&keys[0]));
    let slot = cluster.keyslot(&storage).unwrap();
    let owner = cluster.primary_of_slot(slot).unwrap();
    assert!(
        keys.iter().any(|k| cluster
            .keyslot(&backend(&cluster).storage_key(&writer.backend_key(k)))
            .unwrap()
            != slot),
        "the keys must span several slots"
    );
    assert_ne!(cluster.keyslot("{hole}:n").unwrap(), slot);

    // Every node forgets who serves the slot (its keys stay on the owner):
    // a client that maps the cluster now has a hole there. (A node may
    // hear of the old owner again from another before that one forgot it:
    // until every node answers that the slot is not served.)
    let unserved = |port: u16| {
        cluster
            .command_on(port, &["GET", &storage])
            .unwrap_or_default()
            .starts_with("CLUSTERDOWN")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ports.iter().all(|&p| unserved(p)) {
        assert!(Instant::now() < deadline, "slot {slot} is still served");
        for &port in &ports {
            cluster
                .command_on(
                    port,
                    &["CONFIG", "SET", "cluster-require-full-coverage", "no"],
                )
                .unwrap();
            // Refused (ERR) by a node that already forgot it.
            let _ = cluster.command_on(port, &["CLUSTER", "DELSLOTS", &slot.to_string()]);
        }
    }
    let reader = cache(&cluster, "hole");
    assert_eq!(reader.get::<u64>(&keys[1]).await.unwrap(), Some(1));
    assert!(
        ports.iter().all(|&p| unserved(p)),
        "the reader must have mapped the cluster with the hole"
    );

    // The owner claims the slot again; every node learns it, the reader's
    // map does not (nothing it sent was redirected).
    cluster
        .command_on(owner, &["CLUSTER", "ADDSLOTS", &slot.to_string()])
        .unwrap();
    for &port in &ports {
        while cluster
            .command_on(port, &["GET", &storage])
            .unwrap_or_default()
            .starts_with("CLUSTERDOWN")
        {
            assert!(
                Instant::now() < deadline,
                "node {port} never learnt slot {slot}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // The entry and the namespace's token are in two slots: one `MGET`
    // across them.
    assert_eq!(
        reader.get::<u64>(&keys[0]).await.unwrap(),
        Some(0),
        "a read across slots, one of them unmapped"
    );
    assert!(
        reader.invalidate_many(&keys).await.unwrap().is_applied(),
        "invalidation across slots, one of them unmapped"
    );
    let left = cluster.command_on(owner, &["EXISTS", &storage]).unwrap();
    assert_eq!(
        left.trim(),
        "0",
        "an Applied invalidation left the entry in the unmapped slot"
    );
}
