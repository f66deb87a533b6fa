//! The Redis Cluster harness itself (`sift_e2e::redis_cluster`), before any sift test leans on
//! it: a private cluster of 3 masters and 3 replicas starts, serves sift's shard hash tags
//! from the masters the default slot layout gives them, fails over when the master of
//! `{ai:0}` is killed with SIGKILL without losing a write its replica acknowledged (WAIT 1),
//! and takes the old master back as a replica. And the shared cluster of `make test` is ok.

use std::time::{Duration, Instant};

use anyhow::Result;
use sift_e2e::redis_cluster::{query_following_moved, role};
use sift_e2e::{require_redis_cluster, unique, PrivateRedisCluster};

/// Each shard's hash tag, its slot, and which of the first three masters serves it in the
/// layout of `redis-cli --cluster create` (0-5460, 5461-10922, 10923-16383). The three
/// default shards land on two masters only: `{ai:1}` and `{ai:2}` share the second, and the
/// first serves none of them. `{ai:3}` is the first shard tag served by the first master.
const SHARD_TAGS: [(&str, u16, usize); 4] = [
    ("{ai:0}", 13969, 2),
    ("{ai:1}", 9904, 1),
    ("{ai:2}", 5843, 1),
    ("{ai:3}", 1778, 0),
];

#[tokio::test]
async fn a_private_cluster_fails_over_without_losing_an_acknowledged_write() -> Result<()> {
    let begun = Instant::now();
    let mut cluster = PrivateRedisCluster::start().await?;
    eprintln!("cluster ok in {:?} on {}", begun.elapsed(), cluster.urls());
    assert_eq!(cluster.urls().split(',').count(), 6);

    let masters = cluster.first_masters().to_vec();
    for (tag, slot, master) in SHARD_TAGS {
        assert_eq!(
            cluster.keyslot(&format!("{tag}:queue")).await?,
            slot,
            "{tag}"
        );
        assert_eq!(cluster.master_of(tag).await?, masters[master], "{tag}");
    }

    // Written through the first node, whatever serves the key: MOVED is followed.
    for (tag, _, _) in SHARD_TAGS {
        let set = redis::cmd("SET").arg(format!("{tag}:k")).arg(tag).clone();
        let () = cluster.query(&set).await?;
    }
    for (tag, _, _) in SHARD_TAGS {
        let got: String = cluster
            .query(redis::cmd("GET").arg(format!("{tag}:k")))
            .await?;
        assert_eq!(got, tag);
    }

    // A write its replica acknowledged (WAIT 1) on the master of {ai:0}.
    let master = cluster.master_of("{ai:0}").await?;
    let mut conn = cluster.connection(master).await?;
    let () = redis::cmd("SET")
        .arg("{ai:0}:acked")
        .arg("before the failover")
        .query_async(&mut conn)
        .await?;
    let replicas: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1000)
        .query_async(&mut conn)
        .await?;
    assert_eq!(replicas, 1, "the replica acknowledged the write");
    drop(conn);

    let killed = cluster.kill9_master_of("{ai:0}").await?;
    assert_eq!(killed, master);
    let failing = Instant::now();
    let promoted = cluster
        .wait_failover("{ai:0}", killed, Duration::from_secs(15))
        .await?;
    eprintln!(
        "failover of {killed} to {promoted} in {:?} (node timeout 2000 ms)",
        failing.elapsed()
    );
    assert_ne!(promoted, killed);
    assert_eq!(role(promoted).await?, "master");

    let acked: Option<String> = cluster.query(redis::cmd("GET").arg("{ai:0}:acked")).await?;
    assert_eq!(acked.as_deref(), Some("before the failover"));
    // The other masters never stopped serving (cluster-require-full-coverage no).
    let other: String = cluster.query(redis::cmd("GET").arg("{ai:3}:k")).await?;
    assert_eq!(other, "{ai:3}");

    cluster.restart(killed).await?;
    assert_eq!(
        role(killed).await?,
        "slave",
        "the old master rejoined as a replica"
    );
    assert_eq!(cluster.master_of("{ai:0}").await?, promoted);
    let acked: Option<String> = cluster.query(redis::cmd("GET").arg("{ai:0}:acked")).await?;
    assert_eq!(acked.as_deref(), Some("before the failover"));

    eprintln!("whole test in {:?}", begun.elapsed());
    Ok(())
}

#[tokio::test]
async fn the_shared_cluster_is_ok_and_serves_every_shard_tag() -> Result<()> {
    let urls = require_redis_cluster().await?;
    let seed = urls
        .split(',')
        .next()
        .and_then(|u| u.trim().strip_prefix("redis://"))
        .map(|u| u.trim_end_matches('/'))
        .expect("a redis:// URL first");
    assert_eq!(urls.split(',').count(), 6, "{urls}");
    let prefix = unique("cluster");
    for (tag, _, _) in SHARD_TAGS {
        let key = format!("{tag}:{prefix}");
        let () =
            query_following_moved(seed, redis::cmd("SET").arg(&key).arg(tag).arg("EX").arg(60))
                .await?;
        let got: String = query_following_moved(seed, redis::cmd("GET").arg(&key)).await?;
        assert_eq!(got, tag);
        let () = query_following_moved(seed, redis::cmd("DEL").arg(&key)).await?;
    }
    Ok(())
}
