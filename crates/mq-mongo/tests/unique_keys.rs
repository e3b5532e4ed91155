//! Unique keys under contention, and locks left behind by publishes that never stored their
//! message (needs `MONGODB_URI`).

#[path = "common/mongo.rs"]
mod common;

use mq_core::{Error, MessageId, MessageQueue, NewMessage, Status};
use mq_mongo::mongodb::bson::{Document, doc};
use serde_json::json;

/// Rounds of [`concurrent_publishers_of_one_key_store_exactly_one`]: enough for the race between
/// taking a key's lock and storing its holder to show.
const ROUNDS: usize = 40;

/// Eight hosts publish a message with the same key at once, round after round: each round
/// exactly one is stored and every other is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_of_one_key_store_exactly_one() {
    const TEST: &str = "concurrent_publishers_of_one_key_store_exactly_one";
    let Some((url, first, name)) = common::registered_queue(TEST).await else {
        return;
    };
    let mut hosts = vec![first];
    for _ in 1..8 {
        let host = common::another_queue(&url, TEST).await;
        host.register(&name).await.expect("register");
        hosts.push(host);
    }
    let (mut stored, mut wrong_holder, mut other_errors) = (0, 0, 0);
    for round in 0..ROUNDS {
        let key = format!("key-{round}");
        let publishes = hosts.iter().enumerate().map(|(h, q)| {
            let (name, key) = (name.clone(), key.clone());
            async move {
                q.publish(
                    &name,
                    vec![NewMessage::new("t", json!({ "host": h })).unique_key(key)],
                )
                .await
                .expect("publish")
            }
        });
        let reports = futures::future::join_all(publishes).await;
        let winners: Vec<MessageId> = reports
            .iter()
            .flat_map(|r| r.published.iter().cloned())
            .collect();
        stored += winners.len();
        for r in &reports {
            for f in &r.failed {
                match &f.error {
                    Error::DuplicateKey { holder, .. } if winners.contains(holder) => {}
                    Error::DuplicateKey { .. } => wrong_holder += 1,
                    _ => other_errors += 1,
                }
            }
        }
    }
    println!(
        "stored {stored} of {ROUNDS} keys, wrong holders {wrong_holder}, other errors {other_errors}"
    );
    assert_eq!((stored, wrong_holder, other_errors), (ROUNDS, 0, 0));
    for q in hosts {
        q.shutdown().await.expect("shutdown");
    }
}

/// A lock whose holder was never stored (a publisher that died between the two writes) does
/// not block the key; a key freed by cancel or by the end of its holder is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_without_a_live_holder_is_taken_over() {
    const TEST: &str = "a_lock_without_a_live_holder_is_taken_over";
    let Some((_url, queue, name)) = common::registered_queue(TEST).await else {
        return;
    };
    let store = queue.shared_store();
    let controls = store
        .client()
        .database(store.options().get_database())
        .collection::<Document>(store.options().get_control_collection());
    controls
        .insert_one(doc! { "_id": format!("key/{name}/orphan"), "holder": "never-stored" })
        .await
        .expect("an orphan lock");
    let report = queue
        .publish(
            &name,
            vec![NewMessage::new("t", json!({})).unique_key("orphan")],
        )
        .await
        .expect("publish");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let holder = report.published[0].clone();
    let again = queue
        .publish(
            &name,
            vec![NewMessage::new("t", json!({})).unique_key("orphan")],
        )
        .await
        .expect("publish");
    match &again.failed[..] {
        [f] => assert!(
            matches!(&f.error, Error::DuplicateKey { holder: h, .. } if *h == holder),
            "{}",
            f.error
        ),
        other => panic!("expected one refusal, got {other:?}"),
    }
    let stats = queue.queue_stats(Some(&name)).await.expect("stats");
    assert_eq!(stats[0].count(Status::Scheduled), 1, "{stats:?}");
    queue.shutdown().await.expect("shutdown");
}
