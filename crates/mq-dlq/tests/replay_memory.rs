//! Replay behaviour on the in-memory store and queue: rate limit, target override, failures.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use mq_core::testkit::dead_letter::letter;
use mq_core::{DeadLetterFilter, DeadLetterStore, ReplayState};
use mq_core::{MessageQueue, QueueName};
use mq_dlq::testkit::drain;
use mq_dlq::{REPLAY_ENTRY_KEY, ReplayOptions, Replayer};
use mq_memory::InMemoryQueue;
use mq_memory::MemoryDeadLetterStore;

async fn store_with(n: usize, queue: &str) -> Arc<MemoryDeadLetterStore> {
    let store = Arc::new(MemoryDeadLetterStore::new());
    let letters = (0..n)
        .map(|i| letter(queue, &format!("m{i}"), "t", "e"))
        .collect();
    store.insert(letters).await.expect("insert");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_held() {
    let n = 60;
    let limit = 100;
    let store = store_with(n, "orders").await;
    let queue = Arc::new(InMemoryQueue::default());
    let started = Instant::now();
    let report = Replayer::new(store, queue)
        .run(&ReplayOptions::default().rate(NonZeroU32::new(limit)))
        .await
        .expect("replay");
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(report.published.len(), n);
    // The bucket has no burst: the first message goes at once, each next one 1/limit s later.
    let measured = (n - 1) as f64 / elapsed;
    eprintln!("replayed {n} at limit {limit}/s: measured {measured:.1}/s over {elapsed:.3}s");
    assert!(
        measured <= f64::from(limit) * 1.10,
        "measured {measured:.1}/s above the limit {limit}/s + 10%"
    );
    // Generous lower bound: a slow machine may be slower, never absurdly so.
    assert!(
        measured >= f64::from(limit) * 0.25,
        "measured {measured:.1}/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_to_another_queue_with_a_filter() {
    let store = store_with(6, "orders").await;
    store
        .insert(
            (0..4)
                .map(|i| letter("emails", &format!("e{i}"), "welcome", "smtp"))
                .collect(),
        )
        .await
        .expect("insert");
    let queue = Arc::new(InMemoryQueue::default());
    let retry = QueueName::new("emails-retry").expect("q");
    let options = ReplayOptions::default()
        .filter(DeadLetterFilter::default().queue(QueueName::new("emails").expect("q")))
        .target(Some(retry.clone()));
    let report = Replayer::new(store.clone(), queue.clone())
        .run(&options)
        .await
        .expect("replay");
    assert_eq!(report.selected, 4);
    assert_eq!(report.published.len(), 4);
    let msgs = drain(&*queue, &retry).await;
    assert_eq!(msgs.len(), 4);
    for m in &msgs {
        assert_eq!(m.message_type, "welcome");
        assert!(m.id.as_str().ends_with("-r1"), "{}", m.id);
        assert!(m.metadata.log_context.contains_key(REPLAY_ENTRY_KEY));
        assert_eq!(
            m.attempts, 1,
            "a fresh message (this is its first delivery)"
        );
    }
    let entry = store
        .list(&DeadLetterFilter::default().replay_state(ReplayState::Done))
        .await
        .expect("list");
    assert!(
        entry
            .iter()
            .all(|e| e.replay.as_ref().map(|r| &r.target) == Some(&retry))
    );
    assert_eq!(
        store
            .count(&DeadLetterFilter::default().replay_state(ReplayState::None))
            .await
            .expect("count"),
        6,
        "orders untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_replayed_publishes_a_new_generation() {
    let store = store_with(3, "orders").await;
    let queue = Arc::new(InMemoryQueue::default());
    let replayer = Replayer::new(store.clone(), queue.clone());
    replayer
        .run(&ReplayOptions::default())
        .await
        .expect("first");
    let second = replayer
        .run(&ReplayOptions::default().include_replayed(true))
        .await
        .expect("second");
    assert_eq!(second.published.len(), 3);
    let name = QueueName::new("orders").expect("q");
    let ids: Vec<String> = drain(&*queue, &name)
        .await
        .into_iter()
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(ids.iter().filter(|i| i.ends_with("-r2")).count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publishes_are_reported_and_retried_later() {
    let store = store_with(3, "orders").await;
    let queue = Arc::new(InMemoryQueue::default());
    queue.shutdown().await.expect("shutdown");
    let replayer = Replayer::new(store.clone(), queue);
    let report = replayer
        .run(&ReplayOptions::default())
        .await
        .expect("replay");
    assert_eq!(report.failed.len(), 3, "{report:?}");
    assert!(report.published.is_empty());
    // They stay pending: the next replay (to a live queue) publishes them under the same ids.
    let pending = DeadLetterFilter::default().replay_state(ReplayState::Pending);
    assert_eq!(store.count(&pending).await.expect("count"), 3);
    let live = Arc::new(InMemoryQueue::default());
    let report = Replayer::new(store.clone(), live.clone())
        .run(&ReplayOptions::default())
        .await
        .expect("replay");
    assert_eq!(report.published.len(), 3);
    let name = QueueName::new("orders").expect("q");
    assert!(
        drain(&*live, &name)
            .await
            .iter()
            .all(|m| m.id.as_str().ends_with("-r1"))
    );
}
