//! Poison pills: a record that crashes every consumer that reads it is counted in the lease store
//! across restarts and, past the threshold, handed to the dead-letter hook while the shard moves
//! on (with polling and with enhanced fan-out); a record the handler keeps retrying goes to the
//! hook after its attempts.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/instance.rs"]
mod instance;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use emulator::{Emulator, RequestCounter, client};
use instance::Instance;
use mq_core::testkit::{
    DeliveryLedger, RecordingDeadLetters, RecordingObserver, eventually, fast_options,
};
use mq_core::{
    Batch, CommonOptions, HandlerContext, LifecycleEvent, MessageQueue, NewMessage, Outcome,
    Outcomes, QueueName, RetryPolicy, handler_fn,
};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, LeaseStore, ShardOptions};

fn common(dead: &Arc<RecordingDeadLetters>, obs: &Arc<RecordingObserver>) -> CommonOptions {
    emulator::observed(obs).dead_letters(dead.clone())
}

/// Two instances in a row crash on the first record; the third dead-letters it and delivers the
/// other 49. Returns the requests the third instance made.
async fn crashing_record_scenario(stream: &str, shard: ShardOptions) -> RequestCounter {
    let emu = Emulator::with_stream(stream, 1).await;
    let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
    let q = QueueName::new(stream).unwrap();
    let publisher = KinesisQueue::with_client(emu.client(), KinesisOptions::new(store.clone()));
    publisher.register(&q).await.unwrap();
    let mut msgs = vec![NewMessage::new("poison", serde_json::json!({"i": 0}))];
    msgs.extend((1..50).map(|i| NewMessage::new("t", serde_json::json!({ "i": i }))));
    emulator::publish_all(&publisher, &q, msgs).await;

    let ledger = Arc::new(DeliveryLedger::default());
    let crashes = Arc::new(AtomicUsize::new(0));
    let make_handler = || {
        let (l, c) = (ledger.clone(), crashes.clone());
        Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
            let (l, c) = (l.clone(), c.clone());
            async move {
                if batch.iter().any(|m| m.message_type == "poison") {
                    c.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                for m in batch.iter() {
                    l.begin(m.id.as_str());
                    l.end(m.id.as_str());
                }
            }
        }))
    };
    let opts = fast_options().lease_duration(Duration::from_millis(600));
    let dead = Arc::new(RecordingDeadLetters::default());
    let obs = Arc::new(RecordingObserver::default());
    let options = |id: &str| {
        KinesisOptions::new(store.clone())
            .instance_id(id)
            .common(common(&dead, &obs))
            .shard(shard.clone().poison_threshold(2))
            .discovery_interval(Duration::from_millis(100))
    };
    // two instances in a row crash on the record (the second reads it alone)
    for (n, id) in ["a", "b"].into_iter().enumerate() {
        let inst = Instance::spawn(
            emu.endpoint.clone(),
            options(id),
            q.clone(),
            make_handler(),
            opts.clone(),
        );
        eventually(Duration::from_secs(30), "the instance crashes", || {
            crashes.load(Ordering::SeqCst) == n + 1
        })
        .await;
        inst.crash();
    }
    assert_eq!(ledger.distinct(), 0);
    // the third sees 2 failures counted from the same checkpoint: dead-letters it, moves on
    let counter = RequestCounter::default();
    let c = KinesisQueue::with_client(
        client(&emu.endpoint, true, Some(counter.clone()), None),
        options("c"),
    );
    c.register(&q).await.unwrap();
    let consumer = c.consume(&q, make_handler(), opts).await.unwrap();
    eventually(Duration::from_secs(30), "the other 49 delivered", || {
        ledger.distinct() == 49
    })
    .await;
    consumer.stop().await;
    assert_eq!(crashes.load(Ordering::SeqCst), 2);
    let letters = dead.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message.message_type, "poison");
    assert_eq!(
        letters[0].origin.shard_id.as_deref(),
        Some("shardId-000000000000")
    );
    assert!(letters[0].origin.sequence_number.is_some());
    let poison: Vec<_> = obs
        .events()
        .into_iter()
        .filter_map(|e| match e {
            LifecycleEvent::PoisonPill {
                failures, records, ..
            } => Some((failures, records)),
            _ => None,
        })
        .collect();
    assert_eq!(poison, vec![(2, 1)]);
    assert_eq!(ledger.duplicates(), 0);
    c.shutdown().await.unwrap();
    counter
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_record_is_dead_lettered_after_restarts() {
    crashing_record_scenario("poison-crash", ShardOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_crashing_record_is_dead_lettered_the_same_way() {
    let counter = crashing_record_scenario(
        "fanout-poison",
        ShardOptions::default().enhanced_fan_out("mq-test"),
    )
    .await;
    assert_eq!(counter.get_records.load(Ordering::SeqCst), 0);
    // one subscription from the start, one from behind the poison pill
    assert_eq!(counter.subscribe_to_shard.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_retried_record_goes_to_dead_letters_after_its_attempts() {
    let stream = "poison-retry";
    let emu = Emulator::with_stream(stream, 1).await;
    let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
    let dead = Arc::new(RecordingDeadLetters::default());
    let obs = Arc::new(RecordingObserver::default());
    let q = QueueName::new(stream).unwrap();
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(store)
            .common(common(&dead, &obs))
            .discovery_interval(Duration::from_millis(100)),
    );
    queue.register(&q).await.unwrap();
    let mut msgs = emulator::numbered(10);
    msgs.insert(3, NewMessage::new("bad", serde_json::json!({})));
    emulator::publish_all(&queue, &q, msgs).await;
    let ledger = Arc::new(DeliveryLedger::default());
    let l = ledger.clone();
    let handler = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let l = l.clone();
        async move {
            let mut out = Outcomes::ack_all();
            for m in batch.iter() {
                l.begin(m.id.as_str());
                l.end(m.id.as_str());
                if m.message_type == "bad" {
                    out.insert(m.id.clone(), Outcome::retry());
                }
            }
            out
        }
    }));
    let opts = fast_options().retry(
        RetryPolicy::default()
            .max_attempts(3)
            .base_delay(Duration::from_millis(20))
            .jitter(0.0),
    );
    let consumer = queue.consume(&q, handler, opts).await.unwrap();
    eventually(Duration::from_secs(30), "bad record dead-lettered", || {
        dead.len() == 1
    })
    .await;
    eventually(Duration::from_secs(30), "all 11 delivered", || {
        ledger.distinct() == 11
    })
    .await;
    consumer.stop().await;
    let letters = dead.letters();
    assert_eq!(letters[0].message.message_type, "bad");
    assert!(letters[0].exhausted);
    assert_eq!(letters[0].message.attempts, 3);
    let bad_id = letters[0].message.id.to_string();
    assert_eq!(
        ledger.deliveries_of(&bad_id),
        3,
        "retried in place up to max attempts"
    );
    assert_eq!(
        ledger.duplicates(),
        2,
        "only the bad record was delivered again"
    );
    assert_eq!(obs.count("poison_pill"), 0);
    assert_eq!(obs.count("retried"), 2);
    queue.shutdown().await.unwrap();
}
