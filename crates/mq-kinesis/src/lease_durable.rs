//! [`DurableLeaseStore`]: leases in one store, checkpoints and the epoch fence in a durable one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mq_core::backend::{CheckpointStore, StoredCheckpoint};

use crate::error::{Error, Result};
use crate::lease::{CheckpointOutcome, Lease, LeaseState, LeaseStore};

/// A [`LeaseStore`] made of two: leases, heartbeats and poison-pill counters in a fast store that
/// may lose its data (usually [`RedisLeaseStore`](crate::RedisLeaseStore) on a Redis without
/// persistence), checkpoints and the epoch fence in a durable
/// [`CheckpointStore`] (`mq_sql::PgCheckpointStore`, `mq_sql::MySqlCheckpointStore`,
/// `mq_sql::SqliteCheckpointStore`, `mq_mongo::MongoCheckpointStore`).
///
/// - **acquire**: the lease store hands out an epoch above the newest epoch the durable store has
///   seen, and the durable store records it at once ([`CheckpointStore::observe_epoch`]), so the
///   previous owner is fenced before the new one writes, and epochs never repeat even after the
///   lease store forgot everything. Should another acquirer have recorded that epoch first (two
///   wipes in a row), the lease is given back and `None` returned. The lease's checkpoint is the
///   durable one (the lease store's copy only when the durable store has none yet, which lets a
///   lease-store-only setup move to this one without re-reading its shards).
/// - **checkpoint**: written to the durable store first with the lease's epoch, and its verdict
///   is returned; the lease store's copy is updated afterwards, best effort.
/// - **state / leases**: the lease store's view, with the durable checkpoint and epoch; shards
///   known only to the durable store (after a wipe) are listed too.
/// - **force_release / set_checkpoint**: applied to both stores, raising the durable epoch so the
///   owner of the time is fenced in both.
///
/// Memberships (and so how long the leases tied to them last) live in the lease store, like
/// the leases themselves; the durable epoch fence is what keeps two owners apart when the lease
/// store loses them.
///
/// Finished flags, heartbeats and poison-pill counters live in the lease store only: after a
/// wipe, a finished shard is read again from its durable checkpoint (which finds its end at
/// once), and failure counts start again.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use mq_core::backend::MemoryCheckpointStore;
/// use mq_kinesis::{CheckpointOutcome, DurableLeaseStore, InMemoryLeaseStore, LeaseStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let checkpoints = Arc::new(MemoryCheckpointStore::new());
/// let store = DurableLeaseStore::new(Arc::new(InMemoryLeaseStore::new()), checkpoints.clone());
/// let lease = store.acquire("orders", "shard-0", "a", Duration::from_secs(30)).await?.expect("free");
/// assert_eq!(store.checkpoint(&lease, "100").await?, CheckpointOutcome::Advanced);
///
/// // the lease store loses everything; a new owner resumes from the durable checkpoint
/// let store = DurableLeaseStore::new(Arc::new(InMemoryLeaseStore::new()), checkpoints);
/// let next = store.acquire("orders", "shard-0", "b", Duration::from_secs(30)).await?.expect("free");
/// assert!(next.epoch > lease.epoch);
/// assert_eq!(next.checkpoint.as_deref(), Some("100"));
/// assert_eq!(store.checkpoint(&lease, "200").await?, CheckpointOutcome::Fenced);
/// # Ok::<(), mq_kinesis::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct DurableLeaseStore {
    leases: Arc<dyn LeaseStore>,
    checkpoints: Arc<dyn CheckpointStore>,
}

fn durable(operation: &'static str) -> impl FnOnce(mq_core::Error) -> Error {
    move |e| Error::lease(operation, e)
}

impl DurableLeaseStore {
    /// Leases in `leases`, checkpoints and the epoch fence in `checkpoints`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mq_kinesis::{DurableLeaseStore, InMemoryLeaseStore, KinesisOptions};
    ///
    /// let store = DurableLeaseStore::new(
    ///     Arc::new(InMemoryLeaseStore::new()),
    ///     Arc::new(mq_core::backend::MemoryCheckpointStore::new()),
    /// );
    /// let options = KinesisOptions::new(Arc::new(store));
    /// # let _ = options;
    /// ```
    pub fn new(leases: Arc<dyn LeaseStore>, checkpoints: Arc<dyn CheckpointStore>) -> Self {
        DurableLeaseStore {
            leases,
            checkpoints,
        }
    }

