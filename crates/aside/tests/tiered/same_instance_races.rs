//! Writes racing reads and fills in the instance that writes: a read or a
//! fill of L2 that began before a `set` never leaves its older copy in L1
//! after the `set` put the new one.
//!
//! Several tests are regression tests of defects found in a review of the
//! two-level backend: their comment ("FINDING") describes the defect as it
//! was, their name what is checked now.

use crate::scripted::{Gated, cache_over, get, load, tiered};

/// FINDING: a `set` does not invalidate the guard of its key, so a read of
/// L2 that began before the `set` (and read the old entry) puts its old copy
/// *after* the `set` put the new one. The instance that wrote then serves
/// the old value from L1 while L2 holds the new one (until `max_l1_age`).
#[tokio::test]
async fn a_read_racing_a_set_in_the_same_instance_leaves_no_older_copy() {
    let l2 = Gated::new();
    cache_over(l2.inner.clone())
        .set("k", "old".to_owned())
        .await
        .unwrap();
    let (a, _ab) = tiered(&l2, None);
    // a reads L2 (guard taken, old entry read) and is held before its put.
    let (reached, release) = l2.ctl.get.arm();
    let reader = tokio::spawn({
        let a = a.clone();
        async move { get(&a, "k").await }
    });
    reached.await.unwrap();
    a.set("k", "new".to_owned()).await.unwrap();
    release.send(()).unwrap();
    // It began before the set: the old value is its right answer.
    assert_eq!(reader.await.unwrap().as_deref(), Some("old"));
    assert_eq!(
        get(&a, "k").await.as_deref(),
        Some("new"),
        "a read that began after `set` returned got the value it replaced"
    );
}

/// FINDING (same cause): a fill accepted by L2 just before a `set`, whose
/// copy is put just after the `set`'s, leaves the older value in L1.
#[tokio::test]
async fn a_fill_racing_a_set_in_the_same_instance_leaves_no_older_copy() {
    let l2 = Gated::new();
    let (a, _ab) = tiered(&l2, None);
    let (reached, release) = l2.ctl.fill.arm();
    let loader = tokio::spawn({
        let a = a.clone();
        async move { load(&a, "k", "old").await }
    });
    reached.await.unwrap();
    a.set("k", "new".to_owned()).await.unwrap();
    release.send(()).unwrap();
    assert_eq!(loader.await.unwrap().as_deref(), Some("old"));
    assert_eq!(
        get(&a, "k").await.as_deref(),
        Some("new"),
        "a read that began after `set` returned got the value it replaced"
    );
}
