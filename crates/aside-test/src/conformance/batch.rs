//! The batch operations (`get_many`, `get_for_fill_many`, `fill_many`,
//! `set_many`): each answers as the single operations would, key by key.

use std::time::Duration;

use aside::{Backend, BatchEntry, Stored};

use super::storage::VALUE;
use super::{Ctx, bytes, clause, ensure};

const LONG: Duration = Duration::from_secs(60);

fn entry(key: &str, value: &[u8]) -> BatchEntry {
    BatchEntry {
        key: key.to_owned(),
        value: Stored::new(value.to_vec()),
        ttl: LONG,
    }
}

pub(super) async fn get_many_reads_like_get<B: Backend>(c: &Ctx<B>) {
    let (a, b, missing) = (c.key("a"), c.key("b"), c.key("missing"));
    let names = [c.version("x"), c.version("y")];
    let (_, token) = c.get_for_fill(&a, &names[..1], LONG).await;
    c.fill(&a, VALUE, LONG, &token, &names[..1]).await;
    c.set(&b, b"b", LONG, &[]).await;
    let keys = [a.clone(), missing.clone(), b.clone(), a.clone()];
    let (entries, tokens) = c.op("get_many", c.backend.get_many(&keys, &names)).await;
    let entries: Vec<_> = entries.into_iter().map(bytes).collect();
    let mut expected = Vec::new();
    for k in &keys {
        expected.push(c.get(k).await);
    }
    ensure!(
        c,
        entries == expected,
        clause::GET_MANY,
        "get_many returned {entries:?}, but get, key by key, {expected:?}"
    );
    let (_, single) = c.get_with_versions(&a, &names).await;
    ensure!(
        c,
        tokens == single && tokens[0] == token.versions()[0] && tokens[1] == 0,
        clause::GET_MANY,
        "get_many returned the counter tokens {tokens:?}; get_with_versions {single:?}, \
         the load recorded {:?} (and the second counter is absent)",
        token.versions()
    );
    let (_, none) = c.op("get_many", c.backend.get_many(&[], &[])).await;
    ensure!(
        c,
        none.is_empty(),
        clause::GET_MANY,
        "get_many of nothing returned {none:?}"
    );
}

pub(super) async fn batch_writes_keep_the_fill_contract<B: Backend>(c: &Ctx<B>) {
    let keys = [c.key("p"), c.key("q"), c.key("r")];
    let names = [c.version("v")];
    let read = c
        .op(
            "get_for_fill_many",
            c.backend.get_for_fill_many(&keys, &names, LONG),
        )
        .await;
    ensure!(
        c,
        read.len() == 3,
        clause::BATCH,
        "get_for_fill_many of 3 keys returned {} answers",
        read.len()
    );
    for (k, (_, token)) in keys.iter().zip(&read) {
        let (_, again) = c.get_for_fill(k, &names, LONG).await;
        ensure!(
            c,
            token.generation() != 0 && again == *token,
            clause::BATCH,
            "get_for_fill_many returned {token:?} for {k}, get_for_fill then {again:?}"
        );
    }
    c.invalidate(&keys[1..2]).await;
    let fills: Vec<_> = keys
        .iter()
        .zip(read)
        .map(|(k, (_, token))| (entry(k, VALUE), token))
        .collect();
    let stored = c.op("fill_many", c.backend.fill_many(&fills, &names)).await;
    ensure!(
        c,
        stored == [true, false, true],
        clause::BATCH,
        "fill_many after an invalidation of the second key returned {stored:?}, \
         expected [true, false, true]"
    );
    let got = [c.get(&keys[0]).await, c.get(&keys[1]).await];
    ensure!(
        c,
        got == [Some(VALUE.to_vec()), None],
        clause::BATCH,
        "after fill_many, get returned {got:?}"
    );
    // set_many writes unconditionally and removes the markers.
    let (_, before) = c.get_for_fill(&keys[1], &[], LONG).await;
    c.op(
        "set_many",
        c.backend
            .set_many(&[entry(&keys[1], b"s1"), entry(&keys[2], b"s2")], &[]),
    )
    .await;
    let got = [c.get(&keys[1]).await, c.get(&keys[2]).await];
    ensure!(
        c,
        got == [Some(b"s1".to_vec()), Some(b"s2".to_vec())],
        clause::BATCH,
        "after set_many, get returned {got:?}"
    );
    ensure!(
        c,
        !c.fill(&keys[1], VALUE, LONG, &before, &[]).await,
        clause::FILL_AFTER_SET,
        "a fill with a token read before set_many was accepted"
    );
}
