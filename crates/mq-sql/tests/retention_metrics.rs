//! Retention passes show on the `metrics` facade: the rows each pass removed, and when the
//! last pass succeeded.

#[path = "support/factory.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use mq_core::{
    Batch, CommonOptions, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName,
    handler_fn,
};
use mq_sql::SqliteQueue;
use support::{Db, fresh_table, options, publish_all};

/// The retention series of `table`, by name: counters add up over snapshots (a snapshot drains
/// them), gauges keep the last value read.
fn read(snapshotter: &Snapshotter, table: &str, into: &mut HashMap<String, f64>) {
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let k = key.key();
        if !k.labels().any(|l| l.key() == "table" && l.value() == table) {
            continue;
        }
        let action = k
            .labels()
            .find(|l| l.key() == "action")
            .map(|l| format!("/{}", l.value()))
            .unwrap_or_default();
        let name = format!("{}{action}", k.name());
        match value {
            DebugValue::Counter(n) => *into.entry(name).or_default() += n as f64,
            DebugValue::Gauge(v) if v.into_inner() > 0.0 => {
                into.insert(name, v.into_inner());
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_counts_what_it_removed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");

    let (url, table) = fresh_table(Db::Sqlite, "rm", "retention_counts_what_it_removed")
        .await
        .expect("SQLite needs no server");
    let opts = options(&table)
        .retention(Some(Duration::from_millis(1)))
        .retention_interval(Duration::from_millis(100))
        .common(CommonOptions::default());
    let q = SqliteQueue::connect(&url, opts).await.expect("connect");
    let name = QueueName::new("kept").expect("name");
    q.register(&name).await.expect("register");
    let msgs = (0..7)
        .map(|i| NewMessage::new("t", serde_json::json!({ "i": i })))
        .collect();
    publish_all(&q, &name, msgs).await;
    let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
    let report = q
        .consume_batch(&name, handler, &ConsumerOptions::default().batch_size(10))
        .await
        .expect("batch");
    assert_eq!(report.acked, 7);

    let removed = "mq_retention_removed_total/deleted";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = HashMap::new();
    loop {
        read(&snapshotter, &table, &mut seen);
        if seen.get(removed) == Some(&7.0)
            && seen.contains_key("mq_retention_last_success_timestamp_seconds")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention never reported removing the 7 rows: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("retention metrics: {seen:?}");
    q.shutdown().await.expect("shutdown");
}
