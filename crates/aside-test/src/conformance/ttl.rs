//! The TTL checks: entries lapse at their TTL, and the counters an entry
//! recorded live at least as long as it. They sleep (real time) past short
//! TTLs.

use std::time::{Duration, Instant};

use aside::backend::Backend;

use super::storage::VALUE;
use super::{Ctx, clause, ensure};

/// A TTL that does not lapse during a check.
const LONG: Duration = Duration::from_secs(60);
/// A TTL that lapses during a check.
const SHORT: Duration = Duration::from_millis(150);
/// How long past a short TTL the checks wait before expecting it lapsed.
const GRACE: Duration = Duration::from_millis(250);

pub(super) async fn versions_outlive_the_marker_ttl<B: Backend>(c: &Ctx<B>) {
    let (filled, set) = (c.key("filled"), c.key("set"));
    let (fv, sv) = ([c.version("f")], [c.version("s")]);
    let (_, token) = c.acquire(&filled, &fv, SHORT).await;
    ensure!(
        c,
        c.fill(&filled, VALUE, LONG, &token, &fv).await,
        clause::FILL,
        "a fill with the token of the key's first acquire was refused"
    );
    let (_, set_token) = c.acquire(&set, &sv, SHORT).await;
    c.set(&set, VALUE, LONG, &sv).await;
    tokio::time::sleep(SHORT + GRACE).await;

    for (what, key, names, expected) in [
        ("fill", &filled, &fv, token.versions()),
        ("set", &set, &sv, set_token.versions()),
    ] {
        let (got, read) = c.read(key, names).await;
        ensure!(
            c,
            got.as_deref() == Some(VALUE) && read == expected,
            clause::KEEP_VERSIONS,
            "a counter created by acquire with marker_ttl {SHORT:?} held {expected:?}; \
             a {what} for {LONG:?} listed it; {:?} later read read ({got:?}, {read:?})",
            SHORT + GRACE
        );
    }
}

/// If the backend lets an unused token lapse after `marker_ttl` (the
/// memory and Redis backends do; keeping tokens longer is allowed), a `set`
/// listing the lapsed counter must not bring it back, nor may a fill with
/// the token it had succeed.
pub(super) async fn lapsed_tokens_stay_gone<B: Backend>(c: &Ctx<B>) {
    let (k, other) = (c.key("k"), c.key("other"));
    let v = [c.version("v")];
    let (_, token) = c.acquire(&k, &v, SHORT).await;
    tokio::time::sleep(SHORT + GRACE).await;
    let (_, read) = c.read(&k, &v).await;
    if read != [0] {
        return; // Kept longer than `marker_ttl`: nothing to check.
    }
    c.set(&other, VALUE, LONG, &v).await;
    let (_, read) = c.read(&other, &v).await;
    ensure!(
        c,
        read == [0],
        clause::NO_RECREATE,
        "a counter lapsed (read 0); a set listing it brought it back as {read:?}"
    );
    let stored = c.fill(&k, b"stale", LONG, &token, &v).await;
    ensure!(
        c,
        !stored,
        clause::NO_RECREATE,
        "a fill with the token of a counter (and marker) that had lapsed was accepted"
    );
}

pub(super) async fn entries_expire_after_their_ttl<B: Backend>(c: &Ctx<B>) {
    let (filled, set) = (c.key("filled"), c.key("set"));
    let start = Instant::now();
    let (_, token) = c.acquire(&filled, &[], LONG).await;
    ensure!(
        c,
        c.fill(&filled, VALUE, SHORT, &token, &[]).await,
        clause::FILL,
        "a fill with the token of the key's first acquire was refused"
    );
    c.set(&set, VALUE, SHORT, &[]).await;
    for key in [&filled, &set] {
        let got = c.get(key).await;
        // Only when the backend answered well within the TTL (a loaded
        // machine may take longer).
        if start.elapsed() < SHORT / 2 {
            ensure!(
                c,
                got.as_deref() == Some(VALUE),
                clause::EXPIRY,
                "an entry stored for {SHORT:?} was gone {:?} later",
                start.elapsed()
            );
        }
    }
    tokio::time::sleep_until((start + SHORT + GRACE).into()).await;
    for key in [&filled, &set] {
        check_gone(c, key).await;
    }
}

async fn check_gone<B: Backend>(c: &Ctx<B>, key: &str) {
    let got = c.get(key).await;
    ensure!(
        c,
        got.is_none(),
        clause::EXPIRY,
        "an entry stored for {SHORT:?} was still returned by get {:?} later: {got:?}",
        SHORT + GRACE
    );
    let (got, _) = c.read(key, &[]).await;
    ensure!(
        c,
        got.is_none(),
        clause::EXPIRY,
        "an entry stored for {SHORT:?} was still returned by read {:?} later",
        SHORT + GRACE
    );
    if let Some(Ok(Some(_))) = c.backend.get_now(key) {
        c.fail(
            clause::EXPIRY,
            format_args!("an entry stored for {SHORT:?} was still returned by get_now"),
        );
    }
}
