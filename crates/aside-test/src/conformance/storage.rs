//! The core checks: the storage contract of [`Backend`], one operation or
//! one interleaving at a time.

use std::collections::HashSet;
use std::time::Duration;

use aside::backend::{Backend, FillToken};

use super::{Ctx, clause, ensure};

/// A TTL that does not lapse during a check.
const LONG: Duration = Duration::from_secs(60);
/// Binary, not UTF-8, with zero bytes: stored and returned as they are.
pub(super) const VALUE: &[u8] = &[0, 159, 146, 150, 255, 0, b'a', b's', b'i', b'd', b'e', 0];

pub(super) async fn profile_is_consistent<B: Backend>(c: &Ctx<B>) {
    let profile = c.backend.profile();
    for _ in 0..3 {
        let again = c.backend.profile();
        ensure!(
            c,
            again == profile,
            clause::PROFILE,
            "profile() changed between calls: {profile:?} then {again:?}"
        );
    }
    if let Some(inspect) = c.backend.inspect() {
        c.op("ping", inspect.ping()).await;
    }

    // `get_now` and `read_one` agree with `read`, on a missing and on a
    // present key.
    let k = c.key("k");
    check_get_now(c, &k, None).await;
    let (_, token) = c.acquire(&k, &[], LONG).await;
    ensure!(
        c,
        c.fill(&k, VALUE, LONG, &token, &[]).await,
        clause::FILL,
        "a fill with the token of the key's first acquire was refused"
    );
    check_get_now(c, &k, Some(VALUE)).await;
}

async fn check_get_now<B: Backend>(c: &Ctx<B>, key: &str, expected: Option<&[u8]>) {
    let by_get = c.get(key).await;
    ensure!(
        c,
        by_get.as_deref() == expected,
        clause::GET,
        "read returned {by_get:?}, expected {expected:?}"
    );
    let one = super::bytes(c.op("read_one", c.backend.read_one(key)).await);
    ensure!(
        c,
        one == by_get,
        clause::GET_NOW,
        "read_one returned {one:?} where read returned {by_get:?}"
    );
    if let Some(now) = c.backend.get_now(key) {
        let now = match now {
            Ok(s) => super::bytes(s),
            Err(e) => panic!(
                "aside conformance check `{}` failed: `get_now` returned an error: {e:?}",
                c.check
            ),
        };
        ensure!(
            c,
            now == by_get,
            clause::GET_NOW,
            "get_now returned {now:?} where read returned {by_get:?}"
        );
    }
}

pub(super) async fn missing_key_reads_none<B: Backend>(c: &Ctx<B>) {
    let k = c.key("never-written");
    let got = c.get(&k).await;
    ensure!(
        c,
        got.is_none(),
        clause::GET,
        "get of a key never written returned {got:?}"
    );
    let (got, versions) = c.read(&k, &[]).await;
    ensure!(
        c,
        got.is_none() && versions.is_empty(),
        clause::READ_VERSIONS,
        "read of a key never written, no counters, returned ({got:?}, {versions:?})"
    );
}

pub(super) async fn acquire_creates_fresh_tokens<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let (a, b) = (c.version("a"), c.version("b"));
    let (entry, token) = c.acquire(&k, &[a.clone(), b.clone()], LONG).await;
    ensure!(
        c,
        entry.is_none(),
        clause::GET,
        "acquire of a key never written returned the entry {entry:?}"
    );
    ensure!(
        c,
        token.marker() != 0,
        clause::ACQUIRE,
        "the marker token of a new key is 0 (absent)"
    );
    ensure!(
        c,
        token.versions().len() == 2 && !token.versions().contains(&0),
        clause::ACQUIRE,
        "asked for 2 absent counters, got the tokens {:?} (expected 2 non-zero tokens)",
        token.versions()
    );
    // Created: they are there for readers, and in the order asked.
    let (_, read) = c.read(&k, &[b.clone(), a.clone()]).await;
    let expected = vec![token.versions()[1], token.versions()[0]];
    ensure!(
        c,
        read == expected,
        clause::ACQUIRE,
        "acquire's counters were not created (or not in the order asked): \
         read([b, a]) read {read:?}, acquire([a, b]) returned {:?}",
        token.versions()
    );
    // No counters: no version tokens.
    let (_, bare) = c.acquire(&c.key("bare"), &[], LONG).await;
    ensure!(
        c,
        bare.marker() != 0 && bare.versions().is_empty(),
        clause::ACQUIRE,
        "acquire with no counters returned the marker {} and the versions {:?}",
        bare.marker(),
        bare.versions()
    );
}

