//! A load's lease request on Redis: what a load needs before it runs (the
//! version tokens, the key's marker and lease) and the entry re-read, as
//! plain commands (Redis 7.0 or later: `SET NX GET`, `PEXPIRE GT/NX`); the
//! ACQUIRE script over a foreign value, and on a Redis Cluster.

use std::time::Duration;

use super::conn::RedisConnection;
use super::scripts::{ACQUIRE, data, lease, marker, token_key, waiters};
use super::{failed, malformed, parse_token, px, token};
use crate::backend::{Acquired, FillToken, Lease, LeaseAsk, Stored, fresh_token};
use crate::error::BackendError;

/// Takes what loads of `keys` need before they run: the version tokens
/// (read, or created fresh when absent), each key's marker (likewise) and,
/// with `lease_ask`, each key's lease; and re-reads each entry.
///
/// Plain commands in one pipeline, not a script: a script costs Redis
/// several times what the four or five commands it runs cost, and nothing
/// here needs one atomic step. The order within the pipeline is what makes
/// it safe: tokens and marker are read (or created) before the entry is
/// re-read and before the load runs, so an invalidation that lands anywhere
/// after them deletes one of them and refuses the fill (it compares them,
/// atomically with its write). A token that lapses between its read and
/// the fill refuses the fill too (a reload, never an old value).
///
/// Two cases go further. A lease found taken: a second pipeline raises the
/// key's waiters flag (so the holder announces its fill), gives a lease
/// without expiry one, reads how long it has left and re-reads the entry
/// after the flag (a fill that slipped in before the flag is seen by that
/// read; one after it is announced). Anything foreign (a token that is not
/// one, a value of another type): the ACQUIRE script, which replaces it
/// (see `lua/acquire.lua`; it counts a lease already holding this token as
/// taken).
pub(super) async fn acquire(
    conn: &RedisConnection,
    keys: &[String],
    versions: &[String],
    marker_ttl: Duration,
    lease_ask: Option<LeaseAsk<'_>>,
) -> Result<Vec<Acquired>, BackendError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let lease_token = lease_ask.map_or("", |l| l.token);
    let leased = !lease_token.is_empty();
    let marker_ms = px(marker_ttl);
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut fresh = Vec::with_capacity(versions.len() + keys.len());
    for name in versions {
        fresh.push(take_token(&mut pipe, &token_key(name), marker_ms));
    }
    for key in keys {
        if let Some(ask) = lease_ask.filter(|_| leased) {
            // `GET`: a lease this load's token already holds (a retry after
            // a lost reply) is its own, not another's; a lease of another
            // type is an error, and the script replaces it.
            pipe.cmd("SET")
                .arg(lease(key))
                .arg(ask.token)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(px(ask.ttl));
        }
        fresh.push(take_token(&mut pipe, &marker(key), marker_ms));
        pipe.cmd("GET").arg(data(key));
    }
    let reply: Vec<redis::Value> = pipe.query_async(&mut conn.clone()).await.map_err(failed)?;
    let per_key = if leased { 4 } else { 3 };
    if reply.len() != 2 * versions.len() + per_key * keys.len() {
        return Err(malformed("short acquire reply"));
    }
    let Some((mut out, busy)) = parse(reply, fresh, keys, versions.len(), lease_token) else {
        return acquire_scripted(conn, keys, versions, marker_ttl, lease_ask).await;
    };
    if let (Some(ask), false) = (lease_ask, busy.is_empty()) {
        wait_behind(conn, &mut out, &busy, ask.ttl).await?;
    }
    Ok(out)
}

/// Keys whose lease another load holds: index in the answer, and key.
type Busy<'k> = Vec<(usize, &'k String)>;

