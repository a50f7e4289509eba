//! The connection a [`RedisBackend`](super::RedisBackend) runs on: one
//! Redis (redis-rs's `ConnectionManager`) or, with the `cluster` feature, a
//! Redis Cluster (redis-rs's async cluster connection, which routes each
//! command to the node owning its keys' slot and follows `MOVED`/`ASK`).

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A Redis connection: one server, or a cluster with the `cluster` feature.
/// Both implement [`redis::aio::ConnectionLike`], so commands of your own run
/// on either. On a cluster, keep each command's keys to one slot: redis-rs
/// splits a multi-slot `MGET`, `DEL`, `EXISTS`, ... itself, but leaves out
/// the slots missing from its map of the cluster (a `DEL` then reports
/// success with keys left), so aside sends one command per slot.
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisConnection {
    /// One Redis server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConnection::Single(_) => f.write_str("RedisConnection::Single"),
            #[cfg(feature = "cluster")]
            RedisConnection::Cluster(_) => f.write_str("RedisConnection::Cluster"),
        }
    }
}

impl RedisConnection {
    /// Whether this connection is to a Redis Cluster (then scripts must keep
    /// to one slot each).
    pub fn is_cluster(&self) -> bool {
        match self {
            RedisConnection::Single(_) => false,
            #[cfg(feature = "cluster")]
            RedisConnection::Cluster(_) => true,
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "cluster")]
            RedisConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}
