//! The acknowledgement against a real Redis: it removes exactly the chunk it was given, keeps
//! a record claimed after the chunk was read, and does nothing to a list that no longer ends
//! with the chunk (taken over by another worker). The rollup versions move with a successful
//! acknowledgement only.

use sift_batcher::queue::Queue;

mod common;

#[tokio::test]
async fn ack_removes_exactly_the_chunk() -> Result<(), Box<dyn std::error::Error>> {
    let shard = common::shard("ack")?;
    let keys = shard.keys.clone();
    let queue = Queue::new(shard.clone(), "w1".into());
    let mut conn = shard.conn().await?;
    let list = keys.processing("w1");
    // Records are claimed to the head (LEFT): the chunk read was r1 (oldest), r2, r3.
    for record in ["r1", "r2", "r3"] {
        redis::cmd("LPUSH")
            .arg(&list)
            .arg(record)
            .query_async::<()>(&mut conn)
            .await?;
    }
    let chunk = queue.in_hand().await?;
    assert_eq!(chunk, vec![b"r1".to_vec(), b"r2".to_vec(), b"r3".to_vec()]);
    // A late claim lands after the chunk was read.
    redis::cmd("LPUSH")
        .arg(&list)
        .arg("r4")
        .query_async::<()>(&mut conn)
        .await?;

    // A chunk that is not what the list ends with: nothing happens.
    let touched = vec![("acme".to_string(), 3600), ("acme".to_string(), 7200)];
    let version = |hour: i64| {
        redis::cmd("GET")
            .arg(keys.rollup_version("acme", hour))
            .clone()
    };
    assert!(
        !queue
            .ack(3, b"r2", b"r4", &[b"dead".to_vec()], &touched)
            .await?
    );
    assert_eq!(
        version(3600).query_async::<Option<u64>>(&mut conn).await?,
        None
    );
    assert_eq!(
        redis::cmd("LLEN")
            .arg(&list)
            .query_async::<u64>(&mut conn)
            .await?,
        4
    );
    assert_eq!(
        redis::cmd("LLEN")
            .arg(keys.dlq())
            .query_async::<u64>(&mut conn)
            .await?,
        0
    );

    // The chunk itself: removed with its dead letter, the late record kept, the versions moved.
    assert!(
        queue
            .ack(3, b"r1", b"r3", &[b"dead".to_vec()], &touched)
            .await?
    );
    for hour in [3600, 7200] {
        assert_eq!(
            version(hour).query_async::<Option<u64>>(&mut conn).await?,
            Some(1)
        );
    }
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys.rollup_version("acme", 3600))
        .query_async(&mut conn)
        .await?;
    assert!(ttl > 0 && ttl <= sift_core::keys::ROLLUP_VERSION_TTL_MS as i64);
    assert_eq!(queue.in_hand().await?, vec![b"r4".to_vec()]);
    assert_eq!(
        redis::cmd("LLEN")
            .arg(keys.dlq())
            .query_async::<u64>(&mut conn)
            .await?,
        1
    );

    // Acknowledged again (a retry whose first answer was lost): nothing more happens.
    assert!(
        !queue
            .ack(3, b"r1", b"r3", &[b"dead".to_vec()], &touched)
            .await?
    );
    assert_eq!(
        version(3600).query_async::<Option<u64>>(&mut conn).await?,
        Some(1)
    );
    assert_eq!(
        redis::cmd("LLEN")
            .arg(keys.dlq())
            .query_async::<u64>(&mut conn)
            .await?,
        1
    );

    assert!(queue.ack(1, b"r4", b"r4", &[], &[]).await?);
    assert_eq!(
        redis::cmd("EXISTS")
            .arg(&list)
            .query_async::<u64>(&mut conn)
            .await?,
        0
    );
    redis::cmd("DEL")
        .arg(keys.dlq())
        .arg(keys.workers())
        .arg(keys.rollup_version("acme", 3600))
        .arg(keys.rollup_version("acme", 7200))
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}
