//! A connection to one shard, whatever stands behind it: a pooled connection to one server,
//! a multiplexed one, or a Redis Cluster client (which routes each command by its keys' slot
//! and follows MOVED and ASK). Every caller writes its commands once, for all three.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

pub enum Conn {
    Pooled(deadpool_redis::Connection),
    Mux(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Another handle on the same connection, when it is multiplexed (a pooled connection is
    /// one caller's at a time).
    pub fn share(&self) -> Option<Conn> {
        match self {
            Self::Pooled(_) => None,
            Self::Mux(c) => Some(Self::Mux(c.clone())),
            Self::Cluster(c) => Some(Self::Cluster(c.clone())),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Pooled(c) => c.req_packed_command(cmd),
            Self::Mux(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Pooled(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Mux(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Pooled(c) => c.get_db(),
            Self::Mux(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
