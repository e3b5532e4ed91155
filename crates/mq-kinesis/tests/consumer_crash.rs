//! A consumer killed mid-batch (runtime dropped: no release, no checkpoint): a new instance takes
//! the shard after the lease expires and resumes from the checkpoint; nothing is lost and only the
//! batch in flight is delivered twice.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/instance.rs"]
mod instance;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emulator::Emulator;
use instance::Instance;
use mq_core::testkit::{DeliveryLedger, eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, QueueName, handler_fn};
use mq_kinesis::{
    FileLeaseStore, InMemoryLeaseStore, KinesisOptions, KinesisQueue, LeaseStore, RedisLeaseStore,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_resume_with_memory_leases() {
    crash_resume(Arc::new(InMemoryLeaseStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_resume_with_file_leases() {
    let dir = std::env::temp_dir().join(format!("mq-kinesis-crash-{}", ulid::Ulid::new()));
    crash_resume(Arc::new(FileLeaseStore::new(&dir).unwrap())).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_resume_with_redis_leases() {
    let url = match mq_core::testkit::service_url("REDIS_URL") {
        Ok(u) => u,
        Err(reason) => {
            eprintln!("skipping crash_resume_with_redis_leases: {reason}");
            return;
        }
    };
    let prefix = format!("mqtest-crash-{}", ulid::Ulid::new());
    crash_resume(Arc::new(
        RedisLeaseStore::connect(&url, prefix).await.unwrap(),
    ))
    .await;
}

async fn crash_resume(store: Arc<dyn LeaseStore>) {
    let stream = "crash-resume";
    let emu = Emulator::with_stream(stream, 1).await;
    let q = QueueName::new(stream).unwrap();
    let publisher = KinesisQueue::with_client(emu.client(), KinesisOptions::new(store.clone()));
    publisher.register(&q).await.unwrap();
    let msgs = emulator::numbered(2000);
    emulator::publish_all(&publisher, &q, msgs).await;

    let ledger = Arc::new(DeliveryLedger::default());
    let crashed = Arc::new(AtomicBool::new(false));
    let in_flight: Arc<Mutex<Vec<String>>> = Arc::default();
    let (l, c, f) = (ledger.clone(), crashed.clone(), in_flight.clone());
    let handler_a = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let (l, c, f) = (l.clone(), c.clone(), f.clone());
        async move {
            for m in batch.iter() {
                l.begin(m.id.as_str());
            }
            if l.distinct() >= 700 {
                *f.lock().unwrap() = batch.iter().map(|m| m.id.to_string()).collect();
                c.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            for m in batch.iter() {
                l.end(m.id.as_str());
            }
        }
    }));
    let opts = fast_options().lease_duration(Duration::from_secs(1));
    let a = Instance::spawn(
        emu.endpoint.clone(),
        KinesisOptions::new(store.clone())
            .instance_id("a")
            .discovery_interval(Duration::from_millis(100)),
        q.clone(),
        handler_a,
        opts.clone(),
    );
    eventually(
        Duration::from_secs(60),
        "instance a reaches the crash point",
        || crashed.load(Ordering::SeqCst),
    )
    .await;
    a.crash();
    let checkpoint_at_crash = store
        .state(stream, "shardId-000000000000")
        .await
        .unwrap()
        .checkpoint;
    assert!(
        checkpoint_at_crash.is_some(),
        "a checkpointed before crashing"
    );

    let handler_b = ledger.handler();
    let b = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(store.clone())
            .instance_id("b")
            .discovery_interval(Duration::from_millis(100)),
    );
    b.register(&q).await.unwrap();
    let consumer = b.consume(&q, handler_b, opts).await.unwrap();
    eventually(Duration::from_secs(60), "all 2000 delivered", || {
        ledger.distinct() == 2000
    })
    .await;
    consumer.stop().await;

    let in_flight: HashSet<String> = in_flight.lock().unwrap().iter().cloned().collect();
    let lost = 2000 - ledger.distinct();
    let duplicates = ledger.duplicates();
    println!(
        "lost {lost}, duplicates {duplicates}, batch in flight at the crash {}",
        in_flight.len()
    );
    assert_eq!(lost, 0);
    assert!(
        duplicates <= in_flight.len(),
        "{duplicates} > {}",
        in_flight.len()
    );
    for id in &in_flight {
        assert_eq!(ledger.deliveries_of(id), 2, "{id} re-delivered once");
    }
    assert_eq!(duplicates, in_flight.len());
    b.shutdown().await.unwrap();
}
