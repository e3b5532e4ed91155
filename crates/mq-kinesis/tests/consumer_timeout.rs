//! A handler past its timeout: its token is cancelled, the consumer keeps (renews) the lease until
//! the handler has returned, and the batch runs again only after that.

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use emulator::Emulator;
use mq_core::testkit::{DeliveryLedger, RecordingObserver, eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, handler_fn};
use mq_kinesis::{InMemoryLeaseStore, KinesisQueue, LeaseStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_handler_is_cancelled_and_not_overlapped() {
    let stream = "timeout";
    let emu = Emulator::with_stream(stream, 1).await;
    let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
    let obs = Arc::new(RecordingObserver::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        emulator::observed_options(store.clone(), "slow", &obs),
    );
    let q = emulator::register_and_publish(&queue, stream, 5).await;

    let ledger = Arc::new(DeliveryLedger::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let cancelled_seen = Arc::new(AtomicBool::new(false));
    let held_during_overrun = Arc::new(AtomicBool::new(false));
    let (l, c, cs, held, st) = (
        ledger.clone(),
        calls.clone(),
        cancelled_seen.clone(),
        held_during_overrun.clone(),
        store.clone(),
    );
    let handler = Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
        let (l, c, cs, held, st) = (l.clone(), c.clone(), cs.clone(), held.clone(), st.clone());
        async move {
            for m in batch.iter() {
                l.begin(m.id.as_str());
            }
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                // ignores its token and overruns the 200 ms timeout and the 300 ms lease
                tokio::time::sleep(Duration::from_millis(1200)).await;
                cs.store(ctx.is_cancelled(), Ordering::SeqCst);
                let state = st.state("timeout", "shardId-000000000000").await.unwrap();
                let intruder = st
                    .acquire(
                        "timeout",
                        "shardId-000000000000",
                        "intruder",
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
                held.store(
                    state.live && state.owner.as_deref() == Some("slow") && intruder.is_none(),
                    Ordering::SeqCst,
                );
            }
            for m in batch.iter() {
                l.end(m.id.as_str());
            }
        }
    }));
    let opts = fast_options()
        .handler_timeout(Duration::from_millis(200))
        .lease_duration(Duration::from_millis(300));
    let consumer = queue.consume(&q, handler, opts).await.unwrap();
    eventually(Duration::from_secs(20), "the batch ran twice", || {
        calls.load(Ordering::SeqCst) >= 2 && ledger.distinct() == 5 && ledger.duplicates() == 5
    })
    .await;
    eventually(Duration::from_secs(5), "checkpoint after the retry", || {
        obs.count("checkpoint") >= 1
    })
    .await;
    consumer.stop().await;
    assert!(
        cancelled_seen.load(Ordering::SeqCst),
        "token cancelled at the timeout"
    );
    assert!(
        held_during_overrun.load(Ordering::SeqCst),
        "lease kept while the handler ran"
    );
    assert_eq!(ledger.overlaps(), 0, "the batch never ran twice at once");
    assert_eq!(obs.count("retried"), 5);
    assert_eq!(obs.count("lease_lost"), 0);
    queue.shutdown().await.unwrap();
}
