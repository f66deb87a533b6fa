//! sift on a sharded ClickHouse (docs/deploy.md, "ClickHouse cluster"): the nodes that hold
//! the `<name>_local` tables, and the statements that a Distributed table does not take
//! (lightweight `DELETE`, `ALTER … TTL`), sent to each node's `_local` table in turn.
//!
//! Everything else is unchanged on a cluster: the batcher, the flusher and the read API use
//! the single node's names, which are Distributed tables there. One tenant's rows live on one
//! shard (sharded by `cityHash64(tenant_id)`), so `FINAL`, the sessions and the rollups are
//! computed shard-locally and are exact.
//!
//! The topology is set once at start from the flags ([`configure`]) and read where those few
//! statements are built: a process-wide value, rather than a parameter threaded through the
//! flusher, erasure and rollup paths, which on one node never need it.

use std::sync::OnceLock;

use clickhouse::Client;

/// The nodes of a cluster, as `--clickhouse-cluster` and `--clickhouse-nodes` name them.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The cluster's name in the servers' `remote_servers`.
    pub cluster: String,
    /// Every node: the `_local` tables of each are created, altered and deleted from there.
    pub nodes: Vec<Node>,
}

/// One ClickHouse server of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub url: String,
    pub client: Client,
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("--clickhouse-cluster {0:?} is not a valid cluster name: use letters, digits and '_'")]
    Name(String),
    #[error("--clickhouse-cluster needs --clickhouse-nodes: the HTTP URL of every node, comma-separated")]
    NoNodes,
    #[error("--clickhouse-nodes is only read with --clickhouse-cluster")]
    NoCluster,
}

impl Topology {
    /// The topology that the flags give: `None` for one node (`cluster` empty). `connect`
    /// makes a node's client from its URL.
    pub fn from_flags(
        cluster: &str,
        nodes: &str,
        connect: impl Fn(&str) -> Client,
    ) -> Result<Option<Self>, TopologyError> {
        let urls: Vec<&str> = nodes
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        match (cluster.trim(), urls.is_empty()) {
            ("", true) => Ok(None),
            ("", false) => Err(TopologyError::NoCluster),
            (_, true) => Err(TopologyError::NoNodes),
            (name, false) if !crate::sql::is_identifier(name) => {
                Err(TopologyError::Name(name.to_owned()))
            }
            (name, false) => Ok(Some(Self {
                cluster: name.to_owned(),
                nodes: urls
                    .into_iter()
                    .map(|url| Node {
                        url: url.to_owned(),
                        client: connect(url),
                    })
                    .collect(),
            })),
        }
    }
}

static TOPOLOGY: OnceLock<Option<Topology>> = OnceLock::new();

/// Sets the topology for this process (once, at start; a later call changes nothing).
pub fn configure(topology: Option<Topology>) {
    let _ = TOPOLOGY.set(topology);
}

/// The cluster this process works on, if any.
pub fn topology() -> Option<&'static Topology> {
    TOPOLOGY.get().and_then(Option::as_ref)
}

/// The table that holds `table`'s rows on a node: `<table>_local` on a cluster, `table` itself
/// on one node.
pub fn local(table: &str) -> String {
    match topology() {
        Some(_) => format!("{table}_local"),
        None => table.to_owned(),
    }
}

/// The client of each node that holds `table`'s rows, with its URL: every node of the
/// cluster, or `client` alone on one node.
pub fn holders(client: &Client) -> Vec<(&str, Client)> {
    match topology() {
        Some(t) => t
            .nodes
            .iter()
            .map(|n| (n.url.as_str(), n.client.clone()))
            .collect(),
        None => vec![("", client.clone())],
    }
}

/// A lightweight `DELETE FROM db.table WHERE condition`, synchronous (the rows are masked
/// when it returns): on one node through `client`; on a cluster on every node's `_local`
/// table (ClickHouse does not delete through a Distributed table). A tenant's rows are on
/// one shard: the other nodes find nothing to delete.
pub async fn delete(
    client: &Client,
    db: &str,
    table: &str,
    condition: &str,
) -> Result<(), clickhouse::error::Error> {
    let sql = format!("DELETE FROM {db}.{} WHERE {condition}", local(table));
    for (url, node) in holders(client) {
        node.query(&sql)
            .with_setting("lightweight_deletes_sync", "2")
            .execute()
            .await
            .inspect_err(|error| tracing::warn!(node = url, %error, "DELETE failed"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Topology, TopologyError};

    fn parse(cluster: &str, nodes: &str) -> Result<Option<Topology>, TopologyError> {
        Topology::from_flags(cluster, nodes, |url| {
            clickhouse::Client::default().with_url(url)
        })
    }

    #[test]
    fn the_flags_name_a_cluster_and_all_its_nodes_or_neither() {
        assert!(matches!(parse("", ""), Ok(None)));
        let t = parse("sift_local", " http://a:1 , http://b:2,")
            .expect("valid")
            .expect("a cluster");
        assert_eq!(t.cluster, "sift_local");
        let urls: Vec<&str> = t.nodes.iter().map(|n| n.url.as_str()).collect();
        assert_eq!(urls, ["http://a:1", "http://b:2"]);
        assert!(matches!(
            parse("sift_local", ""),
            Err(TopologyError::NoNodes)
        ));
        assert!(matches!(
            parse("", "http://a:1"),
            Err(TopologyError::NoCluster)
        ));
        assert!(matches!(
            parse("x'; DROP", "http://a:1"),
            Err(TopologyError::Name(_))
        ));
    }
}
