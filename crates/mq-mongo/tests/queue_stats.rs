//! `MongoQueue::queue_stats`: counts per status, the oldest ready message, expired leases (needs
//! `MONGODB_URI`).

#[path = "common/mongo.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mq_core::backend::{Holder, QueueStore};
use mq_core::testkit::{fast_options, queue_name};
use mq_core::{Batch, HandlerContext, MessageQueue, NewMessage, QueueName, Status, handler_fn};
use serde_json::json;

fn messages(n: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|i| NewMessage::new("t", json!({ "n": i })))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_statuses_ready_age_and_expired_leases() {
    const TEST: &str = "stats_count_statuses_ready_age_and_expired_leases";
    let Some(url) = common::url(TEST) else { return };
    let queue = common::fresh_queue(&url, TEST, |o| o.change_stream(false)).await;
    let store = queue.shared_store();
    let (jobs, idle, empty) = (
        queue_name("stats-jobs"),
        queue_name("stats-idle"),
        queue_name("stats-empty"),
    );
    for q in [&jobs, &idle, &empty] {
        queue.register(q).await.expect("register");
    }
    let mut batch = messages(6);
    batch.extend((0..2).map(|_| NewMessage::new("t", json!({})).delay(Duration::from_secs(3600))));
    common::publish_all(&queue, &jobs, batch, "stored").await;
    common::publish_all(&queue, &idle, messages(2), "stored").await;

    // One acked, two held by a consumer that crashed (their lease runs out at once), one held
    // by a live consumer.
    let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
    let report = queue
        .consume_batch(&jobs, handler, &fast_options().batch_size(1))
        .await
        .expect("consume");
    assert_eq!(report.acked, 1);
    let crashed = store
        .claim(&jobs, Holder::new("crashed", Duration::from_millis(1)), 2)
        .await
        .expect("claim");
    assert_eq!(crashed.messages.len(), 2);
    let alive = store
        .claim(&jobs, Holder::new("alive", Duration::from_secs(3600)), 1)
        .await
        .expect("claim");
    assert_eq!(alive.messages.len(), 1);
    mq_core::testkit::wait_until(
        Duration::from_secs(10),
        "the crashed leases to run out",
        || async {
            queue
                .queue_stats(Some(&jobs))
                .await
                .is_ok_and(|s| s.first().is_some_and(|s| s.expired_leases == 2))
        },
    )
    .await;

    let all = queue.queue_stats(None).await.expect("stats");
    let names: Vec<&QueueName> = all.iter().map(|s| &s.queue).collect();
    let mut sorted = vec![&idle, &jobs];
    sorted.sort();
    assert_eq!(names, sorted, "queues with messages, in name order");
    let s = all.iter().find(|s| s.queue == jobs).expect("jobs");
    assert_eq!(s.count(Status::Executed), 1, "{s:?}");
    assert_eq!(s.count(Status::Processing), 3, "{s:?}");
    assert_eq!(
        s.count(Status::Scheduled),
        4,
        "two ready, two an hour away: {s:?}"
    );
    assert_eq!(s.total(), 8);
    assert_eq!(s.expired_leases, 2, "{s:?}");
    let age = s.oldest_ready_age.expect("ready messages wait");
    assert!(age < Duration::from_secs(60), "published just now: {age:?}");
    let i = all.iter().find(|s| s.queue == idle).expect("idle");
    assert_eq!((i.count(Status::Scheduled), i.expired_leases), (2, 0));

    // One queue: the same numbers; a queue with no messages has an empty entry.
    let one = queue.queue_stats(Some(&jobs)).await.expect("stats");
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].total(), one[0].expired_leases), (8, 2));
    let none = queue.queue_stats(Some(&empty)).await.expect("stats");
    assert_eq!(
        (none.len(), none[0].total(), none[0].oldest_ready_age),
        (1, 0, None)
    );

    // A message an hour late shows as such.
    let an_hour_ago = Utc::now() - chrono::Duration::hours(1);
    let overdue = NewMessage::new("t", json!({})).execute_at(an_hour_ago);
    common::publish_all(&queue, &empty, vec![overdue], "stored").await;
    let late = queue.queue_stats(Some(&empty)).await.expect("stats");
    let age = late[0].oldest_ready_age.expect("a ready message");
    assert!(
        age >= Duration::from_secs(3599) && age < Duration::from_secs(3700),
        "{age:?}"
    );
    queue.shutdown().await.expect("shutdown");
}
