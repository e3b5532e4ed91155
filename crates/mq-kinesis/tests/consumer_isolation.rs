//! Poison isolation that sticks: a batch that fails as a whole is handed to the handler one
//! message at a time, so only the messages that fail alone reach the dead letters; and failures
//! that are not the records' own (a checkpoint the store cannot save) never make a good record a
//! poison pill. A message the handler retries holds back the later messages of its partition key.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/hooked.rs"]
mod hooked;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emulator::Emulator;
use hooked::{Hooked, Hooks};
use mq_core::testkit::{RecordingDeadLetters, RecordingObserver, eventually, fast_options};
use mq_core::{
    Batch, HandlerContext, MessageQueue, NewMessage, Outcome, Outcomes, QueueName, RetryPolicy,
    handler_fn,
};
use mq_kinesis::{
    CheckpointOutcome, InMemoryLeaseStore, KinesisOptions, KinesisQueue, Lease, LeaseStore,
    ShardOptions,
};

/// Handler runs: how often each message (by its `i`) was handed to the handler, the messages of
/// the batches that succeeded, and the number of handler calls.
#[derive(Clone, Default)]
struct Runs {
    per_message: Arc<Mutex<BTreeMap<u64, usize>>>,
    succeeded: Arc<Mutex<BTreeSet<u64>>>,
    calls: Arc<AtomicUsize>,
}

