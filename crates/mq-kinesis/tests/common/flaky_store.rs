//! An in-memory lease store whose renewals and checkpoints a test can make fail or freeze: a
//! failed call errs, a frozen call never answers (it waits forever, as a lease store on a dead
//! connection may). Everything else is forwarded to an `InMemoryLeaseStore`; calls are counted.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mq_core::async_trait;
use mq_kinesis::{
    CheckpointOutcome, Error, InMemoryLeaseStore, Lease, LeaseState, LeaseStore, Result,
};

/// One kind of call: how many of the next ones fail, whether they freeze, and counts.
#[derive(Debug, Default)]
pub struct Fault {
    /// The next this many calls fail.
    pub fail_next: AtomicUsize,
    /// While set, calls never answer.
    pub frozen: AtomicBool,
    /// Calls made.
    pub calls: AtomicUsize,
    /// Calls that failed.
    pub failed: AtomicUsize,
    /// Calls that froze.
    pub froze: AtomicUsize,
}

impl Fault {
    /// Fails the next `n` calls.
    pub fn fail(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }

    async fn enter(&self, op: &'static str) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.frozen.load(Ordering::SeqCst) {
            self.froze.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(Error::InvalidOption {
                field: op,
                reason: "injected lease-store failure".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct FlakyStore {
    pub inner: InMemoryLeaseStore,
    pub renew: Fault,
    pub checkpoint: Fault,
}

#[async_trait]
impl LeaseStore for FlakyStore {
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
    async fn force_release(&self, s: &str, sh: &str) -> Result<LeaseState> {
        self.inner.force_release(s, sh).await
    }
    async fn set_checkpoint(&self, s: &str, sh: &str, seq: &str) -> Result<LeaseState> {
        self.inner.set_checkpoint(s, sh, seq).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        self.renew.enter("renew").await?;
        self.inner.renew(lease, ttl).await
    }
    async fn checkpoint(&self, lease: &Lease, seq: &str) -> Result<CheckpointOutcome> {
        self.checkpoint.enter("checkpoint").await?;
        self.inner.checkpoint(lease, seq).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.inner.release(lease).await
    }
    async fn finish(&self, lease: &Lease) -> Result<bool> {
        self.inner.finish(lease).await
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
    async fn heartbeat(&self, s: &str, i: &str, ttl: Duration) -> Result<()> {
        self.inner.heartbeat(s, i, ttl).await
    }
    async fn live_instances(&self, s: &str) -> Result<Vec<String>> {
        self.inner.live_instances(s).await
    }
}
