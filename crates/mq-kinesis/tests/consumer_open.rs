//! Opening a shard: a `GetShardIterator` that never answers is a stall (the lease moves) and
//! never keeps `stop()` waiting; `StartPosition::AtTimestamp` starts at the first record written
//! at or after the time.

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use emulator::{Emulator, Hang};
use mq_core::testkit::{DeliveryLedger, RecordingObserver, eventually, fast_options};
use mq_core::{MessageQueue, NewMessage, QueueName};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, ShardOptions, StartPosition};

async fn hanging(stream: &str) -> (Emulator, Hang, QueueName) {
    let hang = Hang::new("GetShardIterator");
    let emu = Emulator::start_hanging(hang.clone()).await;
    emu.create_stream(stream, 1).await;
    let q = QueueName::new(stream).unwrap();
    let publisher = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new())),
    );
    publisher.register(&q).await.unwrap();
    emulator::publish_all(&publisher, &q, emulator::numbered(5)).await;
    (emu, hang, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_does_not_wait_on_a_hung_get_shard_iterator() {
    let (emu, hang, q) = hanging("open-hung-stop").await;
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .discovery_interval(Duration::from_millis(100)),
    );
    queue.register(&q).await.unwrap();
    let ledger = Arc::new(DeliveryLedger::default());
    let consumer = queue
        .consume(&q, ledger.handler(), fast_options())
        .await
        .unwrap();
    let held = hang.held.clone();
    eventually(
        Duration::from_secs(10),
        "GetShardIterator hangs",
        move || held.load(Ordering::SeqCst) >= 1,
    )
    .await;
    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(20), consumer.stop()).await;
    println!(
        "stop() with a hung GetShardIterator returned: {} after {:?}",
        stopped.is_ok(),
        started.elapsed()
    );
    assert!(stopped.is_ok(), "stop() waited on the hung call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_get_shard_iterator_is_a_stall_and_the_lease_moves() {
    let (emu, hang, q) = hanging("open-hung-stall").await;
    let obs = Arc::new(RecordingObserver::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        emulator::observed_options(Arc::new(InMemoryLeaseStore::new()), "a", &obs)
            .shard(ShardOptions::default().stall_timeout(Duration::from_millis(300))),
    );
    queue.register(&q).await.unwrap();
    let ledger = Arc::new(DeliveryLedger::default());
    let consumer = queue
        .consume(
            &q,
            ledger.handler(),
            fast_options().lease_duration(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let o = obs.clone();
    // a failure here is counted below
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        eventually(Duration::from_secs(15), "the lease given up", move || {
            o.count("lease_lost") >= 1
        }),
    )
    .await;
    let lost = obs.count("lease_lost");
    // the call answers again: the shard is read
    hang.on.store(false, Ordering::SeqCst);
    let l = ledger.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        eventually(Duration::from_secs(30), "all 5 delivered", move || {
            l.distinct() == 5
        }),
    )
    .await;
    consumer.stop().await;
    println!(
        "hung GetShardIterator calls {}, leases given up {lost}, delivered {}",
        hang.held.load(Ordering::SeqCst),
        ledger.distinct()
    );
    assert!(lost >= 1, "the stuck open gave the lease up");
    assert_eq!(ledger.distinct(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_timestamp_starts_at_the_first_record_written_from_then() {
    let stream = "open-at-timestamp";
    let emu = Emulator::with_stream(stream, 1).await;
    let q = QueueName::new(stream).unwrap();
    let publisher = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new())),
    );
    publisher.register(&q).await.unwrap();
    let before: Vec<NewMessage> = (0..3)
        .map(|i| NewMessage::new("t", serde_json::json!({ "i": i })))
        .collect();
    emulator::publish_all(&publisher, &q, before).await;
    // the emulator keeps whole seconds: start at the next one, and write once it has begun
    let from = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap() + TimeDelta::seconds(1);
    eventually(Duration::from_secs(3), "the next second", || {
        Utc::now() >= from
    })
    .await;
    let after: Vec<NewMessage> = (100..103)
        .map(|i| NewMessage::new("t", serde_json::json!({ "i": i })))
        .collect();
    emulator::publish_all(&publisher, &q, after).await;

    let seen: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let s = seen.clone();
    let handler = Arc::new(mq_core::handler_fn(
        move |batch: mq_core::Batch, _ctx: mq_core::HandlerContext| {
            let s = s.clone();
            async move {
                s.lock()
                    .unwrap()
                    .extend(batch.iter().map(|m| m.payload["i"].as_u64().unwrap()));
            }
        },
    ));
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .shard(ShardOptions::default().initial_position(StartPosition::AtTimestamp(from)))
            .discovery_interval(Duration::from_millis(100)),
    );
    queue.register(&q).await.unwrap();
    let consumer = queue.consume(&q, handler, fast_options()).await.unwrap();
    let s = seen.clone();
    eventually(Duration::from_secs(20), "3 delivered", move || {
        s.lock().unwrap().len() >= 3
    })
    .await;
    consumer.stop().await;
    let seen = seen.lock().unwrap().clone();
    println!("delivered from {from}: {seen:?}");
    assert_eq!(seen, vec![100, 101, 102]);
}
