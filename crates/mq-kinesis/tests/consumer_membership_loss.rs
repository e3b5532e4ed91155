//! The lease store ends an instance's membership while a batch is in the handler (a failover
//! that lost the membership's renewals, or an operator): the shard consumer stops and the
//! handler's token is cancelled, but the lease is released only once the handler returned, so
//! no other instance can start on the shard while the batch still runs. A handler that never
//! returns does not keep the shard: its lease is released once it is stuck past its limit, even
//! when the store kept the membership alive (renewals whose answers were lost).

#[path = "common/emulator.rs"]
mod emulator;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use emulator::Emulator;
use mq_core::async_trait;
use mq_core::testkit::{RecordingObserver, eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, handler_fn};
use mq_kinesis::{
    CheckpointOutcome, InMemoryLeaseStore, KinesisQueue, Lease, LeaseState, LeaseStore, Result,
    ShardOptions,
};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_with_the_membership_is_released_after_the_handler_returns() {
    let stream = "membership-loss";
    let emu = Emulator::with_stream(stream, 1).await;
    let store = Arc::new(InMemoryLeaseStore::new());
    let obs = Arc::new(RecordingObserver::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        emulator::observed_options(store.clone(), "a", &obs),
    );
    let q = emulator::register_and_publish(&queue, stream, 5).await;

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
    let consumer = queue.consume(&q, handler, fast_options()).await.unwrap();
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
    let membership = held.membership.clone().expect("tied to the membership");

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
        let now = store.state(stream, &held.shard).await.unwrap();
        assert!(
            now.owner.as_deref() == Some("a")
                && now.epoch == held.epoch
                && now.membership == held.membership,
            "the lease changed while the handler still ran: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    finish.send_replace(true);
    // released once the handler returned, then taken again by the same instance
    let finished = Instant::now();
    loop {
        let now = store.state(stream, &held.shard).await.unwrap();
        if now.owner.is_none() || now.epoch > held.epoch {
            break;
        }
        assert!(
            finished.elapsed() < Duration::from_secs(20),
            "never released after the handler returned: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(obs.count("lease_lost") >= 1);
    consumer.stop().await;
    queue.shutdown().await.unwrap();
}

/// An in-memory lease store whose membership renewals, while `lose_answers` is set, are made but
/// never answered (the reply is lost on the way back): the store keeps the membership alive
/// while the instance sees its renewals time out and its local deadline pass.
#[derive(Debug, Default)]
struct LostAnswers {
    inner: InMemoryLeaseStore,
    lose_answers: AtomicBool,
}

#[async_trait]
impl LeaseStore for LostAnswers {
    async fn acquire_above(
        &self,
        s: &str,
        sh: &str,
        o: &str,
        ttl: Duration,
        floor: u64,
    ) -> Result<Option<Lease>> {
        self.inner.acquire_above(s, sh, o, ttl, floor).await
    }
    async fn acquire_as_member(
        &self,
        s: &str,
        sh: &str,
        o: &str,
        m: &str,
        ttl: Duration,
        floor: u64,
    ) -> Result<Option<Lease>> {
        self.inner.acquire_as_member(s, sh, o, m, ttl, floor).await
    }
    async fn force_release(&self, s: &str, sh: &str) -> Result<LeaseState> {
        self.inner.force_release(s, sh).await
    }
    async fn set_checkpoint(&self, s: &str, sh: &str, seq: &str) -> Result<LeaseState> {
        self.inner.set_checkpoint(s, sh, seq).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        self.inner.renew(lease, ttl).await
    }
    async fn checkpoint(&self, lease: &Lease, seq: &str) -> Result<CheckpointOutcome> {
        self.inner.checkpoint(lease, seq).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.inner.release(lease).await
    }
    async fn finish(&self, lease: &Lease) -> Result<bool> {
        self.inner.finish(lease).await
    }
    async fn forget_finished(&self, s: &str, sh: &str) -> Result<bool> {
        self.inner.forget_finished(s, sh).await
    }
    async fn state(&self, s: &str, sh: &str) -> Result<LeaseState> {
        self.inner.state(s, sh).await
    }
    async fn leases(&self, s: &str) -> Result<Vec<LeaseState>> {
        self.inner.leases(s).await
    }
    async fn record_failure(&self, s: &str, sh: &str, c: &str) -> Result<u32> {
        self.inner.record_failure(s, sh, c).await
    }
    async fn clear_failures(&self, s: &str, sh: &str) -> Result<()> {
        self.inner.clear_failures(s, sh).await
    }
    async fn failure_counts(&self, s: &str, sh: &str) -> Result<BTreeMap<String, u32>> {
        self.inner.failure_counts(s, sh).await
    }
    async fn heartbeat(&self, s: &str, i: &str, ttl: Duration) -> Result<()> {
        self.inner.heartbeat(s, i, ttl).await
    }
    async fn live_instances(&self, s: &str) -> Result<Vec<String>> {
        self.inner.live_instances(s).await
    }
    async fn join(&self, s: &str, i: &str, m: &str, ttl: Duration) -> Result<()> {
        self.inner.join(s, i, m, ttl).await
    }
    async fn renew_membership(&self, s: &str, i: &str, m: &str, ttl: Duration) -> Result<bool> {
        let renewed = self.inner.renew_membership(s, i, m, ttl).await;
        if self.lose_answers.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        renewed
    }
    async fn leave(&self, s: &str, i: &str, m: &str) -> Result<()> {
        self.inner.leave(s, i, m).await
    }
    async fn lease_version(&self, s: &str) -> Result<Option<u64>> {
        self.inner.lease_version(s).await
    }
}

/// How long the hung handler sleeps: longer than the test waits for the shard to be released.
const HUNG: Duration = Duration::from_secs(16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_never_returns_after_its_membership_lapsed_does_not_keep_the_shard() {
    let stream = "membership-lapse-hang";
    let emu = Emulator::with_stream(stream, 1).await;
    let store = Arc::new(LostAnswers::default());
    let obs = Arc::new(RecordingObserver::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        emulator::observed_options(store.clone(), "a", &obs)
            .shard(ShardOptions::default().stall_timeout(Duration::from_millis(500))),
    );
    let q = emulator::register_and_publish(&queue, stream, 5).await;
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
    let consumer = queue
        .consume(
            &q,
            handler,
            // the membership lapses first (within its TTL of 2 s), the handler is stuck past
            // its timeout and the stall limit after that, and the runner waits for it
            fast_options()
                .handler_timeout(Duration::from_secs(4))
                .cancel_grace(HUNG * 2),
        )
        .await
        .unwrap();
    let c = calls.clone();
    eventually(
        Duration::from_secs(20),
        "first batch in the handler",
        move || c.load(Ordering::SeqCst) > 0,
    )
    .await;
    // renewals still reach the store, but their answers are lost: the instance's local
    // deadline passes while the store keeps its membership, and so the lease, alive
    store.lose_answers.store(true, Ordering::SeqCst);
    let lapsed = Instant::now();
    let held = store
        .leases(stream)
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("the shard's lease");
    assert!(held.live && held.membership.is_some(), "{held:?}");
    loop {
        let now = store.state(stream, &held.shard).await.unwrap();
        if now.owner.is_none() {
            break;
        }
        assert!(
            now.live,
            "the store's membership must stay alive for this test: {now:?}"
        );
        assert!(
            lapsed.elapsed() < HUNG * 3 / 4,
            "the hung handler keeps the shard: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "lease released {:?} after the renewals' answers were lost",
        lapsed.elapsed()
    );
    store.lose_answers.store(false, Ordering::SeqCst);
    consumer.stop().await;
    queue.shutdown().await.unwrap();
}
