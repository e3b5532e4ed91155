//! [`DurableLeaseStore`]: leases in one store, checkpoints and the epoch fence in a durable one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
/// - **a lease the lease store lost**: when the lease store's epoch of a shard is behind the
///   durable one (Redis restarted empty, or a failover lost its last writes), or the lease
///   was granted by an earlier run of the lease store's server and ended without a release (a
///   failover or restart since may have lost the renewals keeping it alive:
///   [`LeaseState::expiry_unconfirmed`]), the owner the durable store knows of may still be
///   reading the shard. The first acquirer raises the durable fence at once, so that owner
///   stops before its next batch (and its next checkpoint is refused), and takes the shard only
///   after the [`recovery_wait`](Self::recovery_wait) (one membership TTL by default): the
///   batch that owner had in flight ends before the new owner's first one starts, so no shard
///   is handled by two instances at once.
/// - **before every batch** ([`LeaseStore::confirm_epoch`]): a shard consumer reads the durable
///   fence and stops when a newer epoch is recorded, so the forgotten owner of a shard that had
///   nothing to checkpoint (an idle shard) stops before handing another batch to its handler,
///   just as a busy one is refused its next checkpoint. One read of the durable store a batch.
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
/// - **finish**: the finished mark is kept in both stores (in the durable one as the checkpoint
///   that comes after every sequence number, as long as Kinesis allows), so a shard read to its
///   end is never read again, even after the lease store lost its data.
/// - **forget_finished**: the lease store forgets the shard; the durable store keeps its row
///   with the finished mark.
///
/// Heartbeats and poison-pill counters live in the lease store only: after a wipe, failure
/// counts start again.
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
/// // the lease store loses everything; a new owner resumes from the durable checkpoint (here
/// // at once; by default after a wait that lets the old owner's batch in flight end)
/// let store = DurableLeaseStore::new(Arc::new(InMemoryLeaseStore::new()), checkpoints)
///     .recovery_wait(Duration::ZERO);
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
    recovery_wait: Option<Duration>,
    /// The membership TTL this instance keeps per stream, the default recovery wait.
    membership_ttls: Arc<Mutex<HashMap<String, Duration>>>,
    /// Shards whose lease the lease store lost, by (stream, shard): when this instance raised
    /// the durable fence, and the lease store's epoch of the shard then.
    recovering: Arc<Mutex<Recovering>>,
}

/// Shards being recovered, by (stream, shard): since when, and the lease store's epoch then.
type Recovering = HashMap<(String, String), (Instant, u64)>;

/// The durable checkpoint of a finished shard: the largest sequence number there can be.
fn shard_end() -> String {
    "9".repeat(mq_core::backend::MAX_SEQUENCE_NUMBER_DIGITS)
}

