//! Requests of many keys (`read`, `acquire`, `fill`, `set`): each answers
//! as it would for each key alone, key by key.

use std::time::Duration;

use aside::backend::{AcquireRequest, Backend, Entry, Stored};

use super::storage::VALUE;
use super::{Ctx, bytes, clause, ensure};

const LONG: Duration = Duration::from_secs(60);

fn entry(key: &str, value: &[u8]) -> Entry {
    Entry::new(key, Stored::new(value.to_vec()), LONG)
}

pub(super) async fn a_batch_read_answers_like_single_reads<B: Backend>(c: &Ctx<B>) {
    let (a, b, missing) = (c.key("a"), c.key("b"), c.key("missing"));
    let names = [c.version("x"), c.version("y")];
    let (_, token) = c.acquire(&a, &names[..1], LONG).await;
    c.fill(&a, VALUE, LONG, &token, &names[..1]).await;
    c.set(&b, b"b", LONG, &[]).await;
    let keys = [a.clone(), missing.clone(), b.clone(), a.clone()];
    let found = c.read_many(&keys, &names).await;
    let (entries, tokens) = (found.entries, found.versions);
    let entries: Vec<_> = entries.into_iter().map(bytes).collect();
    let mut expected = Vec::new();
    for k in &keys {
        expected.push(c.get(k).await);
    }
    ensure!(
        c,
        entries == expected,
        clause::READ_MANY,
        "a read of 4 keys returned {entries:?}, but reads key by key {expected:?}"
    );
    let (_, single) = c.read(&a, &names).await;
    ensure!(
        c,
        tokens == single && tokens[0] == token.versions()[0] && tokens[1] == 0,
        clause::READ_MANY,
        "a read of 4 keys returned the counter tokens {tokens:?}; a read of one {single:?}, \
         the load recorded {:?} (and the second counter is absent)",
        token.versions()
    );
    let none = c.read_many(&[], &[]).await;
    ensure!(
        c,
        none.entries.is_empty() && none.versions.is_empty(),
        clause::READ_MANY,
        "a read of nothing returned {none:?}"
    );
}

pub(super) async fn batch_writes_keep_the_fill_contract<B: Backend>(c: &Ctx<B>) {
    let keys = [c.key("p"), c.key("q"), c.key("r")];
    let names = [c.version("v")];
    let read = c
        .acquire_many(AcquireRequest::new(&keys, &names, LONG))
        .await;
    for (k, got) in keys.iter().zip(&read) {
        let token = &got.token;
        let (_, again) = c.acquire(k, &names, LONG).await;
        ensure!(
            c,
            token.marker() != 0 && again == *token,
            clause::BATCH,
            "an acquisition of 3 keys returned {token:?} for {k}, one of that key then {again:?}"
        );
    }
    c.invalidate(&keys[1..2]).await;
    let fills: Vec<_> = keys
        .iter()
        .zip(read)
        .map(|(k, got)| (entry(k, VALUE), got.token))
        .collect();
    let stored = c.fill_many(&fills, &names).await;
    ensure!(
        c,
        stored == [true, false, true],
        clause::BATCH,
        "a fill of 3 keys after an invalidation of the second returned {stored:?}, \
         expected [true, false, true]"
    );
    let got = [c.get(&keys[0]).await, c.get(&keys[1]).await];
    ensure!(
        c,
        got == [Some(VALUE.to_vec()), None],
        clause::BATCH,
        "after a fill of 3 keys, reads returned {got:?}"
    );
    // A set of many keys writes unconditionally and removes the markers.
    let (_, before) = c.acquire(&keys[1], &[], LONG).await;
    c.set_many(&[entry(&keys[1], b"s1"), entry(&keys[2], b"s2")], &[])
        .await;
    let got = [c.get(&keys[1]).await, c.get(&keys[2]).await];
    ensure!(
        c,
        got == [Some(b"s1".to_vec()), Some(b"s2".to_vec())],
        clause::BATCH,
        "after a set of 2 keys, reads returned {got:?}"
    );
    ensure!(
        c,
        !c.fill(&keys[1], VALUE, LONG, &before, &[]).await,
        clause::FILL_AFTER_SET,
        "a fill with a token read before a set of 2 keys was accepted"
    );
}