/// The first pipeline's answer: per key what it found, and the keys whose
/// lease another load holds (index and key); `None` if anything was
/// foreign (the script replaces it).
fn parse<'k>(
    reply: Vec<redis::Value>,
    fresh: Vec<u64>,
    keys: &'k [String],
    versions: usize,
    lease_token: &str,
) -> Option<(Vec<Acquired>, Busy<'k>)> {
    let leased = !lease_token.is_empty();
    let mut it = reply.into_iter();
    let mut fresh = fresh.into_iter();
    let mut tokens = Vec::with_capacity(versions);
    for _ in 0..versions {
        tokens.push(taken_token(&mut it, fresh.next())?);
    }
    let mut out = Vec::with_capacity(keys.len());
    let mut busy = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let lease_reply = if leased { it.next() } else { None };
        let marker = taken_token(&mut it, fresh.next())?;
        let entry = match it.next() {
            Some(redis::Value::BulkString(b)) => Some(Stored::new(b)),
            // Absent, or a value of another type: a miss (the fill
            // replaces it).
            _ => None,
        };
        let lease = match lease_reply {
            None => Lease::None,
            // Set (nil: nothing was there), or already ours.
            Some(redis::Value::Nil) => Lease::Held(lease_token.to_owned()),
            Some(redis::Value::BulkString(b)) if b == lease_token.as_bytes() => {
                Lease::Held(lease_token.to_owned())
            }
            Some(redis::Value::BulkString(_)) => {
                busy.push((i, key));
                Lease::Busy(Duration::ZERO)
            }
            Some(_) => return None,
        };
        out.push(Acquired::new(
            entry,
            FillToken::new(marker, tokens.clone()).with_lease(lease),
        ));
    }
    Some((out, busy))
}

/// A validity token (marker or version counter) read, or created with the
/// fresh token returned when absent, and kept at least `ms`: `SET NX GET`
/// then `PEXPIRE GT`.
fn take_token(pipe: &mut redis::Pipeline, key: &str, ms: u64) -> u64 {
    let fresh = fresh_token();
    pipe.cmd("SET")
        .arg(key)
        .arg(fresh)
        .arg("NX")
        .arg("GET")
        .arg("PX")
        .arg(ms)
        .cmd("PEXPIRE")
        .arg(key)
        .arg(ms)
        .arg("GT");
    fresh
}

/// The token `take_token` found or created, or `None` for anything foreign
/// (not decimal, a leading zero, too long, another type), which the
/// ACQUIRE script replaces.
fn taken_token(it: &mut impl Iterator<Item = redis::Value>, fresh: Option<u64>) -> Option<u64> {
    // `SET NX GET` answers the value it found, or nil when it set ours.
    let (found, _kept) = (it.next()?, it.next()?);
    match found {
        redis::Value::Nil => fresh,
        redis::Value::BulkString(b) if is_token(&b) => Some(parse_token(&b)),
        _ => None,
    }
}

/// What the scripts accept as a token (`^[1-9]%d*$`, at most 19 digits):
/// the fill compares the decimal text, so "07" would never match 7.
fn is_token(b: &[u8]) -> bool {
    (1..=19).contains(&b.len()) && b[0] != b'0' && b.iter().all(u8::is_ascii_digit)
}

/// The second step for keys whose lease another load holds (`busy`: index
/// in `out` and key): the waiters flag raised, a lease without expiry
/// given one, the time it has left read, and the entry re-read after the
/// flag, in one pipeline.
async fn wait_behind(
    conn: &RedisConnection,
    out: &mut [Acquired],
    busy: &[(usize, &String)],
    lease_ttl: Duration,
) -> Result<(), BackendError> {
    let ms = px(lease_ttl);
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (_, key) in busy {
        pipe.cmd("SET")
            .arg(waiters(key))
            .arg("1")
            .arg("PX")
            .arg(ms)
            .cmd("PEXPIRE")
            .arg(lease(key))
            .arg(ms)
            .arg("NX")
            .cmd("PTTL")
            .arg(lease(key))
            .cmd("GET")
            .arg(data(key));
    }
    let reply: Vec<redis::Value> = pipe.query_async(&mut conn.clone()).await.map_err(failed)?;
    if reply.len() != 4 * busy.len() {
        return Err(malformed("short acquire reply"));
    }
    let mut it = reply.into_iter();
    for &(i, _) in busy {
        let (flag, expiry_given, pttl, entry) = (it.next(), it.next(), it.next(), it.next());
        // Without the flag the holder would not announce its fill, and this
        // load would sleep out the lease: fail instead (as the script does),
        // and the caller loads without storing.
        if !matches!(flag, Some(redis::Value::Okay)) {
            return Err(BackendError::failed(std::io::Error::other(format!(
                "could not raise the waiters flag: {flag:?}"
            ))));
        }
        // A lease without expiry was given one: a lease length left. One
        // gone meanwhile (its holder finished): nothing left to wait.
        let left = match (expiry_given, pttl) {
            (Some(redis::Value::Int(1)), _) => lease_ttl,
            (_, Some(redis::Value::Int(n))) if n > 0 => {
                Duration::from_millis(u64::try_from(n).unwrap_or(0))
            }
            _ => Duration::ZERO,
        };
        if let Some(acquired) = out.get_mut(i) {
            if let Some(redis::Value::BulkString(b)) = entry {
                acquired.entry = Some(Stored::new(b));
            }
            acquired.token = acquired.token.clone().with_lease(Lease::Busy(left));
        }
    }
    Ok(())
}

