//! The claim against a real Redis: it moves the oldest elements from the queue's tail into the
//! processing list, within a budget of records (a frame counts as the records it holds) and
//! of bytes, takes one element over the budget only when the chunk is empty (an element that
//! does not fit goes back to the queue's tail, the next claim takes it first), and leaves the
//! processing list as a reader expects it (oldest at the tail).

use sift_batcher::queue::Queue;

mod common;

#[tokio::test]
async fn claims_stay_within_records_and_bytes() -> Result<(), Box<dyn std::error::Error>> {
    let shard = common::shard("claim")?;
    let keys = shard.keys.clone();
    let queue = Queue::new(shard.clone(), "w1".into());
    let mut conn = shard.conn().await?;
    // Oldest first: 300 single records, then a frame of 50, then 10 more singles.
    let single = |i: usize| format!("\u{2}record-{i:04}").into_bytes();
    let frame_records: Vec<Vec<u8>> = (0..50).map(|i| format!("\u{2}f{i}").into_bytes()).collect();
    let frame = sift_core::frame(&frame_records.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let mut oldest_first: Vec<Vec<u8>> = (0..300).map(single).collect();
    oldest_first.push(frame.clone());
    oldest_first.extend((300..310).map(single));
    for element in &oldest_first {
        redis::cmd("LPUSH")
            .arg(keys.queue())
            .arg(element)
            .query_async::<()>(&mut conn)
            .await?;
    }

    // By records: 200 of the 300 singles.
    let first = queue.claim(200, 1 << 20, true).await?;
    assert_eq!((first.full, first.rows), (false, 200));
    assert_eq!(first.elements, oldest_first[..200].to_vec());
    // The frame does not fit in what is left of 120 records: 100 singles, and full.
    let second = queue.claim(120, 1 << 20, false).await?;
    assert_eq!((second.full, second.rows), (true, 100));
    assert_eq!(second.elements, oldest_first[200..300].to_vec());
    // A chunk of its own takes the frame whole, although it holds more than 10 records.
    let third = queue.claim(10, 1 << 20, true).await?;
    assert_eq!(
        (third.full, third.rows, third.elements.len()),
        (true, 50, 1)
    );
    assert_eq!(third.elements[0], frame);
    // By bytes: each single is 12 bytes; 40 bytes take 3.
    let fourth = queue.claim(100, 40, false).await?;
    assert_eq!((fourth.full, fourth.rows), (true, 3));
    let rest = queue.claim(100, 1 << 20, false).await?;
    assert_eq!((rest.full, rest.rows), (false, 7));
    assert!(queue.claim(100, 1 << 20, true).await?.elements.is_empty());

    // The processing list holds everything claimed, oldest at the tail.
    let in_hand = queue.in_hand().await?;
    assert_eq!(in_hand, oldest_first);
    redis::cmd("DEL")
        .arg(keys.queue())
        .arg(keys.processing("w1"))
        .arg(keys.workers())
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}
