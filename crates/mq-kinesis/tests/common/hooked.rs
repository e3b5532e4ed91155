//! A lease store in memory whose renewals and heartbeats a test can intercept: `Hooked<H>`
//! forwards every call to an `InMemoryLeaseStore`, renewals, heartbeats and checkpoints only when
//! `H` (a [`Hooks`]) does not answer them itself. Leases have their own expiry unless `H` asks
//! for memberships, whose renewals it can then leave unanswered after they reached the store.
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

    /// True to keep memberships in the store, so leases are tied to them; false (the default)
    /// makes the store one without memberships, whose leases have their own expiry.
    fn memberships(&self) -> bool {
        false
    }

    /// Asked after a membership renewal reached the store: true loses its answer (the call
    /// never returns, as when the reply is lost on the way back).
    fn lose_membership_answer(&self) -> bool {
        false
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
    // Without memberships, what a store without them does: a heartbeat, and leases with their
    // own expiry.
    async fn join(&self, s: &str, i: &str, m: &str, ttl: Duration) -> Result<()> {
        if self.hooks.memberships() {
            self.inner.join(s, i, m, ttl).await
        } else {
            self.heartbeat(s, i, ttl).await
        }
    }
    async fn renew_membership(&self, s: &str, i: &str, m: &str, ttl: Duration) -> Result<bool> {
        if !self.hooks.memberships() {
            return self.heartbeat(s, i, ttl).await.map(|()| true);
        }
        let renewed = self.inner.renew_membership(s, i, m, ttl).await;
        if self.hooks.lose_membership_answer() {
            std::future::pending::<()>().await;
        }
        renewed
    }
    async fn leave(&self, s: &str, i: &str, m: &str) -> Result<()> {
        if self.hooks.memberships() {
            self.inner.leave(s, i, m).await
        } else {
            self.heartbeat(s, i, Duration::ZERO).await
        }
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
        if self.hooks.memberships() {
            self.inner.acquire_as_member(s, sh, o, m, ttl, floor).await
        } else {
            self.inner.acquire_above(s, sh, o, ttl, floor).await
        }
    }
}