pub(super) async fn read_creates_nothing<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let names = [c.version("a"), c.version("b")];
    for round in 0..2 {
        let (entry, read) = c.read(&k, &names).await;
        ensure!(
            c,
            entry.is_none() && read == [0, 0],
            clause::READ_VERSIONS,
            "read of absent counters (read #{}) returned ({entry:?}, {read:?}), \
             expected (None, [0, 0])",
            round + 1
        );
    }
    // A load then sees absent counters too: it creates them, non-zero.
    let (_, token) = c.acquire(&k, &names, LONG).await;
    ensure!(
        c,
        !token.versions().contains(&0),
        clause::ACQUIRE,
        "acquire after read returned the tokens {:?}",
        token.versions()
    );
}

pub(super) async fn fill_stores_exact_bytes<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let v = [c.version("v")];
    let (_, token) = c.acquire(&k, &v, LONG).await;
    ensure!(
        c,
        c.fill(&k, VALUE, LONG, &token, &v).await,
        clause::FILL,
        "a fill with the token of acquire, nothing changed since, was refused"
    );
    let got = c.get(&k).await;
    ensure!(
        c,
        got.as_deref() == Some(VALUE),
        clause::GET,
        "after a fill of {VALUE:?}, get returned {got:?}"
    );
    let (got, read) = c.read(&k, &v).await;
    ensure!(
        c,
        got.as_deref() == Some(VALUE) && read == token.versions(),
        clause::READ_VERSIONS,
        "after a fill of {VALUE:?} with the counter token {:?}, read returned \
         ({got:?}, {read:?})",
        token.versions()
    );
    // A later load reads it, and its fill replaces it.
    let (got, token) = c.acquire(&k, &v, LONG).await;
    ensure!(
        c,
        got.as_deref() == Some(VALUE),
        clause::ACQUIRE,
        "acquire after a fill of {VALUE:?} read the entry {got:?}"
    );
    ensure!(
        c,
        c.fill(&k, b"second", LONG, &token, &v).await,
        clause::FILL,
        "the fill of a second load, nothing changed since its acquire, was refused"
    );
    let got = c.get(&k).await;
    ensure!(
        c,
        got.as_deref() == Some(&b"second"[..]),
        clause::GET,
        "after a second fill of \"second\", get returned {got:?}"
    );
}

pub(super) async fn marker_is_stable_while_it_exists<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let v = [c.version("v")];
    let (_, first) = c.acquire(&k, &v, LONG).await;
    for _ in 0..3 {
        let (_, again) = c.acquire(&k, &v, LONG).await;
        ensure!(
            c,
            again.marker() == first.marker() && again.versions() == first.versions(),
            clause::SAME_MARKER,
            "acquire returned the marker {} and counters {:?}, then the marker {} and \
             counters {:?}, with no invalidation between",
            first.marker(),
            first.versions(),
            again.marker(),
            again.versions()
        );
    }
    // Two concurrent loads hold the same token; either may fill.
    ensure!(
        c,
        c.fill(&k, VALUE, LONG, &first, &v).await,
        clause::FILL,
        "a fill with the (unchanged) token of the first of several acquire calls was refused"
    );
}