impl Runs {
    /// A handler that fails its whole batch whenever it holds one of `poison`.
    fn handler(&self, poison: &'static [u64]) -> Arc<dyn mq_core::Handler> {
        let runs = self.clone();
        Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
            let runs = runs.clone();
            async move {
                runs.calls.fetch_add(1, Ordering::SeqCst);
                let ids: Vec<u64> = batch
                    .iter()
                    .map(|m| m.payload["i"].as_u64().unwrap_or(u64::MAX))
                    .collect();
                {
                    let mut per = runs.per_message.lock().unwrap();
                    for i in &ids {
                        *per.entry(*i).or_default() += 1;
                    }
                }
                if ids.iter().any(|i| poison.contains(i)) {
                    return Err(std::io::Error::other("a poison message is in the batch"));
                }
                runs.succeeded.lock().unwrap().extend(ids);
                Ok(())
            }
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_messages_that_fail_alone_reach_the_dead_letters() {
    let stream = "isolate-poison";
    let emu = Emulator::with_stream(stream, 1).await;
    let dead = Arc::new(RecordingDeadLetters::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .common(mq_core::CommonOptions::default().dead_letters(dead.clone()))
            .discovery_interval(Duration::from_millis(100)),
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    emulator::publish_all(&queue, &q, emulator::numbered(100)).await;

    let runs = Runs::default();
    let opts = fast_options().batch_size(100).retry(
        RetryPolicy::default()
            .max_attempts(3)
            .base_delay(Duration::from_millis(20))
            .jitter(0.0),
    );
    let consumer = queue
        .consume(&q, runs.handler(&[50, 90]), opts)
        .await
        .unwrap();
    let (r, d) = (runs.clone(), dead.clone());
    // counted below whether or not it gets there
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        eventually(
            Duration::from_secs(30),
            "98 handled, 2 dead-lettered",
            move || (r.succeeded.lock().unwrap().len() == 98 && d.len() >= 2) || d.len() > 2,
        ),
    )
    .await;
    consumer.stop().await;

    let per = runs.per_message.lock().unwrap().clone();
    let most_good = per
        .iter()
        .filter(|(i, _)| ![50, 90].contains(*i))
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0);
    let record_runs: usize = per.values().sum();
    let mut dead_ids: Vec<u64> = dead
        .letters()
        .iter()
        .map(|l| l.message.payload["i"].as_u64().unwrap_or(u64::MAX))
        .collect();
    dead_ids.sort_unstable();
    println!(
        "handler calls {}, messages handed to the handler {record_runs}, most runs of a good message {most_good}, dead-lettered {:?}",
        runs.calls.load(Ordering::SeqCst),
        dead_ids
    );
    assert_eq!(dead_ids, vec![50, 90]);
    assert_eq!(runs.succeeded.lock().unwrap().len(), 98);
    assert!(most_good <= 2, "a good message ran {most_good} times");
    assert_eq!(per.get(&50), Some(&3), "the poison ran its 3 attempts");
}

/// Fails the first `fail` checkpoint writes.
#[derive(Debug, Default)]
struct FailingCheckpoints {
    fail: usize,
    seen: AtomicUsize,
}

impl Hooks for FailingCheckpoints {
    fn checkpoint(
        &self,
        _lease: &Lease,
        _seq: &str,
    ) -> Option<mq_kinesis::Result<CheckpointOutcome>> {
        (self.seen.fetch_add(1, Ordering::SeqCst) < self.fail).then(|| {
            Err(mq_kinesis::Error::InvalidOption {
                field: "checkpoint",
                reason: "injected checkpoint failure".into(),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_store_that_fails_then_recovers_dead_letters_nothing() {
    let stream = "isolate-checkpoint";
    let emu = Emulator::with_stream(stream, 1).await;
    // two checkpoints fail through all their retries (six writes each), then the store recovers
    let store = Arc::new(Hooked::new(FailingCheckpoints {
        fail: 12,
        ..FailingCheckpoints::default()
    }));
    let dead = Arc::new(RecordingDeadLetters::default());
    let obs = Arc::new(RecordingObserver::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(store.clone())
            .common(emulator::observed(&obs).dead_letters(dead.clone()))
            .shard(ShardOptions::default().poison_threshold(2))
            .discovery_interval(Duration::from_millis(100)),
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    emulator::publish_all(&queue, &q, emulator::numbered(20)).await;

    let runs = Runs::default();
    let consumer = queue
        .consume(&q, runs.handler(&[]), fast_options())
        .await
        .unwrap();
    let s = store.clone();
    let d = dead.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        eventually(
            Duration::from_secs(60),
            "checkpointed after the recovery",
            move || s.seen.load(Ordering::SeqCst) > 12 || !d.is_empty(),
        ),
    )
    .await;
    consumer.stop().await;
    let checkpoint = store
        .state(stream, "shardId-000000000000")
        .await
        .unwrap()
        .checkpoint;
    println!(
        "checkpoint writes {}, handler calls {}, dead-lettered {}, poison pills {}",
        store.seen.load(Ordering::SeqCst),
        runs.calls.load(Ordering::SeqCst),
        dead.len(),
        obs.count("poison_pill")
    );
    assert_eq!(dead.len(), 0, "no good record dead-lettered");
    assert_eq!(obs.count("poison_pill"), 0);
    assert!(
        checkpoint.is_some(),
        "checkpointed once the store recovered"
    );
    assert_eq!(runs.succeeded.lock().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_holds_back_the_later_messages_of_its_key() {
    let stream = "isolate-key-order";
    let emu = Emulator::with_stream(stream, 1).await;
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .discovery_interval(Duration::from_millis(100)),
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    // a0 b0 a1 b1 ... a4 b4
    let msgs: Vec<NewMessage> = (0..10u64)
        .map(|j| {
            let key = if j % 2 == 0 { "a" } else { "b" };
            NewMessage::new("t", serde_json::json!({"key": key, "n": j / 2})).partition_key(key)
        })
        .collect();
    emulator::publish_all(&queue, &q, msgs).await;

    // every delivery in order, as "a0", "b3", ...; a0 is retried once
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = log.clone();
    let handler = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let l = l.clone();
        async move {
            let mut out = Outcomes::ack_all();
            let mut l = l.lock().unwrap();
            for m in batch.iter() {
                let name = format!(
                    "{}{}",
                    m.payload["key"].as_str().unwrap_or_default(),
                    m.payload["n"]
                );
                if name == "a0" && !l.contains(&name) {
                    out.insert(m.id.clone(), Outcome::retry());
                }
                l.push(name);
            }
            out
        }
    }));
    let opts = fast_options().batch_size(10).retry(
        RetryPolicy::default()
            .max_attempts(3)
            .base_delay(Duration::from_millis(20))
            .jitter(0.0),
    );
    let consumer = queue.consume(&q, handler, opts).await.unwrap();
    let l = log.clone();
    eventually(Duration::from_secs(30), "a0 delivered again", move || {
        l.lock().unwrap().iter().filter(|n| *n == "a0").count() == 2
    })
    .await;
    consumer.stop().await;
    let log = log.lock().unwrap().clone();
    println!("deliveries: {log:?}");
    let last = |name: &str| log.iter().rposition(|n| n == name).unwrap();
    // the last delivery of each of a's messages comes in a's order
    for n in 1..5 {
        assert!(
            last(&format!("a{}", n - 1)) < last(&format!("a{n}")),
            "a{} last handled after a{n}: {log:?}",
            n - 1
        );
    }
    // b's messages kept their acks
    for n in 0..5 {
        let name = format!("b{n}");
        assert_eq!(log.iter().filter(|x| **x == name).count(), 1, "{name}");
    }
}
