//! The lease checks: [`Leases`](aside::backend::Leases), for backends that
//! have them.

use std::time::{Duration, Instant};

use aside::backend::{Backend, FillToken, FillWatch, Lease, LeaseAsk};

use super::{Ctx, clause, ensure};

const LONG: Duration = Duration::from_secs(60);
/// A lease that does not lapse during a check.
const LEASE: Duration = Duration::from_secs(5);
/// A lease that lapses during a check.
const SHORT: Duration = Duration::from_millis(100);
const GRACE: Duration = Duration::from_millis(250);
/// How long a watch may take to fire.
const WAKE: Duration = Duration::from_secs(3);
/// How long a backend may take to make its watches reliable (a subscription
/// connecting).
const READY: Duration = Duration::from_secs(5);

impl<B: Backend> Ctx<B> {
    async fn take(&self, key: &str, holder: &str, ttl: Duration) -> FillToken {
        self.leases();
        self.acquire_leased(key, &[], holder, ttl).await.1
    }

    async fn renew(&self, key: &str, holder: &str) -> bool {
        let keys = [key.to_owned()];
        let renewal = self.leases().renew(&keys, LeaseAsk::new(holder, LEASE));
        let renewed = self.op("renew", renewal).await;
        ensure!(
            self,
            renewed.len() == 1,
            clause::LEASE_RENEW,
            "renew of one key returned {} answers",
            renewed.len()
        );
        renewed[0]
    }

    async fn release(&self, key: &str, holder: &str) {
        let keys = [key.to_owned()];
        self.op("release", self.leases().release(&keys, holder))
            .await;
    }

    /// Takes the lease of `key` for `holder`, failing the check if it is not
    /// free.
    async fn hold(&self, key: &str, holder: &str, ttl: Duration, why: &str) -> FillToken {
        let token = self.take(key, holder, ttl).await;
        ensure!(
            self,
            *token.lease() == Lease::Held(holder.to_owned()),
            clause::LEASE_TAKE,
            "{why}: acquire with a lease with the token {holder:?} returned the lease {:?}, \
             expected Held({holder:?})",
            token.lease()
        );
        token
    }

    /// Checks that the lease of `key` is taken: `probe` finds it busy.
    async fn expect_busy(&self, key: &str, probe: &str, clause: &str, why: &str) {
        let token = self.take(key, probe, LEASE).await;
        ensure!(
            self,
            matches!(token.lease(), Lease::Busy(_)),
            clause,
            "{why}: another token's acquire with a lease returned the lease {:?}, expected Busy",
            token.lease()
        );
    }
}

pub(super) async fn first_caller_holds_second_is_busy<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let (a, b) = (c.unique("a"), c.unique("b"));
    c.leases();
    let (entry, held) = c.acquire_leased(&k, &[c.version("v")], &a, LEASE).await;
    ensure!(
        c,
        *held.lease() == Lease::Held(a.clone()),
        clause::LEASE_TAKE,
        "the first acquire with a lease of a new key returned the lease {:?}, expected Held",
        held.lease()
    );
    ensure!(
        c,
        entry.is_none()
            && held.marker() != 0
            && held.versions().len() == 1
            && !held.versions().contains(&0),
        clause::ACQUIRE,
        "acquire with a lease of a new key returned the entry {entry:?} and the token \
         {held:?} (expected no entry, a non-zero marker and one non-zero counter)"
    );
    let busy = c.take(&k, &b, LEASE).await;
    match busy.lease() {
        Lease::Busy(left) => ensure!(
            c,
            !left.is_zero() && *left <= LEASE,
            clause::LEASE_TAKE,
            "a lease taken for {LEASE:?} was reported Busy({left:?}) to a second token"
        ),
        other => c.fail(
            clause::LEASE_TAKE,
            format_args!("a second token's acquire with a lease returned the lease {other:?}"),
        ),
    }
    ensure!(
        c,
        busy.marker() == held.marker(),
        clause::SAME_MARKER,
        "the holder's and a waiter's acquire with a lease returned the markers {} and {}",
        held.marker(),
        busy.marker()
    );
    // Still held: a third token is refused too.
    c.expect_busy(
        &k,
        &c.unique("c"),
        clause::LEASE_TAKE,
        "with the lease held",
    )
    .await;
}

pub(super) async fn renew_only_by_the_holder<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let (a, b) = (c.unique("a"), c.unique("b"));
    ensure!(
        c,
        !c.renew(&k, &a).await,
        clause::LEASE_RENEW,
        "renew of a lease nobody took returned true"
    );
    c.hold(&k, &a, LEASE, "a new key").await;
    ensure!(
        c,
        c.renew(&k, &a).await,
        clause::LEASE_RENEW,
        "the holder's renew returned false"
    );
    ensure!(
        c,
        !c.renew(&k, &b).await,
        clause::LEASE_RENEW,
        "another token's renew returned true"
    );
    // Renewing really extends: a short lease renewed for LEASE outlives its
    // first term.
    let k = c.key("short");
    c.hold(&k, &a, SHORT, "a new key").await;
    ensure!(
        c,
        c.renew(&k, &a).await,
        clause::LEASE_RENEW,
        "the holder's renew returned false"
    );
    tokio::time::sleep(SHORT + GRACE).await;
    c.expect_busy(
        &k,
        &b,
        clause::LEASE_RENEW,
        &format!(
            "a lease taken for {SHORT:?} and renewed for {LEASE:?}, {:?} later",
            SHORT + GRACE
        ),
    )
    .await;
    c.release(&k, &a).await;
    ensure!(
        c,
        !c.renew(&k, &a).await,
        clause::LEASE_RENEW,
        "renew after the holder released the lease returned true"
    );
}

