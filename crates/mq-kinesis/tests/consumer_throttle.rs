//! Read throttling (every other GetRecords answered with ProvisionedThroughputExceededException by
//! an SDK interceptor, SDK retries off): the consumer backs off, never counts it as an error, and
//! delivers everything.

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use emulator::{Emulator, ReadThrottle, client};
use mq_core::backend::{AimdOptions, AimdStrategy};
use mq_core::testkit::{DeliveryLedger, RecordingObserver, eventually, fast_options};
use mq_core::{LifecycleEvent, MessageQueue};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, ShardOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_reads_back_off_and_finish() {
    let stream = "throttle";
    let emu = Emulator::with_stream(stream, 2).await;
    let throttle = ReadThrottle::every(2);
    let c = client(&emu.endpoint, false, None, Some(throttle.clone()));
    let obs = Arc::new(RecordingObserver::default());
    let strategy = AimdStrategy::new(
        AimdOptions::default()
            .base_delay(Duration::from_millis(20))
            .max_delay(Duration::from_millis(200))
            .initial_batch(20),
    );
    let queue = KinesisQueue::with_client(
        c,
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .strategy(Arc::new(strategy))
            // a single counted fetch error would end the shard consumer: throttling must not count
            .shard(ShardOptions::default().max_fetch_errors(1))
            .common(emulator::observed(&obs))
            .discovery_interval(Duration::from_millis(100)),
    );
    let q = emulator::register_and_publish(&queue, stream, 600).await;
    let ledger = Arc::new(DeliveryLedger::default());
    let handler = ledger.handler();
    let consumer = queue.consume(&q, handler, fast_options()).await.unwrap();
    eventually(Duration::from_secs(60), "all 600 delivered", || {
        ledger.distinct() == 600
    })
    .await;
    let disconnected_early = obs.count("consumer_disconnected");
    consumer.stop().await;
    assert!(
        throttle.injected.load(Ordering::SeqCst) >= 5,
        "throttles were injected"
    );
    assert_eq!(disconnected_early, 0, "no shard consumer gave up");
    assert_eq!(ledger.duplicates(), 0);
    assert!(!obs.events().iter().any(|e| matches!(
        e,
        LifecycleEvent::ConsumerDisconnected {
            reason: mq_core::DisconnectReason::Error(_),
            ..
        }
    )));
    queue.shutdown().await.unwrap();
}