/// ACQUIRE for `keys` (see `lua/acquire.lua`): one atomic script, for
/// keys where `acquire` found something foreign, and on a Redis Cluster
/// (one command per slot: redis-rs retries a whole pipeline when one of its
/// commands is redirected while a slot moves, resending commands that
/// already ran on the other node).
pub(super) async fn acquire_scripted(
    conn: &RedisConnection,
    keys: &[String],
    versions: &[String],
    marker_ttl: Duration,
    lease_ask: Option<LeaseAsk<'_>>,
) -> Result<Vec<Acquired>, BackendError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (lease_token, lease_ttl) = lease_ask.map_or(("", Duration::ZERO), |l| (l.token, l.ttl));
    let mut invocation = ACQUIRE.prepare_invoke();
    for key in keys {
        invocation
            .key(data(key))
            .key(marker(key))
            .key(lease(key))
            .key(waiters(key));
    }
    for name in versions {
        invocation.key(token_key(name));
    }
    invocation
        .arg(lease_token)
        .arg(px(lease_ttl))
        .arg(px(marker_ttl))
        .arg(keys.len());
    for _ in 0..keys.len() + versions.len() {
        invocation.arg(fresh_token());
    }
    let reply: Vec<redis::Value> = invocation
        .invoke_async(&mut conn.clone())
        .await
        .map_err(failed)?;
    if reply.len() != versions.len() + 4 * keys.len() {
        return Err(malformed("short lease reply"));
    }
    let mut it = reply.into_iter();
    let tokens: Vec<u64> = it
        .by_ref()
        .take(versions.len())
        .map(|v| token(&v))
        .collect();
    let mut out = Vec::with_capacity(keys.len());
    while let (Some(taken), Some(pttl), Some(data), Some(marker)) =
        (it.next(), it.next(), it.next(), it.next())
    {
        out.push(parse_key(
            taken,
            pttl,
            data,
            &marker,
            tokens.clone(),
            lease_token,
        ));
    }
    Ok(out)
}

/// One key's part of an ACQUIRE reply, with the counters' tokens.
pub(super) fn parse_key(
    taken: redis::Value,
    pttl: redis::Value,
    data: redis::Value,
    marker: &redis::Value,
    versions: Vec<u64>,
    lease_token: &str,
) -> Acquired {
    let stored = match data {
        redis::Value::BulkString(b) => Some(Stored::new(b)),
        _ => None,
    };
    let lease = if lease_token.is_empty() {
        Lease::None
    } else if token(&taken) == 1 {
        Lease::Held(lease_token.to_owned())
    } else {
        // A lease without expiry reads as -1: treat it as one lease length
        // away, the caller bounds its wait anyway.
        let ms = match pttl {
            redis::Value::Int(n) if n > 0 => u64::try_from(n).unwrap_or(0),
            _ => 0,
        };
        Lease::Busy(Duration::from_millis(ms))
    };
    Acquired::new(
        stored,
        FillToken::new(token(marker), versions).with_lease(lease),
    )
}