pub(super) async fn release_by_the_holder_frees_the_lease<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let (a, b, n) = (c.unique("a"), c.unique("b"), c.unique("n"));
    c.hold(&k, &a, LEASE, "a new key").await;
    // Not the holder: nothing changes.
    c.release(&k, &n).await;
    c.expect_busy(
        &k,
        &b,
        clause::LEASE_RELEASE,
        "after another token's release",
    )
    .await;
    c.release(&k, &a).await;
    c.hold(&k, &b, LEASE, "after the holder's release").await;
    // Releasing a free lease is not an error.
    c.release(&k, &b).await;
    c.release(&k, &b).await;
}

pub(super) async fn fill_with_the_held_lease_releases_it<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let (a, b) = (c.unique("a"), c.unique("b"));
    let token = c.hold(&k, &a, LEASE, "a new key").await;
    ensure!(
        c,
        c.fill(&k, b"leased", LONG, &token, &[]).await,
        clause::LEASE_FILL,
        "the lease holder's fill, nothing changed since its acquire with a lease, was refused"
    );
    let got = c.get(&k).await;
    ensure!(
        c,
        got.as_deref() == Some(&b"leased"[..]),
        clause::GET,
        "after the holder's fill of \"leased\", get returned {got:?}"
    );
    c.hold(&k, &b, LEASE, "after the holder's fill").await;
}

pub(super) async fn fill_whose_lease_was_lost_is_refused<B: Backend>(c: &Ctx<B>) {
    let (a, b, p) = (c.unique("a"), c.unique("b"), c.unique("p"));

    // Lapsed, and taken by another load.
    let k = c.key("taken");
    let lost = c.hold(&k, &a, SHORT, "a new key").await;
    tokio::time::sleep(SHORT + GRACE).await;
    c.hold(
        &k,
        &b,
        LEASE,
        &format!("{:?} after a {SHORT:?} lease", SHORT + GRACE),
    )
    .await;
    let stored = c.fill(&k, b"stale", LONG, &lost, &[]).await;
    let got = c.get(&k).await;
    ensure!(
        c,
        !stored && got.is_none(),
        clause::LEASE_FILL,
        "a fill whose lease lapsed and was taken by another token returned {stored} (get then \
         returned {got:?})"
    );
    c.expect_busy(
        &k,
        &p,
        clause::LEASE_FILL,
        "after the refused fill of a lapsed lease",
    )
    .await;

    // Released (the load gave up), then filled anyway.
    let k = c.key("released");
    let released = c.hold(&k, &a, LEASE, "a new key").await;
    c.release(&k, &a).await;
    let stored = c.fill(&k, b"stale", LONG, &released, &[]).await;
    ensure!(
        c,
        !stored,
        clause::LEASE_FILL,
        "a fill with a lease its holder had released was accepted"
    );

    // Lapsed, nobody else took it: still not this token's.
    let k = c.key("lapsed");
    let lapsed = c.hold(&k, &a, SHORT, "a new key").await;
    tokio::time::sleep(SHORT + GRACE).await;
    let stored = c.fill(&k, b"stale", LONG, &lapsed, &[]).await;
    ensure!(
        c,
        !stored,
        clause::LEASE_FILL,
        "a fill whose {SHORT:?} lease had lapsed {GRACE:?} before was accepted"
    );
}

/// A watch of `key` that the backend says is reliable (its subscription is
/// up), or `None` if the backend cannot notify. Unreliable watches may miss
/// notifications by design: the check waits for a reliable one.
async fn reliable_watch<B: Backend>(c: &Ctx<B>, key: &str) -> Option<FillWatch> {
    let start = Instant::now();
    loop {
        let watch = c.leases().watch_fills(key)?;
        if watch.is_reliable() {
            return Some(watch);
        }
        if start.elapsed() > READY {
            c.fail(
                clause::LEASE_WATCH,
                format_args!("watch_fills returned only unreliable watches for {READY:?}"),
            );
        }
        drop(watch);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) async fn watch_fires_after_fill_or_release<B: Backend>(c: &Ctx<B>) {
    let (a, b) = (c.unique("a"), c.unique("b"));
    for ending in ["fill", "release"] {
        let k = c.key(ending);
        let token = c.hold(&k, &a, LEASE, "a new key").await;
        // As a waiting load does: watch first, then try the lease.
        let Some(mut watch) = reliable_watch(c, &k).await else {
            return; // The backend cannot notify: waiters re-check on a backoff.
        };
        c.expect_busy(&k, &b, clause::LEASE_TAKE, "while the lease is held")
            .await;
        if ending == "fill" {
            ensure!(
                c,
                c.fill(&k, b"leased", LONG, &token, &[]).await,
                clause::LEASE_FILL,
                "the lease holder's fill was refused"
            );
        } else {
            c.release(&k, &a).await;
        }
        ensure!(
            c,
            tokio::time::timeout(WAKE, watch.notified()).await.is_ok(),
            clause::LEASE_WATCH,
            "a watch registered before a busy lease attempt did not fire within {WAKE:?} of the \
             holder's {ending}"
        );
    }
}