    /// The lease store.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # let store = mq_kinesis::DurableLeaseStore::new(
    /// #     Arc::new(mq_kinesis::InMemoryLeaseStore::new()),
    /// #     Arc::new(mq_core::backend::MemoryCheckpointStore::new()));
    /// let leases = store.lease_store();
    /// # let _ = leases;
    /// ```
    pub fn lease_store(&self) -> &Arc<dyn LeaseStore> {
        &self.leases
    }

    /// The durable checkpoint store.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # let store = mq_kinesis::DurableLeaseStore::new(
    /// #     Arc::new(mq_kinesis::InMemoryLeaseStore::new()),
    /// #     Arc::new(mq_core::backend::MemoryCheckpointStore::new()));
    /// let checkpoints = store.checkpoint_store();
    /// # let _ = checkpoints;
    /// ```
    pub fn checkpoint_store(&self) -> &Arc<dyn CheckpointStore> {
        &self.checkpoints
    }

    fn merge(mut state: LeaseState, stored: Option<&StoredCheckpoint>) -> LeaseState {
        if let Some(c) = stored {
            state.epoch = state.epoch.max(c.epoch);
            if c.sequence_number.is_some() {
                state.checkpoint.clone_from(&c.sequence_number);
            }
        }
        state
    }

    async fn merged_state(&self, state: LeaseState, stream: &str) -> Result<LeaseState> {
        let stored = self
            .checkpoints
            .load(stream, &state.shard)
            .await
            .map_err(durable("state"))?;
        Ok(Self::merge(state, stored.as_ref()))
    }

    /// Raises the durable epoch above `epoch` and above whatever it was: fences every owner of
    /// the time.
    async fn fence(&self, stream: &str, shard: &str, epoch: u64) -> Result<()> {
        let before = self
            .checkpoints
            .observe_epoch(stream, shard, epoch)
            .await
            .map_err(durable("fence"))?;
        if before >= epoch {
            self.checkpoints
                .observe_epoch(stream, shard, before + 1)
                .await
                .map_err(durable("fence"))?;
        }
        Ok(())
    }

    /// [`LeaseStore::acquire_as_member`], or [`LeaseStore::acquire_above`] without a
    /// `membership`: the lease store hands out an epoch above the durable one, which is recorded
    /// at once.
    async fn acquire_with(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        membership: Option<&str>,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        let newest = self
            .checkpoints
            .max_epoch(stream, shard)
            .await
            .map_err(durable("acquire"))?;
        let floor = epoch_floor.max(newest);
        let acquired = match membership {
            Some(m) => {
                self.leases
                    .acquire_as_member(stream, shard, owner, m, ttl, floor)
                    .await?
            }
            None => {
                self.leases
                    .acquire_above(stream, shard, owner, ttl, floor)
                    .await?
            }
        };
        let Some(mut lease) = acquired else {
            return Ok(None);
        };
        let before = match self
            .checkpoints
            .observe_epoch(stream, shard, lease.epoch)
            .await
        {
            Ok(before) => before,
            Err(e) => {
                self.give_back(&lease).await;
                return Err(durable("acquire")(e));
            }
        };
        if before >= lease.epoch {
            // someone recorded this epoch (or a newer one) first: the lease store lost data
            // between our read of the floor and now, or an operator raised the fence
            tracing::info!(
                shard,
                epoch = lease.epoch,
                newest = before,
                "mq-kinesis: epoch already taken in the checkpoint store; giving the lease back"
            );
            self.give_back(&lease).await;
            return Ok(None);
        }
        match self.checkpoints.load(stream, shard).await {
            Ok(stored) => {
                if let Some(seq) = stored.and_then(|c| c.sequence_number) {
                    lease.checkpoint = Some(seq);
                }
                Ok(Some(lease))
            }
            Err(e) => {
                self.give_back(&lease).await;
                Err(durable("acquire")(e))
            }
        }
    }

