//! The lease store ends an instance's membership while a batch is in the handler (a failover
//! that lost the membership's renewals, or an operator): the shard consumer stops and the
//! handler's token is cancelled, but the lease is released only once the handler returned, so
//! no other instance can start on the shard while the batch still runs. A handler that never
//! returns does not keep the shard: its lease is released once it is stuck past its limit, even
//! when the store kept the membership alive (renewals whose answers were lost).

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/hooked.rs"]
mod hooked;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use emulator::Emulator;
use hooked::{Hooked, Hooks};
use mq_core::testkit::{RecordingObserver, eventually, fast_options, wait_until};
use mq_core::{
    Batch, ConsumerHandle, ConsumerOptions, Handler, HandlerContext, MessageQueue, handler_fn,
};
use mq_kinesis::{InMemoryLeaseStore, KinesisQueue, LeaseState, LeaseStore, ShardOptions};
use tokio::sync::watch;

/// A consumer whose first batch is in its handler.
struct Running {
    _emu: Emulator,
    queue: KinesisQueue,
    consumer: ConsumerHandle,
    /// The shard's lease when the first batch was in the handler.
    held: LeaseState,
    obs: Arc<RecordingObserver>,
}

/// Instance "a" reads a one-shard stream of five records over `store` with `handler`, which
/// counts its calls in `calls`, until the first batch is in the handler.
async fn first_batch_in_the_handler(
    stream: &str,
    store: Arc<dyn LeaseStore>,
    shard: ShardOptions,
    handler: Arc<dyn Handler>,
    calls: &Arc<AtomicUsize>,
    options: ConsumerOptions,
) -> Running {
    let emu = Emulator::with_stream(stream, 1).await;
    let obs = Arc::new(RecordingObserver::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        emulator::observed_options(store.clone(), "a", &obs).shard(shard),
    );
    let q = emulator::register_and_publish(&queue, stream, 5).await;
    let consumer = queue.consume(&q, handler, options).await.unwrap();
    let c = calls.clone();
    eventually(
        Duration::from_secs(20),
        "first batch in the handler",
        move || c.load(Ordering::SeqCst) > 0,
    )
    .await;
    let held = store
        .leases(stream)
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("the shard's lease");
    Running {
        _emu: emu,
        queue,
        consumer,
        held,
        obs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_with_the_membership_is_released_after_the_handler_returns() {
    let stream = "membership-loss";
    let store = Arc::new(InMemoryLeaseStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicBool::new(false));
    let (finish, finishing) = watch::channel(false);
    let handler = {
        let (calls, cancelled) = (calls.clone(), cancelled.clone());
        Arc::new(handler_fn(move |_batch: Batch, ctx: HandlerContext| {
            let (calls, cancelled, mut finishing) =
                (calls.clone(), cancelled.clone(), finishing.clone());
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                    return Ok(());
                }
                // the first batch: told to stop, it still finishes what it was writing
                let _ = tokio::time::timeout(Duration::from_secs(30), ctx.cancelled()).await;
                cancelled.store(true, Ordering::SeqCst);
                let _ =
                    tokio::time::timeout(Duration::from_secs(30), finishing.wait_for(|f| *f)).await;
                Ok::<(), std::io::Error>(())
            }
        }))
    };
    let run = first_batch_in_the_handler(
        stream,
        store.clone(),
        ShardOptions::default(),
        handler,
        &calls,
        fast_options(),
    )
    .await;
    let membership = run.held.membership.clone().expect("tied to the membership");

    // the store ends the membership: the instance notices at its next renewal
    store.leave(stream, "a", &membership).await.unwrap();
    let c = cancelled.clone();
    eventually(
        Duration::from_secs(20),
        "handler's token cancelled",
        move || c.load(Ordering::SeqCst),
    )
    .await;
    // the consumer gave the lease up, but its handler still runs: the lease stays as it was
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_millis(500) {
        let now = store.state(stream, &run.held.shard).await.unwrap();
        assert!(
            now.owner.as_deref() == Some("a")
                && now.epoch == run.held.epoch
                && now.membership == run.held.membership,
            "the lease changed while the handler still ran: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    finish.send_replace(true);
    let (s, shard, epoch) = (store.clone(), run.held.shard.clone(), run.held.epoch);
    wait_until(
        Duration::from_secs(20),
        "released once the handler returned, then taken again by the same instance",
        move || {
            let (s, shard) = (s.clone(), shard.clone());
            async move {
                let now = s.state(stream, &shard).await.unwrap();
                now.owner.is_none() || now.epoch > epoch
            }
        },
    )
    .await;
    assert!(run.obs.count("lease_lost") >= 1);
    run.consumer.stop().await;
    run.queue.shutdown().await.unwrap();
}

/// Membership renewals that, while `lose_answers` is set, are made but never answered: the
/// store keeps the membership alive while the instance sees its renewals time out and its
/// local deadline pass.
#[derive(Debug, Default)]
struct LostAnswers {
    lose_answers: AtomicBool,
}

impl Hooks for LostAnswers {
    fn memberships(&self) -> bool {
        true
    }

    fn lose_membership_answer(&self) -> bool {
        self.lose_answers.load(Ordering::SeqCst)
    }
}

/// How long the hung handler sleeps: longer than the test waits for the shard to be released.
const HUNG: Duration = Duration::from_secs(16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_never_returns_after_its_membership_lapsed_does_not_keep_the_shard() {
    let stream = "membership-lapse-hang";
    let store = Arc::new(Hooked::new(LostAnswers::default()));
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        Arc::new(handler_fn(move |_batch: Batch, _ctx: HandlerContext| {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    // hangs, deaf to its token, far past its timeout
                    tokio::time::sleep(HUNG).await;
                }
                Ok::<(), std::io::Error>(())
            }
        }))
    };
    // the membership lapses first (within its TTL of 2 s), the handler is stuck past its
    // timeout and the stall limit after that, and the runner waits for it
    let run = first_batch_in_the_handler(
        stream,
        store.clone(),
        ShardOptions::default().stall_timeout(Duration::from_millis(500)),
        handler,
        &calls,
        fast_options()
            .handler_timeout(Duration::from_secs(4))
            .cancel_grace(HUNG * 2),
    )
    .await;
    // renewals still reach the store, but their answers are lost: the instance's local
    // deadline passes while the store keeps its membership, and so the lease, alive
    store.lose_answers.store(true, Ordering::SeqCst);
    let lapsed = Instant::now();
    let held = &run.held;
    assert!(held.live && held.membership.is_some(), "{held:?}");
    let (s, shard) = (store.clone(), held.shard.clone());
    wait_until(
        HUNG * 3 / 4,
        "the hung handler gives the shard up",
        move || {
            let (s, shard) = (s.clone(), shard.clone());
            async move {
                let now = s.state(stream, &shard).await.unwrap();
                assert!(
                    now.owner.is_none() || now.live,
                    "the store's membership must stay alive for this test: {now:?}"
                );
                now.owner.is_none()
            }
        },
    )
    .await;
    println!(
        "lease released {:?} after the renewals' answers were lost",
        lapsed.elapsed()
    );
    store.lose_answers.store(false, Ordering::SeqCst);
    run.consumer.stop().await;
    run.queue.shutdown().await.unwrap();
}
