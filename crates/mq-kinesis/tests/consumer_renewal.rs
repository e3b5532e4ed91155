//! Lease renewal retries with backoff before giving up; a lease that cannot be renewed is
//! lost: the handler's token is cancelled and nothing is checkpointed. Heartbeat failures are
//! counted and reported past a threshold.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/hooked.rs"]
mod hooked;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use emulator::Emulator;
use hooked::{Hooked, Hooks};
use mq_core::testkit::{DeliveryLedger, RecordingObserver, eventually, fast_options};
use mq_core::{Batch, HandlerContext, LifecycleEvent, MessageQueue, QueueName, handler_fn};
use mq_kinesis::{Error, KinesisQueue, Lease, LeaseStore, Result};

/// Fails renewals and heartbeats on demand.
#[derive(Debug, Default)]
struct Flaky {
    renew_calls: AtomicUsize,
    /// renewal call n fails unless n % fail_cycle == fail_cycle - 1 (0 = never fail)
    fail_cycle: AtomicUsize,
    renew_broken: AtomicBool,
    heartbeat_broken: AtomicBool,
}

fn broken(op: &'static str) -> Error {
    Error::LeaseStore {
        operation: op,
        source: "injected failure".into(),
    }
}

impl Hooks for Flaky {
    fn renew(&self, _lease: &Lease) -> Option<Result<bool>> {
        let n = self.renew_calls.fetch_add(1, Ordering::SeqCst);
        let cycle = self.fail_cycle.load(Ordering::SeqCst);
        (self.renew_broken.load(Ordering::SeqCst) || (cycle > 0 && n % cycle != cycle - 1))
            .then(|| Err(broken("renew")))
    }

    fn heartbeat(&self) -> Option<Result<()>> {
        self.heartbeat_broken
            .load(Ordering::SeqCst)
            .then(|| Err(broken("heartbeat")))
    }
}

async fn setup(
    stream: &str,
    store: Arc<Hooked<Flaky>>,
    obs: &Arc<RecordingObserver>,
) -> (Emulator, KinesisQueue, QueueName) {
    let emu = Emulator::with_stream(stream, 1).await;
    let queue = KinesisQueue::with_client(
        emu.client(),
        emulator::observed_options(store, "me", obs).discovery_interval(Duration::from_millis(30)),
    );
    let q = emulator::register_and_publish(&queue, stream, 10).await;
    (emu, queue, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_retries_before_giving_up() {
    let store = Arc::new(Hooked::<Flaky>::default());
    // every renewal round: two errors, then success
    store.fail_cycle.store(3, Ordering::SeqCst);
    let obs = Arc::new(RecordingObserver::default());
    let (_emu, queue, q) = setup("renew-retry", store.clone(), &obs).await;
    let ledger = Arc::new(DeliveryLedger::default());
    let handler = ledger.handler();
    let opts = fast_options().lease_duration(Duration::from_millis(900));
    let consumer = queue.consume(&q, handler, opts).await.unwrap();
    eventually(Duration::from_secs(20), "several renewal rounds", || {
        store.renew_calls.load(Ordering::SeqCst) >= 12 && ledger.distinct() == 10
    })
    .await;
    assert_eq!(obs.count("lease_lost"), 0, "retries kept the lease");
    let st = store
        .state("renew-retry", "shardId-000000000000")
        .await
        .unwrap();
    assert!(st.live && st.owner.as_deref() == Some("me"));
    consumer.stop().await;
    queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewable_lease_is_lost_and_cancels_the_handler() {
    let store = Arc::new(Hooked::<Flaky>::default());
    let obs = Arc::new(RecordingObserver::default());
    let (_emu, queue, q) = setup("renew-lost", store.clone(), &obs).await;
    let cancelled = Arc::new(AtomicBool::new(false));
    let c = cancelled.clone();
    let s2 = store.clone();
    let handler = Arc::new(handler_fn(move |_batch: Batch, ctx: HandlerContext| {
        let (c, s2) = (c.clone(), s2.clone());
        async move {
            s2.renew_broken.store(true, Ordering::SeqCst);
            ctx.cancelled().await;
            c.store(true, Ordering::SeqCst);
        }
    }));
    let opts = fast_options().lease_duration(Duration::from_millis(600));
    let consumer = queue.consume(&q, handler, opts).await.unwrap();
    eventually(Duration::from_secs(20), "lease lost", || {
        obs.count("lease_lost") >= 1
    })
    .await;
    eventually(Duration::from_secs(5), "handler cancelled", || {
        cancelled.load(Ordering::SeqCst)
    })
    .await;
    assert!(
        store.renew_calls.load(Ordering::SeqCst) >= 3,
        "3 attempts before giving up"
    );
    assert_eq!(
        obs.count("checkpoint"),
        0,
        "nothing checkpointed after the loss"
    );
    assert!(obs.events().iter().any(|e| matches!(
        e,
        LifecycleEvent::LeaseLost { reason, epoch: 1, .. } if reason.contains("renewal failed 3 times")
    )));
    consumer.stop().await;
    queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_failures_fire_an_event_past_the_threshold() {
    let store = Arc::new(Hooked::<Flaky>::default());
    store.heartbeat_broken.store(true, Ordering::SeqCst);
    let obs = Arc::new(RecordingObserver::default());
    let (_emu, queue, q) = setup("heartbeat", store.clone(), &obs).await;
    let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
    let consumer = queue.consume(&q, handler, fast_options()).await.unwrap();
    eventually(Duration::from_secs(10), "heartbeat_failure events", || {
        obs.count("heartbeat_failure") >= 2
    })
    .await;
    consumer.stop().await;
    let counts: Vec<u32> = obs
        .events()
        .into_iter()
        .filter_map(|e| match e {
            LifecycleEvent::HeartbeatFailure {
                consecutive_failures,
                instance_id,
                ..
            } => {
                assert_eq!(instance_id, "me");
                Some(consecutive_failures)
            }
            _ => None,
        })
        .collect();
    assert_eq!(counts[0], 3, "first event at the threshold");
    assert!(counts.windows(2).all(|w| w[1] == w[0] + 1));
    queue.shutdown().await.unwrap();
}