    async fn give_back(&self, lease: &Lease) {
        if let Err(e) = self.leases.release(lease).await {
            tracing::warn!(shard = %lease.shard, error = %e, "mq-kinesis: cannot give back a lease; it expires on its own");
        }
    }
}

#[async_trait]
impl LeaseStore for DurableLeaseStore {
    async fn acquire_above(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        self.acquire_with(stream, shard, owner, None, ttl, epoch_floor)
            .await
    }

    async fn acquire_as_member(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        membership: &str,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        self.acquire_with(stream, shard, owner, Some(membership), ttl, epoch_floor)
            .await
    }

    async fn force_release(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        let state = self.leases.force_release(stream, shard).await?;
        self.fence(stream, shard, state.epoch).await?;
        self.merged_state(state, stream).await
    }

    async fn set_checkpoint(
        &self,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> Result<LeaseState> {
        self.checkpoints
            .set_checkpoint(stream, shard, sequence_number)
            .await
            .map_err(durable("set_checkpoint"))?;
        let state = self
            .leases
            .set_checkpoint(stream, shard, sequence_number)
            .await?;
        self.merged_state(state, stream).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        self.leases.renew(lease, ttl).await
    }

    async fn checkpoint(&self, lease: &Lease, sequence_number: &str) -> Result<CheckpointOutcome> {
        let outcome = self
            .checkpoints
            .save(&lease.stream, &lease.shard, lease.epoch, sequence_number)
            .await
            .map_err(durable("checkpoint"))?;
        if outcome == CheckpointOutcome::Advanced {
            match self.leases.checkpoint(lease, sequence_number).await {
                Ok(CheckpointOutcome::Advanced | CheckpointOutcome::NotForward) => {}
                Ok(other) => {
                    tracing::debug!(shard = %lease.shard, outcome = ?other, "mq-kinesis: the lease store's copy of the checkpoint was not updated");
                }
                Err(e) => {
                    tracing::warn!(shard = %lease.shard, error = %e, "mq-kinesis: cannot copy the checkpoint to the lease store");
                }
            }
        }
        Ok(outcome)
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.leases.release(lease).await
    }

    async fn finish(&self, lease: &Lease) -> Result<bool> {
        self.leases.finish(lease).await
    }

    async fn state(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        let state = self.leases.state(stream, shard).await?;
        self.merged_state(state, stream).await
    }

    async fn leases(&self, stream: &str) -> Result<Vec<LeaseState>> {
        let mut by_shard: BTreeMap<String, LeaseState> = self
            .leases
            .leases(stream)
            .await?
            .into_iter()
            .map(|l| (l.shard.clone(), l))
            .collect();
        let stored = self
            .checkpoints
            .checkpoints(stream)
            .await
            .map_err(durable("leases"))?;
        for c in &stored {
            let state = by_shard
                .remove(&c.shard)
                .unwrap_or_else(|| LeaseState::unheld(&c.shard));
            by_shard.insert(c.shard.clone(), Self::merge(state, Some(c)));
        }
        Ok(by_shard.into_values().collect())
    }

    async fn record_failure(&self, stream: &str, shard: &str, checkpoint: &str) -> Result<u32> {
        self.leases.record_failure(stream, shard, checkpoint).await
    }

    async fn clear_failures(&self, stream: &str, shard: &str) -> Result<()> {
        self.leases.clear_failures(stream, shard).await
    }

    async fn failure_counts(&self, stream: &str, shard: &str) -> Result<BTreeMap<String, u32>> {
        self.leases.failure_counts(stream, shard).await
    }

    async fn heartbeat(&self, stream: &str, instance: &str, ttl: Duration) -> Result<()> {
        self.leases.heartbeat(stream, instance, ttl).await
    }

    async fn live_instances(&self, stream: &str) -> Result<Vec<String>> {
        self.leases.live_instances(stream).await
    }

    async fn join(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.leases.join(stream, instance, membership, ttl).await
    }

    async fn renew_membership(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.leases
            .renew_membership(stream, instance, membership, ttl)
            .await
    }

    async fn leave(&self, stream: &str, instance: &str, membership: &str) -> Result<()> {
        self.leases.leave(stream, instance, membership).await
    }

    async fn lease_version(&self, stream: &str) -> Result<Option<u64>> {
        self.leases.lease_version(stream).await
    }
}