pub(super) async fn fill_after_invalidate_is_refused<B: Backend>(c: &Ctx<B>) {
    // A key never filled: the marker alone is removed.
    let k = c.key("new");
    let (_, token) = c.acquire(&k, &[], LONG).await;
    c.invalidate(std::slice::from_ref(&k)).await;
    let stored = c.fill(&k, b"stale", LONG, &token, &[]).await;
    ensure!(
        c,
        !stored,
        clause::FILL_AFTER_INVALIDATE,
        "acquire; invalidate; fill with the first token: the fill was accepted"
    );
    let got = c.get(&k).await;
    ensure!(
        c,
        got.is_none(),
        clause::FILL_AFTER_INVALIDATE,
        "a refused fill after invalidate left the entry {got:?}"
    );

    // A key with an entry: invalidate removes the entry as well.
    let k = c.key("filled");
    let (_, token) = c.acquire(&k, &[], LONG).await;
    ensure!(
        c,
        c.fill(&k, VALUE, LONG, &token, &[]).await,
        clause::FILL,
        "a fill with the token of the key's first acquire was refused"
    );
    let (_, token) = c.acquire(&k, &[], LONG).await;
    c.invalidate(std::slice::from_ref(&k)).await;
    let got = c.get(&k).await;
    ensure!(
        c,
        got.is_none(),
        clause::INVALIDATE,
        "after invalidate, get returned {got:?}"
    );
    let stored = c.fill(&k, b"stale", LONG, &token, &[]).await;
    let got = c.get(&k).await;
    ensure!(
        c,
        !stored && got.is_none(),
        clause::FILL_AFTER_INVALIDATE,
        "fill; acquire; invalidate; fill with the second token: the fill returned \
         {stored} and get then returned {got:?}"
    );
}

pub(super) async fn fill_after_set_is_refused<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let (_, token) = c.acquire(&k, &[], LONG).await;
    c.set(&k, b"written", LONG, &[]).await;
    let stored = c.fill(&k, b"stale", LONG, &token, &[]).await;
    let got = c.get(&k).await;
    ensure!(
        c,
        !stored && got.as_deref() == Some(&b"written"[..]),
        clause::FILL_AFTER_SET,
        "acquire; set \"written\"; fill \"stale\" with the first token: the fill returned \
         {stored} and get then returned {got:?}"
    );
}

pub(super) async fn set_is_unconditional_and_removes_the_marker<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    // Without any load, and over an existing entry.
    for value in [&b"one"[..], VALUE] {
        c.set(&k, value, LONG, &[]).await;
        let got = c.get(&k).await;
        ensure!(
            c,
            got.as_deref() == Some(value),
            clause::SET,
            "after set of {value:?}, get returned {got:?}"
        );
    }
    // The marker goes: the next load gets a new one.
    let (_, before) = c.acquire(&k, &[], LONG).await;
    c.set(&k, b"two", LONG, &[]).await;
    let (got, after) = c.acquire(&k, &[], LONG).await;
    ensure!(
        c,
        after.marker() != before.marker(),
        clause::SET,
        "acquire returned the marker {} before a set and the same one after it \
         (the set kept the marker, or it was re-created with its old value)",
        before.marker()
    );
    ensure!(
        c,
        got.as_deref() == Some(&b"two"[..]),
        clause::ACQUIRE,
        "after set of \"two\", acquire read the entry {got:?}"
    );
}

pub(super) async fn recreated_tokens_differ<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let v = [c.version("v")];
    let mut markers = HashSet::new();
    let mut versions = HashSet::new();
    let mut previous: Option<FillToken> = None;
    for round in 1..=20 {
        let (_, token) = c.acquire(&k, &v, LONG).await;
        let (m, t) = (token.marker(), token.versions()[0]);
        ensure!(
            c,
            markers.insert(m),
            clause::FRESH,
            "round {round} of (acquire; invalidate; remove_versions): the marker {m} was \
             re-created with a value it had before"
        );
        ensure!(
            c,
            versions.insert(t),
            clause::FRESH,
            "round {round} of (acquire; invalidate; remove_versions): the counter token {t} \
             was re-created with a value it had before"
        );
        // The old token does not validate a fill against the new ones.
        if let Some(old) = previous.take() {
            let stored = c.fill(&k, b"stale", LONG, &old, &v).await;
            ensure!(
                c,
                !stored,
                clause::FRESH,
                "a fill with the token of round {} was accepted in round {round}",
                round - 1
            );
        }
        previous = Some(token);
        c.invalidate(std::slice::from_ref(&k)).await;
        c.remove_versions(&v).await;
    }
}

