//! `DepthReporter` sets `mq_dead_letter_depth` per queue to the entries not yet replayed, and the
//! gauge goes down when a replay publishes them.

use std::collections::HashMap;
use std::sync::Arc;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use mq_core::testkit::dead_letter::letter;
use mq_core::{DeadLetterFilter, DeadLetterStore};
use mq_core::{MessageQueue, QueueName};
use mq_dlq::{DepthReporter, ReplayOptions, Replayer};
use mq_memory::MemoryDeadLetterStore;

fn depths(s: &Snapshotter) -> HashMap<String, f64> {
    s.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "mq_dead_letter_depth")
        .map(|(key, _, _, value)| {
            let queue = key
                .key()
                .labels()
                .find(|l| l.key() == "queue")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            let DebugValue::Gauge(g) = value else {
                panic!("mq_dead_letter_depth is not a gauge")
            };
            (queue, g.into_inner())
        })
        .collect()
}

#[test]
fn depth_counts_waiting_letters_per_queue() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let store = Arc::new(MemoryDeadLetterStore::new());
            let mut letters: Vec<_> = (0..3)
                .map(|i| letter("emails", &format!("e{i}"), "welcome", "smtp down"))
                .collect();
            letters.push(letter("orders", "o1", "created", "bad total"));
            store.insert(letters).await.expect("insert");

            let reporter = DepthReporter::new(store.clone())
                .queue(QueueName::new("emails").expect("name"))
                .queue(QueueName::new("orders").expect("name"));
            reporter.report_once().await.expect("report");
            let d = depths(&snapshotter);
            assert_eq!(d.get("emails"), Some(&3.0), "{d:?}");
            assert_eq!(d.get("orders"), Some(&1.0), "{d:?}");

            // Replaying the emails empties their depth; the orders letter still waits.
            let target: Arc<dyn MessageQueue> =
                Arc::new(mq_memory::InMemoryQueue::new(Default::default()));
            target
                .register(&QueueName::new("emails").expect("name"))
                .await
                .expect("register");
            let options = ReplayOptions::default()
                .filter(DeadLetterFilter::default().queue(QueueName::new("emails").expect("name")));
            let report = Replayer::new(store.clone(), target)
                .run(&options)
                .await
                .expect("replay");
            assert_eq!(report.published.len(), 3, "{report:?}");
            reporter.report_once().await.expect("report");
            let d = depths(&snapshotter);
            assert_eq!(d.get("emails"), Some(&0.0), "{d:?}");
            assert_eq!(d.get("orders"), Some(&1.0), "{d:?}");

            // Without queues: one series over everything.
            DepthReporter::new(store)
                .report_once()
                .await
                .expect("report");
            assert_eq!(depths(&snapshotter).get("all"), Some(&1.0));
        });
    });
}
