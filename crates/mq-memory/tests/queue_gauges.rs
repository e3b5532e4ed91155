//! `QueueGauges` exports the store's depth (waiting and running messages) and the oldest waiting message's age, and
//! follows the queue as it drains.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use mq_core::backend::PollingQueue;
use mq_core::{
    Batch, CommonOptions, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueGauges,
    QueueName, handler_fn,
};
use mq_memory::MemoryStore;

/// The gauges of queue `gauged` in one snapshot, by `name` or `name/status`. The debugging
/// recorder sets gauges back to 0 when it takes a snapshot, so each check reads one snapshot.
fn gauges(snapshotter: &Snapshotter) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let k = key.key();
        let label = |l: &str| {
            k.labels()
                .find(|x| x.key() == l)
                .map(|x| x.value().to_owned())
        };
        if label("queue").as_deref() != Some("gauged") {
            continue;
        }
        if let DebugValue::Gauge(v) = value {
            let name = match label("status") {
                Some(status) => format!("{}/{status}", k.name()),
                None => k.name().to_owned(),
            };
            out.insert(name, v.into_inner());
        }
    }
    out
}

/// Reads snapshots until one satisfies `check`, for at most 10 s; returns it.
async fn until(
    snapshotter: &Snapshotter,
    what: &str,
    check: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = gauges(snapshotter);
        if check(&g) {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_follow_the_queue() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");

    let queue = PollingQueue::new(MemoryStore::new(100), CommonOptions::default());
    let name = QueueName::new("gauged").unwrap();
    queue.register(&name).await.unwrap();
    let messages = (0..3)
        .map(|i| NewMessage::new("job", serde_json::json!({ "i": i })))
        .collect();
    queue
        .publish(&name, messages)
        .await
        .unwrap()
        .into_result()
        .unwrap();

    let gauges = QueueGauges::start(&queue, Duration::from_secs(1));
    let waiting = "mq_queue_messages/scheduled";
    let first = until(&snapshotter, "3 waiting", |g| g.get(waiting) == Some(&3.0)).await;
    assert_eq!(
        first.get("mq_queue_messages/processing"),
        Some(&0.0),
        "both live statuses are set: {first:?}"
    );
    assert!(
        first.contains_key("mq_queue_oldest_ready_age_seconds"),
        "{first:?}"
    );

    let handler = std::sync::Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
    let report = queue
        .consume_batch(&name, handler, &ConsumerOptions::default())
        .await
        .unwrap();
    assert_eq!(report.acked, 3);
    // One message due in an hour: a reading taken after the drain counts it alone.
    let later = NewMessage::new("job", serde_json::json!({ "i": 3 }))
        .execute_at(chrono::Utc::now() + chrono::Duration::hours(1));
    queue
        .publish(&name, vec![later])
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let drained = until(&snapshotter, "1 waiting", |g| g.get(waiting) == Some(&1.0)).await;
    println!("gauges after draining: {drained:?}");
    assert!(
        !drained.contains_key("mq_queue_messages/executed"),
        "the gauges read the depth, not the finished messages: {drained:?}"
    );
    let depth = queue.queue_depth(Some(&name)).await.unwrap();
    assert_eq!(depth.len(), 1);
    assert_eq!(depth[0].count(mq_core::Status::Scheduled), 1);
    assert_eq!(depth[0].count(mq_core::Status::Executed), 0, "{depth:?}");
    let stats = queue.queue_stats(Some(&name)).await.unwrap();
    assert_eq!(stats[0].count(mq_core::Status::Executed), 3, "{stats:?}");
    gauges.stop();
    queue.shutdown().await.unwrap();
}
