//! `MetricsObserver` turns events into the documented metric names, and counts move.

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use mq_core::{
    ConsumerInfo, DisconnectReason, DispatchMode, ErrorChain, LifecycleDispatcher, LifecycleEvent,
    MessageId, MessageInfo, MetricsObserver, QueueName,
};

fn info(q: &QueueName) -> MessageInfo {
    let m = mq_core::Message::new(
        MessageId::new("m1").unwrap(),
        q.clone(),
        "welcome",
        serde_json::Value::Null,
        chrono::Utc::now(),
    );
    MessageInfo::of(&m, "memory")
}

/// Runs `f` with a synchronous dispatcher to a `MetricsObserver` that records into a local
/// recorder, and returns that recorder's snapshotter.
fn with_metrics(f: impl FnOnce(&LifecycleDispatcher, &Snapshotter)) -> Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let d = LifecycleDispatcher::builder()
            .observer(Arc::new(MetricsObserver::new()))
            .mode(DispatchMode::Sync)
            .build();
        f(&d, &snapshotter);
    });
    snapshotter
}

#[test]
fn events_become_metrics() {
    let snapshotter = with_metrics(|d, _| {
        let q = QueueName::new("emails").unwrap();
        for _ in 0..3 {
            d.emit(LifecycleEvent::Published {
                message: info(&q),
                size_bytes: 100,
            });
        }
        d.emit(LifecycleEvent::Consumed {
            message: info(&q),
            consumer_id: "c".into(),
            age: Duration::from_millis(250),
        });
        d.emit(LifecycleEvent::Failed {
            message: info(&q),
            consumer_id: "c".into(),
            error: ErrorChain::msg("x"),
            exhausted: true,
        });
    });
    let snap = snapshot(&snapshotter);
    assert_eq!(snap.get("mq_messages_published_total"), Some(&3.0));
    assert_eq!(snap.get("mq_messages_consumed_total"), Some(&1.0));
    assert_eq!(snap.get("mq_messages_failed_total"), Some(&1.0));
    assert_eq!(snap.get("mq_message_age_seconds"), Some(&0.25));
    // Outcome counters exist from the first delivery on.
    assert_eq!(snap.get("mq_messages_retried_total"), Some(&0.0));
    assert_eq!(snap.get("mq_messages_dead_lettered_total"), Some(&0.0));
}

#[test]
fn shard_events_become_lag_and_lease_gauges() {
    let snapshotter = with_metrics(|d, snapshotter| {
        let q = QueueName::new("orders").unwrap();
        let consumer = ConsumerInfo::shard("w1", q, "kinesis", "shardId-000000000001");
        d.emit(LifecycleEvent::ConsumerConnected {
            consumer: consumer.clone(),
        });
        for (records, lag) in [(100, Some(5_000)), (40, Some(1_500)), (0, None)] {
            d.emit(LifecycleEvent::RecordsFetched {
                consumer: consumer.clone(),
                records,
                millis_behind_latest: lag,
            });
        }
        let snap = snapshot(snapshotter);
        assert_eq!(snap.get("mq_shard_leases_held"), Some(&1.0));
        // the last read that reported a lag wins; an empty read without one keeps it
        assert_eq!(snap.get("mq_shard_millis_behind_latest"), Some(&1_500.0));
        assert_eq!(snap.get("mq_records_fetched_total"), Some(&140.0));
        d.emit(LifecycleEvent::ConsumerDisconnected {
            consumer,
            reason: DisconnectReason::Stopped,
        });
    });
    let snap = snapshot(&snapshotter);
    assert_eq!(snap.get("mq_shard_leases_held"), Some(&0.0));
}

/// Each metric name's value, summed over its label sets.
fn snapshot(s: &Snapshotter) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for (key, _, _, value) in s.snapshot().into_vec() {
        let v = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.iter().map(|x| x.into_inner()).sum(),
        };
        *out.entry(key.key().name().to_owned()).or_insert(0.0) += v;
    }
    out
}

#[test]
fn handler_duration_carries_the_shard() {
    let snapshotter = with_metrics(|d, _| {
        let q = QueueName::new("orders").unwrap();
        d.emit(LifecycleEvent::Acked {
            message: info(&q).on_shard(Some("shardId-000000000003")),
            consumer_id: "c".into(),
            handler_duration: Duration::from_millis(40),
        });
    });
    let labels: Vec<(String, String)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "mq_handler_duration_seconds")
        .flat_map(|(key, ..)| {
            key.key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        labels.contains(&("shard".to_owned(), "shardId-000000000003".to_owned())),
        "{labels:?}"
    );
    assert!(labels.iter().any(|(k, _)| k == "queue"), "{labels:?}");
}