fn is_shard_end(sequence_number: Option<&str>) -> bool {
    sequence_number.is_some_and(|s| {
        s.len() == mq_core::backend::MAX_SEQUENCE_NUMBER_DIGITS && s.bytes().all(|b| b == b'9')
    })
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
            recovery_wait: None,
            membership_ttls: Arc::default(),
            recovering: Arc::default(),
        }
    }

    /// How long an acquisition waits on a shard whose lease the lease store lost (its epoch
    /// there is behind the durable one) before taking it: the previous owner is fenced at the
    /// start of the wait and must have finished the batch it had in flight by its end. By
    /// default the membership TTL the instance keeps (see
    /// [`KinesisOptions::membership_ttl`](crate::KinesisOptions::membership_ttl)), or the
    /// lease duration without memberships; set it above your longest batch when batches take
    /// longer than that. Zero takes such a shard at once (the previous owner is still fenced,
    /// but its batch in flight may overlap the new owner's first).
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
    /// let ttl = Duration::from_secs(30);
    /// let store = DurableLeaseStore::new(Arc::new(InMemoryLeaseStore::new()), checkpoints.clone());
    /// let old = store.acquire("orders", "shard-0", "a", ttl).await?.expect("free");
    ///
    /// // the lease store loses everything while "a" still reads the shard
    /// let store = DurableLeaseStore::new(Arc::new(InMemoryLeaseStore::new()), checkpoints)
    ///     .recovery_wait(Duration::from_millis(50));
    /// assert!(store.acquire("orders", "shard-0", "b", ttl).await?.is_none(), "waits");
    /// assert_eq!(store.checkpoint(&old, "100").await?, CheckpointOutcome::Fenced);
    /// tokio::time::sleep(Duration::from_millis(60)).await;
    /// let new = store.acquire("orders", "shard-0", "b", ttl).await?.expect("after the wait");
    /// assert!(new.epoch > old.epoch);
    /// # Ok::<(), mq_kinesis::Error>(())
    /// # }).unwrap();
    /// ```
    #[must_use]
    pub fn recovery_wait(mut self, wait: Duration) -> Self {
        self.recovery_wait = Some(wait);
        self
    }

    /// The recovery wait for `stream`, with `ttl` the lease duration of the acquisition.
    fn wait_for(&self, stream: &str, ttl: Duration) -> Duration {
        if let Some(w) = self.recovery_wait {
            return w;
        }
        self.membership_ttls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
            .copied()
            .unwrap_or(ttl)
    }

    /// Before acquiring `shard`: true when it may be taken now. When the lease store's epoch
    /// (`lease_epoch`) is behind the durable `newest`, the lease store lost the lease of whoever
    /// holds `newest`; when the lease ended without a release and the lease store cannot vouch
    /// for its end ([`LeaseState::expiry_unconfirmed`]), it may have lost the renewals that kept
    /// it alive. Either way its holder may still be reading the shard: the first call raises
    /// the durable fence above `newest`, so that holder is refused its next checkpoint, and
    /// later calls answer true once the recovery wait has passed, as long as nobody acquired
    /// the shard in the lease store meanwhile (its epoch there did not move) and no more than
    /// another recovery wait went by (a call that comes later waits again: the lease store may
    /// have lost data once more).
    async fn recovered(
        &self,
        stream: &str,
        shard: &str,
        newest: u64,
        lease_epoch: u64,
        ttl: Duration,
    ) -> Result<bool> {
        let key = (stream.to_owned(), shard.to_owned());
        let waiting = self
            .recovering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let wait = self.wait_for(stream, ttl);
        if let Some((since, seen)) = waiting
            && seen == lease_epoch
            && since.elapsed() <= wait * 2
        {
            let done = since.elapsed() >= wait;
            if done {
                self.forget_recovery(stream, shard);
            }
            return Ok(done);
        }
        self.checkpoints
            .observe_epoch(stream, shard, newest + 1)
            .await
            .map_err(durable("acquire"))?;
        tracing::warn!(
            stream,
            shard,
            epoch = newest,
            ?wait,
            "mq-kinesis: the lease store lost this shard's lease, or the renewals that kept it; its last owner is fenced, taking the shard after the recovery wait"
        );
        if wait.is_zero() {
            return Ok(true);
        }
        self.recovering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), lease_epoch));
        Ok(false)
    }

    fn forget_recovery(&self, stream: &str, shard: &str) {
        self.recovering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(stream.to_owned(), shard.to_owned()));
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
            if is_shard_end(c.sequence_number.as_deref()) {
                state.finished = true;
            } else if c.sequence_number.is_some() {
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
        let mut newest = newest;
        if newest > 0 {
            let state = self.leases.state(stream, shard).await?;
            if state.finished || state.live {
                self.forget_recovery(stream, shard);
                return Ok(None);
            }
            if state.epoch < newest || state.expiry_unconfirmed {
                if !self
                    .recovered(stream, shard, newest, state.epoch, ttl)
                    .await?
                {
                    return Ok(None);
                }
                // the fence was raised: the new epoch goes above it
                newest = self
                    .checkpoints
                    .max_epoch(stream, shard)
                    .await
                    .map_err(durable("acquire"))?;
            } else {
                self.forget_recovery(stream, shard);
            }
        }
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
            Ok(stored) => match stored.and_then(|c| c.sequence_number) {
                Some(seq) if is_shard_end(Some(&seq)) => {
                    // finished before the lease store lost its data: mark it there again
                    if let Err(e) = self.leases.finish(&lease).await {
                        tracing::warn!(shard, error = %e, "mq-kinesis: cannot mark a finished shard in the lease store");
                        self.give_back(&lease).await;
                    }
                    Ok(None)
                }
                Some(seq) => {
                    lease.checkpoint = Some(seq);
                    Ok(Some(lease))
                }
                None => Ok(Some(lease)),
            },
            Err(e) => {
                self.give_back(&lease).await;
                Err(durable("acquire")(e))
            }
        }
    }

    fn remember_membership_ttl(&self, stream: &str, ttl: Duration) {
        self.membership_ttls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream.to_owned(), ttl);
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

    async fn confirm_epoch(&self, lease: &Lease) -> Result<bool> {
        let newest = self
            .checkpoints
            .max_epoch(&lease.stream, &lease.shard)
            .await
            .map_err(durable("confirm_epoch"))?;
        if newest > lease.epoch {
            tracing::warn!(
                shard = %lease.shard,
                epoch = lease.epoch,
                newest,
                "mq-kinesis: a newer epoch of this shard is recorded in the checkpoint store; the lease is lost"
            );
            return Ok(false);
        }
        Ok(true)
    }

    async fn finish(&self, lease: &Lease) -> Result<bool> {
        if !self.leases.finish(lease).await? {
            // fenced, unless the lease store lost the lease (its epoch is behind): then the
            // durable fence decides
            let state = self.leases.state(&lease.stream, &lease.shard).await?;
            if state.epoch >= lease.epoch {
                return Ok(false);
            }
        }
        let outcome = self
            .checkpoints
            .save(&lease.stream, &lease.shard, lease.epoch, &shard_end())
            .await
            .map_err(durable("finish"))?;
        Ok(outcome != CheckpointOutcome::Fenced)
    }

    async fn forget_finished(&self, stream: &str, shard: &str) -> Result<bool> {
        self.leases.forget_finished(stream, shard).await
    }

    async fn lead_listing(&self, stream: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.leases.lead_listing(stream, holder, ttl).await
    }

    async fn publish_listing(&self, stream: &str, listing: &str) -> Result<()> {
        self.leases.publish_listing(stream, listing).await
    }

    async fn published_listing(&self, stream: &str) -> Result<Option<(String, Duration)>> {
        self.leases.published_listing(stream).await
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
        self.remember_membership_ttl(stream, ttl);
        self.leases.join(stream, instance, membership, ttl).await
    }

    async fn renew_membership(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.remember_membership_ttl(stream, ttl);
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

    async fn check_stream(&self, stream: &str) -> Result<()> {
        self.leases.check_stream(stream).await
    }
}
