//! A lease store in memory whose renewals and heartbeats a test can intercept: `Hooked<H>`
//! forwards every call to an `InMemoryLeaseStore`, renewals, heartbeats and checkpoints only when
//! `H` (a [`Hooks`]) does not answer them itself.
#![allow(dead_code, unreachable_pub)]

use std::fmt::Debug;
use std::ops::Deref;
use std::time::Duration;

use mq_core::async_trait;
use mq_kinesis::{CheckpointOutcome, InMemoryLeaseStore, Lease, LeaseState, LeaseStore, Result};

/// What a test changes about a lease store: each hook answers instead of the store, or returns
/// `None` (the default) to let the store answer.
pub trait Hooks: Debug + Send + Sync + 'static {
    fn renew(&self, _lease: &Lease) -> Option<Result<bool>> {
        None
    }

    fn heartbeat(&self) -> Option<Result<()>> {
        None
    }

    fn checkpoint(&self, _lease: &Lease, _seq: &str) -> Option<Result<CheckpointOutcome>> {
        None
    }
}

/// An in-memory lease store with `hooks` in front of it; derefs to the hooks so a test reads and
/// sets their state directly.
#[derive(Debug, Default)]
pub struct Hooked<H> {
    pub inner: InMemoryLeaseStore,
    pub hooks: H,
}

impl<H> Hooked<H> {
    pub fn new(hooks: H) -> Self {
        Hooked {
            inner: InMemoryLeaseStore::new(),
            hooks,
        }
    }
}

impl<H> Deref for Hooked<H> {
    type Target = H;

    fn deref(&self) -> &H {
        &self.hooks
    }
}

#[async_trait]
impl<H: Hooks> LeaseStore for Hooked<H> {
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
        match self.hooks.renew(lease) {
            Some(answer) => answer,
            None => self.inner.renew(lease, ttl).await,
        }
    }
    async fn checkpoint(&self, lease: &Lease, seq: &str) -> Result<CheckpointOutcome> {
        match self.hooks.checkpoint(lease, seq) {
            Some(answer) => answer,
            None => self.inner.checkpoint(lease, seq).await,
        }
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
        match self.hooks.heartbeat() {
            Some(answer) => answer,
            None => self.inner.heartbeat(s, i, ttl).await,
        }
    }
    async fn live_instances(&self, s: &str) -> Result<Vec<String>> {
        self.inner.live_instances(s).await
    }
}
