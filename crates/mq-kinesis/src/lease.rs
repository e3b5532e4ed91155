//! Shard leases: the [`LeaseStore`] trait, its data, and sequence-number order.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;

/// A lease held on one shard: proof that `owner` may process it until `expires_at_ms`.
///
/// Every mutation is a compare-and-set on (`owner`, `epoch`). The epoch is a fencing token raised
/// on every acquisition, so a consumer whose lease was taken over can no longer renew,
/// checkpoint or release, even if it still believes it owns the shard.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The stream.
    pub stream: String,
    /// The shard id.
    pub shard: String,
    /// The instance holding it.
    pub owner: String,
    /// The fencing token of this acquisition.
    pub epoch: u64,
    /// When it ends unless renewed, in the store's clock (Unix milliseconds).
    pub expires_at_ms: u64,
    /// The last checkpointed sequence number, when there is one.
    pub checkpoint: Option<String>,
}

/// The stored state of a shard's lease, held or not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LeaseState {
    /// The shard id.
    pub shard: String,
    /// The owner, when someone holds or held the lease and did not release it.
    pub owner: Option<String>,
    /// The last epoch handed out (0 = never acquired).
    pub epoch: u64,
    /// When the current lease ends, in the store's clock (Unix ms); 0 when released.
    pub expires_at_ms: u64,
    /// True when a lease is held and not expired (by the store's clock).
    pub live: bool,
    /// The checkpoint.
    pub checkpoint: Option<String>,
    /// True once the shard was read to its end.
    pub finished: bool,
}

/// What a checkpoint write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointOutcome {
    /// The checkpoint moved forward.
    Advanced,
    /// The sequence number is not after the stored one; nothing changed.
    NotForward,
    /// The caller no longer holds the lease (owner or epoch differ); nothing changed.
    Fenced,
}

/// Where shard leases, checkpoints, poison-pill counters and instance membership live.
///
/// Implementations: [`RedisLeaseStore`](crate::RedisLeaseStore) for a fleet,
/// [`FileLeaseStore`](crate::FileLeaseStore) and [`InMemoryLeaseStore`](crate::InMemoryLeaseStore)
/// for one machine. Every implementation passes the conformance suite in
/// `mq_kinesis::testkit` (feature `testkit`).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mq_kinesis::{InMemoryLeaseStore, LeaseStore};
///
/// # fn main() -> mq_kinesis::Result<()> {
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = InMemoryLeaseStore::new();
/// let ttl = Duration::from_secs(30);
/// let lease = store.acquire("orders", "shard-0", "a", ttl).await?.expect("free");
/// assert!(store.acquire("orders", "shard-0", "b", ttl).await?.is_none());
/// assert!(store.release(&lease).await?);
/// # Ok(())
/// # })
/// # }
/// ```
#[async_trait]
pub trait LeaseStore: Send + Sync + fmt::Debug + 'static {
    /// Takes the lease of `shard` for `owner` when nobody holds a live one (an expired or
    /// released lease counts as free; a finished shard never is). Returns the lease with a new,
    /// higher epoch, or `None`. Not re-entrant: a live lease of `owner` itself also gives `None`.
    async fn acquire(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>>;

    /// Extends `lease` to `ttl` from now. False when the lease was taken over or released.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool>;

    /// Records `sequence_number` as the shard's checkpoint if `lease` is still the current one and
    /// the number is after the stored checkpoint.
    async fn checkpoint(&self, lease: &Lease, sequence_number: &str) -> Result<CheckpointOutcome>;

    /// Gives the lease up, keeping epoch and checkpoint. False when it was not held any more.
    async fn release(&self, lease: &Lease) -> Result<bool>;

    /// Marks the shard as read to its end (it is never acquired again). False when fenced.
    async fn finish(&self, lease: &Lease) -> Result<bool>;

    /// The stored state of `shard`.
    async fn state(&self, stream: &str, shard: &str) -> Result<LeaseState>;

    /// The stored state of every shard of `stream` that was ever acquired, sorted by shard id.
    async fn leases(&self, stream: &str) -> Result<Vec<LeaseState>>;

    /// Counts one more failure of the batch that starts after `checkpoint` on `shard` and returns
    /// the count (which survives restarts and is shared by every instance).
    async fn record_failure(&self, stream: &str, shard: &str, checkpoint: &str) -> Result<u32>;

    /// Forgets the failure counts of `shard` (after progress).
    async fn clear_failures(&self, stream: &str, shard: &str) -> Result<()>;

    /// Records that `instance` is alive for `ttl`.
    async fn heartbeat(&self, stream: &str, instance: &str, ttl: Duration) -> Result<()>;

    /// The instances whose heartbeat has not expired, sorted.
    async fn live_instances(&self, stream: &str) -> Result<Vec<String>>;
}

/// Orders two Kinesis sequence numbers (decimal integers of up to 128 digits): by length, then
/// lexicographically, after dropping leading zeros.
///
/// # Examples
///
/// ```
/// use std::cmp::Ordering;
/// use mq_kinesis::compare_sequence_numbers;
///
/// assert_eq!(compare_sequence_numbers("9", "10"), Ordering::Less);
/// assert_eq!(compare_sequence_numbers("49590338271490256608559692538361571095921575989136588898",
///     "49590338271490256608559692538361571095921575989136588899"), Ordering::Less);
/// ```
pub fn compare_sequence_numbers(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(crate) fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_order() {
        assert_eq!(compare_sequence_numbers("100", "99"), Ordering::Greater);
        assert_eq!(compare_sequence_numbers("0099", "99"), Ordering::Equal);
        assert_eq!(compare_sequence_numbers("123", "124"), Ordering::Less);
    }
}
