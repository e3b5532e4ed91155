//! An iterator that expires while the handler runs (emulator iterator TTL of 1 s) is re-created
//! from the checkpoint: nothing lost, nothing delivered twice.

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use emulator::Emulator;
use mq_core::backend::{AimdOptions, AimdStrategy};
use mq_core::testkit::{DeliveryLedger, RecordingObserver, eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, handler_fn};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_iterator_is_recreated_from_the_checkpoint() {
    let mut opts = emulator::store_options();
    opts.iterator_ttl_seconds = 1;
    let emu = Emulator::start_with(opts).await;
    let stream = "iterator";
    emu.create_stream(stream, 1).await;
    let obs = Arc::new(RecordingObserver::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .strategy(Arc::new(AimdStrategy::new(
                AimdOptions::default().initial_batch(10).max_batch(10),
            )))
            .common(emulator::observed(&obs))
            .discovery_interval(Duration::from_millis(100)),
    );
    let q = emulator::register_and_publish(&queue, stream, 30).await;
    let ledger = Arc::new(DeliveryLedger::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let (l, c) = (ledger.clone(), calls.clone());
    let handler = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let (l, c) = (l.clone(), c.clone());
        async move {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                // outlive the 1 s iterator TTL
                tokio::time::sleep(Duration::from_millis(2200)).await;
            }
            for m in batch.iter() {
                l.begin(m.id.as_str());
                l.end(m.id.as_str());
            }
        }
    }));
    let consumer = queue.consume(&q, handler, fast_options()).await.unwrap();
    eventually(Duration::from_secs(30), "all 30 delivered", || {
        ledger.distinct() == 30
    })
    .await;
    consumer.stop().await;
    assert_eq!(ledger.duplicates(), 0);
    assert_eq!(obs.count("lease_lost"), 0);
    queue.shutdown().await.unwrap();
}
