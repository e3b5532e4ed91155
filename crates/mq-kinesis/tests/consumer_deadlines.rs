//! Every call has a deadline: a `PutRecords` the service never answers fails the publish in
//! time instead of hanging it; a lease-store checkpoint or renewal that never answers (a frozen
//! call, injected by a wrapper store) fails like an error, so the lease moves; and a stop never
//! waits on a frozen call past its grace period.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/flaky_store.rs"]
mod flaky_store;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use emulator::{Emulator, Hang};
use flaky_store::FlakyStore;
use mq_core::testkit::{DeliveryLedger, RecordingObserver, eventually, fast_options};
use mq_core::{DisconnectReason, LifecycleEvent, Message, MessageId, MessageQueue, QueueName};
use mq_kinesis::{KinesisProducer, KinesisQueue, ProducerOptions, ShardOptions};

/// The shard consumers' disconnects for an error, with their reasons.
fn error_disconnects(obs: &RecordingObserver) -> Vec<String> {
    obs.events()
        .into_iter()
        .filter_map(|e| match e {
            LifecycleEvent::ConsumerDisconnected {
                reason: DisconnectReason::Error(why),
                ..
            } => Some(why),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_records_that_never_answers_fails_within_its_deadline() {
    let hang = Hang::new("PutRecords");
    let emu = Emulator::start_hanging(hang.clone()).await;
    emu.create_stream("deadline-put", 1).await;
    let producer = KinesisProducer::new(
        emu.client(),
        ProducerOptions::default()
            .request_timeout(Duration::from_millis(300))
            .max_attempts(2)
            .base_delay(Duration::from_millis(10)),
    );
    let m = Message::new(
        MessageId::new("m1").unwrap(),
        QueueName::new("deadline-put").unwrap(),
        "t",
        serde_json::json!({}),
        chrono::Utc::now(),
    );
    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(20), producer.put("deadline-put", &[m]))
        .await
        .expect("the publish returned instead of hanging")
        .unwrap();
    let took = started.elapsed();
    let text = report.failed[0].error.to_string();
    println!(
        "PutRecords held unanswered {}, publish returned after {took:?}: {text}",
        hang.held.load(Ordering::SeqCst)
    );
    assert_eq!(report.failed.len(), 1);
    assert!(report.published.is_empty());
    assert!(text.contains("RequestTimeout"), "{text}");
    assert!(text.contains("PutRecords got no answer within"), "{text}");
    assert_eq!(
        hang.held.load(Ordering::SeqCst),
        2,
        "both attempts were sent"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

async fn consuming(
    stream: &str,
    store: Arc<FlakyStore>,
    shard: ShardOptions,
    obs: &Arc<RecordingObserver>,
    options: mq_core::ConsumerOptions,
) -> (
    Emulator,
    KinesisQueue,
    mq_core::ConsumerHandle,
    Arc<DeliveryLedger>,
) {
    let emu = Emulator::with_stream(stream, 1).await;
    let queue = KinesisQueue::with_client(
        emu.client(),
        emulator::observed_options(store, "a", obs).shard(shard),
    );
    let q = emulator::register_and_publish(&queue, stream, 10).await;
    let ledger = Arc::new(DeliveryLedger::default());
    let consumer = queue.consume(&q, ledger.handler(), options).await.unwrap();
    (emu, queue, consumer, ledger)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_never_answers_fails_and_the_lease_moves() {
    let store = Arc::new(FlakyStore::default());
    store.checkpoint.freeze(true);
    let obs = Arc::new(RecordingObserver::default());
    let (_emu, queue, consumer, ledger) = consuming(
        "deadline-checkpoint",
        store.clone(),
        ShardOptions::default().store_timeout(Duration::from_millis(200)),
        &obs,
        fast_options(),
    )
    .await;
    let o = obs.clone();
    let given_up = tokio::time::timeout(
        Duration::from_secs(20),
        eventually(Duration::from_secs(20), "the lease released", move || {
            !error_disconnects(&o).is_empty()
        }),
    )
    .await;
    let reasons = error_disconnects(&obs);
    println!(
        "checkpoint calls {}, frozen {}, handled {}, disconnects for an error {reasons:?}",
        store.checkpoint.calls.load(Ordering::SeqCst),
        store.checkpoint.froze.load(Ordering::SeqCst),
        ledger.distinct(),
    );
    assert!(given_up.is_ok(), "the shard consumer gave up its lease");
    assert!(
        reasons[0].contains("checkpoint got no answer within 200ms"),
        "{reasons:?}"
    );
    assert!(
        store.checkpoint.froze.load(Ordering::SeqCst) >= 2,
        "retried"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(10), consumer.stop()).await;
    assert!(stopped.is_ok(), "stop returned");
    queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_does_not_wait_on_a_checkpoint_that_never_answers() {
    let store = Arc::new(FlakyStore::default());
    store.checkpoint.freeze(true);
    let obs = Arc::new(RecordingObserver::default());
    let grace = Duration::from_millis(500);
    let (_emu, queue, consumer, _ledger) = consuming(
        "deadline-stop",
        store.clone(),
        // a deadline far longer than the test: only the stop can end the call
        ShardOptions::default().store_timeout(Duration::from_secs(600)),
        &obs,
        fast_options().shutdown_grace(grace),
    )
    .await;
    let s = store.clone();
    eventually(Duration::from_secs(20), "a checkpoint frozen", move || {
        s.checkpoint.froze.load(Ordering::SeqCst) > 0
    })
    .await;
    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(20), consumer.stop()).await;
    let took = started.elapsed();
    println!(
        "stop with a frozen checkpoint took {took:?} (grace {grace:?}), frozen calls {}",
        store.checkpoint.froze.load(Ordering::SeqCst)
    );
    assert!(stopped.is_ok(), "stop returned");
    assert!(took < grace + Duration::from_secs(3), "{took:?}");
    queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_never_answers_loses_the_lease() {
    let store = Arc::new(FlakyStore::default());
    let obs = Arc::new(RecordingObserver::default());
    let (_emu, queue, consumer, ledger) = consuming(
        "deadline-renew",
        store.clone(),
        ShardOptions::default(),
        &obs,
        fast_options().lease_duration(Duration::from_millis(900)),
    )
    .await;
    let l = ledger.clone();
    eventually(Duration::from_secs(20), "all 10 handled", move || {
        l.distinct() == 10
    })
    .await;
    store.renew.freeze(true);
    let frozen_at = Instant::now();
    let o = obs.clone();
    let lost = tokio::time::timeout(
        Duration::from_secs(20),
        eventually(Duration::from_secs(20), "the lease lost", move || {
            o.count("lease_lost") > 0
        }),
    )
    .await;
    let took = frozen_at.elapsed();
    let reason = obs
        .events()
        .into_iter()
        .find_map(|e| match e {
            LifecycleEvent::LeaseLost { reason, .. } => Some(reason),
            _ => None,
        })
        .unwrap_or_default();
    println!(
        "renewals {}, frozen {}, lease lost after {took:?}: {reason}",
        store.renew.calls.load(Ordering::SeqCst),
        store.renew.froze.load(Ordering::SeqCst)
    );
    assert!(lost.is_ok(), "a frozen renewal loses the lease");
    assert!(reason.contains("renew got no answer"), "{reason}");
    store.renew.freeze(false);
    let stopped = tokio::time::timeout(Duration::from_secs(10), consumer.stop()).await;
    assert!(stopped.is_ok(), "stop returned");
    queue.shutdown().await.unwrap();
}
