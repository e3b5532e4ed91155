//! A stale owner (its lease expired and was taken over while its handler ran) cannot checkpoint:
//! the fence refuses the write, `lease_lost` fires and the old owner stops.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/hooked.rs"]
mod hooked;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use emulator::Emulator;
use hooked::{Hooked, Hooks};
use mq_core::testkit::{DeliveryLedger, RecordingObserver, eventually, fast_options, wait_until};
use mq_core::{Batch, HandlerContext, MessageQueue, QueueName, handler_fn};
use mq_kinesis::{KinesisQueue, Lease, LeaseStore, Result};

/// Pretends to renew the leases of `owner` without doing it, so they expire under its feet.
#[derive(Debug)]
struct FakeRenewal {
    owner: &'static str,
}

impl Hooks for FakeRenewal {
    fn renew(&self, lease: &Lease) -> Option<Result<bool>> {
        (lease.owner == self.owner).then_some(Ok(true))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_cannot_checkpoint() {
    let stream = "fencing";
    let shard = "shardId-000000000000";
    let emu = Emulator::with_stream(stream, 1).await;
    let store: Arc<dyn LeaseStore> = Arc::new(Hooked::new(FakeRenewal { owner: "a" }));
    let q = QueueName::new(stream).unwrap();
    let (obs_a, obs_b) = (
        Arc::new(RecordingObserver::default()),
        Arc::new(RecordingObserver::default()),
    );
    let a = KinesisQueue::with_client(
        emu.client(),
        emulator::observed_options(store.clone(), "a", &obs_a),
    );
    a.register(&q).await.unwrap();
    let msgs = emulator::numbered(20);
    emulator::publish_all(&a, &q, msgs).await;

    let a_in_handler = Arc::new(AtomicBool::new(false));
    let b_owns = Arc::new(AtomicBool::new(false));
    let a_batches = Arc::new(DeliveryLedger::default());
    let (inh, owns, ab) = (a_in_handler.clone(), b_owns.clone(), a_batches.clone());
    let handler_a = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let (inh, owns, ab) = (inh.clone(), owns.clone(), ab.clone());
        async move {
            for m in batch.iter() {
                ab.begin(m.id.as_str());
            }
            inh.store(true, Ordering::SeqCst);
            while !owns.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }));
    let opts = fast_options().lease_duration(Duration::from_millis(500));
    let consumer_a = a.consume(&q, handler_a, opts.clone()).await.unwrap();
    eventually(Duration::from_secs(10), "a handles its first batch", || {
        a_in_handler.load(Ordering::SeqCst)
    })
    .await;

    let ledger_b = Arc::new(DeliveryLedger::default());
    let a_lost = Arc::new(AtomicBool::new(false));
    let (lb, lost) = (ledger_b.clone(), a_lost.clone());
    let handler_b = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let (lb, lost) = (lb.clone(), lost.clone());
        async move {
            while !lost.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            for m in batch.iter() {
                lb.begin(m.id.as_str());
                lb.end(m.id.as_str());
            }
        }
    }));
    let b = KinesisQueue::with_client(
        emu.client(),
        emulator::observed_options(store.clone(), "b", &obs_b),
    );
    b.register(&q).await.unwrap();
    let consumer_b = b.consume(&q, handler_b, opts).await.unwrap();
    wait_until(Duration::from_secs(10), "b takes over", || async {
        let st = store.state(stream, shard).await.unwrap();
        st.owner.as_deref() == Some("b")
    })
    .await;
    b_owns.store(true, Ordering::SeqCst);
    // a's handler returns now; its checkpoint must be refused
    eventually(Duration::from_secs(10), "a reports lease_lost", || {
        obs_a.count("lease_lost") == 1
    })
    .await;
    assert_eq!(
        store.state(stream, shard).await.unwrap().checkpoint,
        None,
        "the stale owner's checkpoint was not written"
    );
    a_lost.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(20), "b delivers all 20", || {
        ledger_b.distinct() == 20
    })
    .await;
    consumer_b.stop().await;
    consumer_a.stop().await;
    assert!(a_batches.distinct() > 0 && a_batches.distinct() <= 20);
    assert_eq!(obs_a.count("checkpoint"), 0);
    assert!(obs_b.count("checkpoint") >= 1);
    assert_eq!(obs_b.count("lease_lost"), 0);
    assert!(
        store
            .state(stream, shard)
            .await
            .unwrap()
            .checkpoint
            .is_some()
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
