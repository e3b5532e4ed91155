//! Shard leases: the [`LeaseStore`] trait, its data, and sequence-number order.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

pub use mq_core::backend::{CheckpointOutcome, compare_sequence_numbers};

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

/// Where shard leases, checkpoints, poison-pill counters and instance membership live.
///
/// Implementations: [`RedisLeaseStore`](crate::RedisLeaseStore) for a fleet,
/// [`FileLeaseStore`](crate::FileLeaseStore) and [`InMemoryLeaseStore`](crate::InMemoryLeaseStore)
/// for one machine, and [`DurableLeaseStore`](crate::DurableLeaseStore), which keeps the
/// checkpoints and the epoch fence of any of them in a durable
/// [`CheckpointStore`](mq_core::backend::CheckpointStore) (SQL, MongoDB) so they survive a lease store
/// that loses its data. Every implementation passes the conformance suite in
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
    ///
    /// The same as [`acquire_above`](Self::acquire_above) with a floor of 0.
    async fn acquire(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        self.acquire_above(stream, shard, owner, ttl, 0).await
    }

    /// Like [`acquire`](Self::acquire), but the new epoch is also above `epoch_floor`: the
    /// newest epoch a durable checkpoint store has seen, so epochs never repeat even after this
    /// store lost its data.
    async fn acquire_above(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>>;

    /// Operator action: clears the owner of `shard` (held or not) and raises the epoch by one,
    /// so the owner of the time is fenced (it can no longer renew, checkpoint, release or
    /// finish) and the shard is free to be acquired. Keeps the checkpoint and the finished flag.
    /// Returns the state afterwards.
    async fn force_release(&self, stream: &str, shard: &str) -> Result<LeaseState>;

    /// Operator action: sets the checkpoint of `shard` to `sequence_number` (1 to 128 digits),
    /// forwards or backwards, clears the owner and raises the epoch by one, so the owner of the
    /// time is fenced and whoever acquires the shard next reads after the new checkpoint. Keeps
    /// the finished flag (a finished shard is never read again). Returns the state afterwards.
    async fn set_checkpoint(
        &self,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> Result<LeaseState>;

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

    /// The failure counts of `shard` by the checkpoint the failed batches started after, as
    /// [`record_failure`](Self::record_failure) counted them (empty after progress). For
    /// inspection ([`stream_status`](crate::stream_status)); a store that does not override it
    /// reports none.
    async fn failure_counts(&self, stream: &str, shard: &str) -> Result<BTreeMap<String, u32>> {
        let _ = (stream, shard);
        Ok(BTreeMap::new())
    }

    /// Records that `instance` is alive for `ttl`.
    async fn heartbeat(&self, stream: &str, instance: &str, ttl: Duration) -> Result<()>;

    /// The instances whose heartbeat has not expired, sorted.
    async fn live_instances(&self, stream: &str) -> Result<Vec<String>>;
}

pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(crate) fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}
