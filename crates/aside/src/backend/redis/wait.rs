//! Invalidations (deletions of entries, markers and tokens), optionally
//! acknowledged by replicas before they count as applied
//! ([`RedisBackendBuilder::wait_for_replicas`](super::RedisBackendBuilder::wait_for_replicas)).
//!
//! Redis replicates asynchronously: a `DEL` it acknowledged may not have
//! reached any replica when the primary dies, and a replica promoted then
//! still holds what was deleted (an entry, or a token that validates old
//! entries). `WAIT n timeout`, sent on the same connection right after the
//! `DEL`, returns how many replicas have every write of that connection so
//! far; with fewer than `n` the invalidation is reported failed, so the
//! cache queues and retries it (deleting again is harmless) and bypasses
//! the keys meanwhile. On a cluster, each slot's `DEL` and its `WAIT` go to
//! that slot's primary together, as one pipeline on its connection.

use std::time::Duration;

use redis::Value;

use super::RedisBackend;
use crate::error::BackendError;

/// `WAIT`'s arguments: at least this many replicas, within this long.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplicaWait {
    pub(super) replicas: usize,
    pub(super) timeout: Duration,
}

impl RedisBackend {
    /// Deletes `keys`, and waits for replicas to have it if so configured.
    pub(super) async fn delete(&self, keys: Vec<String>) -> Result<(), BackendError> {
        self.steps.delete(&self.conn, keys, self.wait).await
    }
}

/// `DEL` of `keys` then `WAIT` for the replicas, as one pipeline.
pub(super) fn del_and_wait(keys: &[String], wait: ReplicaWait) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("DEL")
        .arg(keys)
        .cmd("WAIT")
        .arg(wait.replicas)
        .arg(
            u64::try_from(wait.timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
    pipe
}

/// Checks `WAIT`'s answer (the second reply): enough replicas, or an error.
pub(super) fn acknowledged(replies: &[Value], wait: ReplicaWait) -> Result<(), BackendError> {
    let acked = match replies.get(1) {
        Some(Value::Int(n)) => usize::try_from(*n).unwrap_or(0),
        _ => return Err(BackendError::failed(std::io::Error::other("no WAIT reply"))),
    };
    if acked < wait.replicas {
        return Err(BackendError::failed(std::io::Error::other(format!(
            "invalidation acknowledged by {acked} replica(s) of {} within {:?}",
            wait.replicas, wait.timeout
        ))));
    }
    Ok(())
}
