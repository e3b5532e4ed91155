//! `MetricsObserver` turns events into the documented metric names, and counts move.

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use mq_core::{
    DispatchMode, ErrorChain, LifecycleDispatcher, LifecycleEvent, MessageId, MessageInfo,
    MetricsObserver, QueueName,
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

#[test]
fn events_become_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let d = LifecycleDispatcher::builder()
            .observer(Arc::new(MetricsObserver::new()))
            .mode(DispatchMode::Sync)
            .build();
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
}

fn snapshot(s: &metrics_util::debugging::Snapshotter) -> std::collections::HashMap<String, f64> {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let v = match value {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.iter().map(|x| x.into_inner()).sum(),
            };
            (key.key().name().to_owned(), v)
        })
        .collect()
}