pub(super) async fn fill_after_remove_versions_is_refused<B: Backend>(c: &Ctx<B>) {
    let k = c.key("k");
    let (a, b) = (c.version("a"), c.version("b"));
    let both = [a.clone(), b.clone()];
    let (_, token) = c.acquire(&k, &both, LONG).await;
    c.remove_versions(std::slice::from_ref(&b)).await;
    let (_, read) = c.read(&k, &both).await;
    ensure!(
        c,
        read == [token.versions()[0], 0],
        clause::REMOVE,
        "counters [a, b] held {:?}; after remove_versions([b]) read read {read:?}",
        token.versions()
    );
    let stored = c.fill(&k, b"stale", LONG, &token, &both).await;
    let got = c.get(&k).await;
    ensure!(
        c,
        !stored && got.is_none(),
        clause::REMOVE,
        "acquire([a, b]); remove_versions([b]); fill with the first token: the fill returned \
         {stored} and get then returned {got:?}"
    );
    // The next load creates a fresh counter, and fills.
    let (_, fresh) = c.acquire(&k, &both, LONG).await;
    ensure!(
        c,
        fresh.versions()[0] == token.versions()[0]
            && fresh.versions()[1] != 0
            && fresh.versions()[1] != token.versions()[1],
        clause::REMOVE,
        "before remove_versions([b]) the counters [a, b] held {:?}, after it acquire \
         returned {:?} (expected a kept, b fresh)",
        token.versions(),
        fresh.versions()
    );
    ensure!(
        c,
        c.fill(&k, VALUE, LONG, &fresh, &both).await,
        clause::FILL,
        "a fill with the token of the load after remove_versions was refused"
    );
}

pub(super) async fn absent_tokens_never_validate<B: Backend>(c: &Ctx<B>) {
    let v = [c.version("v")];
    let absent_v = [c.version("never-created")];

    // Nothing exists: an all-absent token must not match "nothing".
    let k = c.key("nothing");
    for (token, names) in [
        (FillToken::new(0, vec![]), &[][..]),
        (FillToken::new(0, vec![0]), &absent_v[..]),
    ] {
        let stored = c.fill(&k, b"stale", LONG, &token, names).await;
        ensure!(
            c,
            !stored,
            clause::ABSENT,
            "a fill of a key never loaded, with the token {token:?}, was accepted"
        );
    }

    // The marker and counter exist: 0 in place of either never matches.
    let k = c.key("loaded");
    let (_, token) = c.acquire(&k, &v, LONG).await;
    for forged in [
        FillToken::new(0, token.versions().to_vec()),
        FillToken::new(token.marker(), vec![0]),
    ] {
        let stored = c.fill(&k, b"stale", LONG, &forged, &v).await;
        ensure!(
            c,
            !stored,
            clause::ABSENT,
            "the key's token is {token:?}; a fill with {forged:?} was accepted"
        );
    }
    // An absent counter read as 0 must not match 0.
    let stored = c
        .fill(
            &k,
            b"stale",
            LONG,
            &FillToken::new(token.marker(), vec![0]),
            &absent_v,
        )
        .await;
    let got = c.get(&k).await;
    ensure!(
        c,
        !stored && got.is_none(),
        clause::ABSENT,
        "a fill listing a counter that does not exist, with the token 0 for it, returned \
         {stored} (get then returned {got:?})"
    );
}

pub(super) async fn invalidate_and_remove_of_missing_are_ok<B: Backend>(c: &Ctx<B>) {
    // `op` fails the check on an error.
    c.invalidate(&[c.key("missing-1"), c.key("missing-2")])
        .await;
    c.invalidate(&[]).await;
    c.remove_versions(&[c.version("missing")]).await;
    c.remove_versions(&[]).await;

    // Every listed key goes, present or not.
    let keys = [c.key("a"), c.key("b"), c.key("missing-3")];
    for k in &keys[..2] {
        c.set(k, VALUE, LONG, &[]).await;
    }
    c.invalidate(&keys).await;
    for k in &keys {
        let got = c.get(k).await;
        ensure!(
            c,
            got.is_none(),
            clause::INVALIDATE,
            "invalidate of [a, b, missing] left {k} = {got:?}"
        );
    }
}
