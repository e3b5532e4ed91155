//! Shard leases: the [`LeaseStore`] trait, its data, and sequence-number order.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

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
    /// The membership the lease is tied to, for a lease taken with
    /// [`LeaseStore::acquire_as_member`]: such a lease stays valid exactly as long as that
    /// membership does, and is never renewed on its own. `None` for a lease with its own expiry.
    pub membership: Option<String>,
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
    /// The membership the lease is tied to, when it was taken with
    /// [`LeaseStore::acquire_as_member`] and not released.
    pub membership: Option<String>,
    /// True when the lease is not live but the store cannot vouch that its owner stopped using
    /// it: the lease was granted by an earlier run of the store's server (it restarted, or
    /// failed over to a replica since), so a renewal of the lease or of its membership may have
    /// been lost, and the owner may still be reading the shard.
    /// Always false in stores that never lose a write.
    /// [`DurableLeaseStore`](crate::DurableLeaseStore) takes such a shard only after its
    /// recovery wait.
    pub expiry_unconfirmed: bool,
}

impl LeaseState {
    /// The state of a shard nobody ever acquired.
    pub(crate) fn unheld(shard: &str) -> Self {
        LeaseState {
            shard: shard.to_owned(),
            ..LeaseState::default()
        }
    }
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

    /// Extends `lease` to `ttl` from now. False when the lease was taken over or released. A
    /// lease tied to a membership is not extended (its membership is): the answer is true while
    /// it is the current lease and its membership lives.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool>;

    /// Records `sequence_number` as the shard's checkpoint if `lease` is still the current one and
    /// the number is after the stored checkpoint.
    async fn checkpoint(&self, lease: &Lease, sequence_number: &str) -> Result<CheckpointOutcome>;

    /// Gives the lease up, keeping epoch and checkpoint. False when it was not held any more.
    async fn release(&self, lease: &Lease) -> Result<bool>;

    /// False once a newer epoch of `lease`'s shard is known to the store's epoch fence: another
    /// instance took the shard, or an operator fenced it. A shard consumer asks before every
    /// batch it hands to its handler, so an owner that was overtaken stops before handling
    /// anything more, even on a shard it has no checkpoint to write for.
    ///
    /// A store that does not override it answers true: where the leases themselves are the
    /// fence, [`renew`](Self::renew) and [`checkpoint`](Self::checkpoint) refuse a lease that was
    /// taken over. [`DurableLeaseStore`](crate::DurableLeaseStore) reads its durable fence,
    /// which also moves when its lease store lost the lease.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use mq_core::backend::MemoryCheckpointStore;
    /// use mq_kinesis::{DurableLeaseStore, InMemoryLeaseStore, LeaseStore};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let checkpoints = Arc::new(MemoryCheckpointStore::new());
    /// let ttl = Duration::from_secs(30);
    /// let store = DurableLeaseStore::new(Arc::new(InMemoryLeaseStore::new()), checkpoints.clone());
    /// let old = store.acquire("orders", "shard-0", "a", ttl).await?.expect("free");
    /// assert!(store.confirm_epoch(&old).await?);
    ///
    /// // the lease store loses everything and "b" takes the shard: "a" learns it before its
    /// // next batch, even without a checkpoint to write
    /// let store = DurableLeaseStore::new(Arc::new(InMemoryLeaseStore::new()), checkpoints)
    ///     .recovery_wait(Duration::ZERO);
    /// let new = store.acquire("orders", "shard-0", "b", ttl).await?.expect("free");
    /// assert!(!store.confirm_epoch(&old).await?);
    /// assert!(store.confirm_epoch(&new).await?);
    /// # Ok::<(), mq_kinesis::Error>(())
    /// # }).unwrap();
    /// ```
    async fn confirm_epoch(&self, lease: &Lease) -> Result<bool> {
        let _ = lease;
        Ok(true)
    }

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

    /// The instances whose heartbeat or membership has not expired, sorted.
    async fn live_instances(&self, stream: &str) -> Result<Vec<String>>;

    /// Starts membership `membership` (a name unique to this run of `instance`) in `stream` for
    /// `ttl`, and lists `instance` among the [`live_instances`](Self::live_instances) for as
    /// long as it lasts. Leases taken with [`acquire_as_member`](Self::acquire_as_member) under
    /// this membership are valid until it ends or expires: keeping one record alive keeps every
    /// lease of the instance, whatever their number.
    ///
    /// A store that does not override the membership methods falls back to a
    /// [`heartbeat`](Self::heartbeat) and to leases with their own expiry.
    async fn join(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<()> {
        let _ = membership;
        self.heartbeat(stream, instance, ttl).await
    }

    /// Extends `membership` to `ttl` from now (and the listing of `instance` with it). False
    /// when it had already expired or ended: its leases are then free for others, and the
    /// instance must [`join`](Self::join) again under a new name.
    async fn renew_membership(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let _ = membership;
        self.heartbeat(stream, instance, ttl).await?;
        Ok(true)
    }

    /// Ends `membership` at once: its leases are free and `instance` is no longer listed.
    async fn leave(&self, stream: &str, instance: &str, membership: &str) -> Result<()> {
        let _ = membership;
        self.heartbeat(stream, instance, Duration::ZERO).await
    }

    /// A number that changes whenever a lease of `stream` changes hands (acquired, released,
    /// finished, overridden) or an instance joins or leaves, so a worker reads every lease only
    /// when it changed; the expiry of a membership does not change it (the members do). `None`
    /// when the store keeps no such number: the worker then reads the leases on a timer.
    async fn lease_version(&self, stream: &str) -> Result<Option<u64>> {
        let _ = stream;
        Ok(None)
    }

    /// Checks that this store, as configured, can serve `stream` alongside the rest of the
    /// fleet, so a misconfigured instance fails when its consumer starts instead of logging
    /// and taking nothing. [`KinesisQueue`](crate::KinesisQueue) calls it from `consume` and
    /// refuses to start on an [`Error::InvalidOption`](crate::Error::InvalidOption); any other
    /// error (the store is unreachable) is logged and the consumer starts, waiting for the
    /// store as it always does.
    ///
    /// [`RedisLeaseStore`](crate::RedisLeaseStore) checks the stream's recorded slot-bucket
    /// layout. A store that does not override it has nothing to check.
    ///
    /// # Examples
    ///
    /// ```
    /// use mq_kinesis::{InMemoryLeaseStore, LeaseStore};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// InMemoryLeaseStore::new().check_stream("orders").await?;
    /// # Ok::<(), mq_kinesis::Error>(())
    /// # }).unwrap();
    /// ```
    async fn check_stream(&self, stream: &str) -> Result<()> {
        let _ = stream;
        Ok(())
    }

    /// Forgets `shard` once it is finished: its lease, its failure counts and its entry in the
    /// list of [`leases`](Self::leases), so a stream that reshards often does not keep a record
    /// of every shard it ever had. True when it was finished and is forgotten now; an
    /// unfinished shard is left as it is. The worker calls it once every child of the shard has
    /// a lease: a shard whose child was started counts as finished from then on.
    ///
    /// A store that does not override it keeps finished shards.
    async fn forget_finished(&self, stream: &str, shard: &str) -> Result<bool> {
        let _ = (stream, shard);
        Ok(false)
    }

    /// Takes or keeps the lead of `stream`'s shard listing for `holder` (a membership name)
    /// for `ttl`: true when `holder` leads now. The leader lists the shards and
    /// [publishes](Self::publish_listing) the listing; the other instances read it
    /// ([`published_listing`](Self::published_listing)) instead of calling `ListShards`
    /// themselves, so a fleet lists a stream about as often as one instance does. When the
    /// leader stops renewing, another instance leads once `ttl` has passed.
    ///
    /// A store that does not override it answers true for every holder: every instance lists
    /// the shards itself.
    async fn lead_listing(&self, stream: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let _ = (stream, holder, ttl);
        Ok(true)
    }

    /// Publishes `listing` (the leader's shard listing, in a form only the workers read) as the
    /// current listing of `stream`.
    async fn publish_listing(&self, stream: &str, listing: &str) -> Result<()> {
        let _ = (stream, listing);
        Ok(())
    }

    /// The shard listing of `stream` last [published](Self::publish_listing), and how long ago
    /// it was published (by the store's clock); `None` when there is none.
    async fn published_listing(&self, stream: &str) -> Result<Option<(String, Duration)>> {
        let _ = stream;
        Ok(None)
    }

    /// Like [`acquire_above`](Self::acquire_above), but the lease is tied to `membership` (see
    /// [`join`](Self::join)): it is valid while the membership lives and free as soon as it
    /// expires, and [`renew`](Self::renew) only confirms it. `ttl` is used by a store without
    /// memberships, whose lease then has its own expiry ([`Lease::membership`] is `None`).
    async fn acquire_as_member(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        membership: &str,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        let _ = membership;
        self.acquire_above(stream, shard, owner, ttl, epoch_floor)
            .await
    }
}

/// The checkpoint an operator's [`LeaseStore::set_checkpoint`] stores: `sequence_number`
/// checked (1 to 128 digits) and without leading zeros.
pub(crate) fn operator_checkpoint(sequence_number: &str) -> Result<String> {
    mq_core::backend::normalize_sequence_number(sequence_number)
        .map_err(|e| crate::error::Error::lease("set_checkpoint", e))
}

pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(crate) fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// One shard's lease as the stores of one machine ([`InMemoryLeaseStore`](crate::InMemoryLeaseStore),
/// [`FileLeaseStore`](crate::FileLeaseStore)) keep it, with the rules of every change, so both
/// stores decide alike. (The Redis store applies the same rules in its Lua scripts.)
///
/// The serialised form is the file store's on-disk format: keep the field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    #[serde(default)]
    pub(crate) shard: String,
    pub(crate) owner: Option<String>,
    pub(crate) epoch: u64,
    pub(crate) expires_at_ms: u64,
    pub(crate) checkpoint: Option<String>,
    pub(crate) finished: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) membership: Option<String>,
}

/// The memberships of one stream in the stores of one machine: membership name → expiry (Unix
/// ms).
pub(crate) type Memberships = BTreeMap<String, u64>;

impl LeaseRecord {
    /// The record of a shard nobody ever acquired.
    pub(crate) fn unheld(shard: &str) -> Self {
        LeaseRecord {
            shard: shard.to_owned(),
            ..LeaseRecord::default()
        }
    }

    /// True when the lease changed hands from `before` (acquired, released, finished or
    /// overridden), which changes [`LeaseStore::lease_version`].
    pub(crate) fn changed_hands(&self, before: &LeaseRecord) -> bool {
        self.epoch != before.epoch || self.owner != before.owner || self.finished != before.finished
    }

    /// Held and not expired: by its membership when it has one, else by its own expiry.
    fn live(&self, now: u64, memberships: &Memberships) -> bool {
        self.owner.is_some()
            && match &self.membership {
                Some(m) => memberships.get(m).is_some_and(|exp| *exp > now),
                None => self.expires_at_ms > now,
            }
    }

    /// True when `lease` is the current one: same owner, same epoch.
    fn holds(&self, lease: &Lease) -> bool {
        self.owner.as_deref() == Some(lease.owner.as_str()) && self.epoch == lease.epoch
    }

    /// [`LeaseStore::acquire_as_member`] (or [`LeaseStore::acquire_above`] without a
    /// `membership`) on this record at `now` (Unix ms, the store's clock): the new lease, or
    /// `None` when the shard is finished or its lease is live.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn acquire(
        &mut self,
        stream: &str,
        owner: &str,
        membership: Option<&str>,
        ttl: Duration,
        epoch_floor: u64,
        memberships: &Memberships,
        now: u64,
    ) -> Option<Lease> {
        if self.finished || self.live(now, memberships) {
            return None;
        }
        if membership.is_some_and(|m| memberships.get(m).is_none_or(|exp| *exp <= now)) {
            // a lease tied to a membership that has ended would be dead on arrival
            return None;
        }
        self.epoch = self.epoch.max(epoch_floor) + 1;
        self.owner = Some(owner.to_owned());
        self.membership = membership.map(str::to_owned);
        self.expires_at_ms = match membership {
            Some(m) => memberships.get(m).copied().unwrap_or(0),
            None => now + ttl_ms(ttl),
        };
        Some(Lease {
            stream: stream.to_owned(),
            shard: self.shard.clone(),
            owner: owner.to_owned(),
            epoch: self.epoch,
            expires_at_ms: self.expires_at_ms,
            checkpoint: self.checkpoint.clone(),
            membership: self.membership.clone(),
        })
    }

    /// [`LeaseStore::force_release`], and [`LeaseStore::set_checkpoint`] when `checkpoint` is
    /// given (already normalised): clears the owner and raises the epoch, fencing the owner of
    /// the time.
    pub(crate) fn override_owner(&mut self, checkpoint: Option<String>) {
        self.epoch += 1;
        self.owner = None;
        self.membership = None;
        self.expires_at_ms = 0;
        if checkpoint.is_some() {
            self.checkpoint = checkpoint;
        }
    }

    /// [`LeaseStore::renew`] on this record at `now` (Unix ms, the store's clock): a lease tied
    /// to a membership is only confirmed.
    pub(crate) fn renew(
        &mut self,
        lease: &Lease,
        ttl: Duration,
        memberships: &Memberships,
        now: u64,
    ) -> bool {
        if !self.holds(lease) {
            return false;
        }
        if self.membership.is_some() {
            return self.live(now, memberships);
        }
        self.expires_at_ms = now + ttl_ms(ttl);
        true
    }

    /// [`LeaseStore::checkpoint`] on this record: only the holder, only forwards.
    pub(crate) fn checkpoint(&mut self, lease: &Lease, sequence_number: &str) -> CheckpointOutcome {
        if !self.holds(lease) {
            return CheckpointOutcome::Fenced;
        }
        let forward = self
            .checkpoint
            .as_deref()
            .is_none_or(|cur| compare_sequence_numbers(sequence_number, cur) == Ordering::Greater);
        if !forward {
            return CheckpointOutcome::NotForward;
        }
        self.checkpoint = Some(sequence_number.to_owned());
        CheckpointOutcome::Advanced
    }

    /// [`LeaseStore::release`] on this record: keeps epoch and checkpoint.
    pub(crate) fn release(&mut self, lease: &Lease) -> bool {
        let held = self.holds(lease);
        if held {
            self.owner = None;
            self.membership = None;
            self.expires_at_ms = 0;
        }
        held
    }

    /// [`LeaseStore::finish`] on this record.
    pub(crate) fn finish(&mut self, lease: &Lease) -> bool {
        let held = self.holds(lease);
        if held {
            self.finished = true;
        }
        held
    }

    /// The record as [`LeaseStore::state`] reports it at `now` (Unix ms); a lease tied to a
    /// membership ends when the membership does.
    pub(crate) fn state(&self, now: u64, memberships: &Memberships) -> LeaseState {
        let expires_at_ms = match &self.membership {
            Some(m) if self.owner.is_some() => memberships.get(m).copied().unwrap_or(0),
            _ => self.expires_at_ms,
        };
        LeaseState {
            shard: self.shard.clone(),
            owner: self.owner.clone(),
            epoch: self.epoch,
            expires_at_ms,
            live: self.live(now, memberships),
            checkpoint: self.checkpoint.clone(),
            finished: self.finished,
            membership: self.membership.clone(),
            expiry_unconfirmed: false,
        }
    }
}

/// [`LeaseStore::heartbeat`] on a map of instances to their expiry (Unix ms): drops the expired
/// ones, so the map does not grow with every instance that ever ran.
pub(crate) fn heartbeat_member(members: &mut BTreeMap<String, u64>, instance: &str, ttl: Duration) {
    let now = now_ms();
    members.retain(|_, exp| *exp > now);
    members.insert(instance.to_owned(), now + ttl_ms(ttl));
}

/// [`LeaseStore::join`] (`renew` false) or [`LeaseStore::renew_membership`] (`renew` true) on
/// the memberships and the members of a stream: false when renewing one that expired. Drops
/// expired memberships.
pub(crate) fn keep_membership(
    memberships: &mut Memberships,
    members: &mut BTreeMap<String, u64>,
    instance: &str,
    membership: &str,
    ttl: Duration,
    renew: bool,
) -> bool {
    let now = now_ms();
    let alive = memberships.get(membership).is_some_and(|exp| *exp > now);
    memberships.retain(|_, exp| *exp > now);
    if renew && !alive {
        return false;
    }
    memberships.insert(membership.to_owned(), now + ttl_ms(ttl));
    heartbeat_member(members, instance, ttl);
    true
}

/// [`LeaseStore::leave`] on the memberships and the members of a stream.
pub(crate) fn end_membership(
    memberships: &mut Memberships,
    members: &mut BTreeMap<String, u64>,
    instance: &str,
    membership: &str,
) {
    memberships.remove(membership);
    members.remove(instance);
}

/// [`LeaseStore::live_instances`] of a map of instances to their expiry (Unix ms), sorted.
pub(crate) fn live_members(members: &BTreeMap<String, u64>) -> Vec<String> {
    let now = now_ms();
    members
        .iter()
        .filter(|(_, exp)| **exp > now)
        .map(|(k, _)| k.clone())
        .collect()
}

/// This instance's membership in one stream, as its worker keeps it: the name, and a local
/// deadline before which the membership cannot have expired in the store.
///
/// The deadline is counted from the moment a renewal call was *sent* (the store counts its TTL
/// from when it ran the call, later), minus a margin, so a shard consumer that stops at the
/// deadline has stopped before the store can hand its shard to anyone else.
#[derive(Debug)]
pub(crate) struct LocalMembership {
    name: String,
    base: std::time::Instant,
    /// ms since `base` + 1 of the deadline; 0 until the store first confirmed the membership
    deadline: std::sync::atomic::AtomicU64,
    /// cancelled once the store said the membership is gone
    gone: tokio_util::sync::CancellationToken,
}

impl LocalMembership {
    /// A new membership of `instance`, not yet confirmed by the store.
    pub(crate) fn new(instance: &str) -> Self {
        LocalMembership {
            name: format!(
                "{instance}.{}",
                ulid::Ulid::new().to_string().to_lowercase()
            ),
            base: std::time::Instant::now(),
            deadline: std::sync::atomic::AtomicU64::new(0),
            gone: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// The store said the membership is gone (it expired, or the store lost its data): the
    /// deadline is now, and [`gone`](Self::gone) is cancelled.
    pub(crate) fn expire(&self) {
        self.deadline.store(1, std::sync::atomic::Ordering::SeqCst);
        self.gone.cancel();
    }

    /// Cancelled once the store said the membership is gone.
    pub(crate) fn gone(&self) -> &tokio_util::sync::CancellationToken {
        &self.gone
    }

    /// The name the store knows it by.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The safety margin kept before the store's expiry: a quarter of the TTL.
    pub(crate) fn margin(ttl: Duration) -> Duration {
        ttl / 4
    }

    /// The store confirmed the membership for `ttl` with a call sent at `sent`.
    pub(crate) fn confirmed(&self, sent: std::time::Instant, ttl: Duration) {
        let at = sent.saturating_duration_since(self.base) + ttl - Self::margin(ttl);
        let at = u64::try_from(at.as_millis()).unwrap_or(u64::MAX - 1) + 1;
        if self.gone.is_cancelled() {
            return;
        }
        self.deadline
            .fetch_max(at, std::sync::atomic::Ordering::SeqCst);
    }

    /// How long until the deadline; `None` once it passed (or before the first confirmation).
    pub(crate) fn remaining(&self) -> Option<Duration> {
        let deadline = self.deadline.load(std::sync::atomic::Ordering::SeqCst);
        if deadline == 0 || self.gone.is_cancelled() {
            return None;
        }
        let deadline = Duration::from_millis(deadline - 1);
        deadline
            .checked_sub(self.base.elapsed())
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_deadline_ends_a_margin_before_the_ttl() {
        let m = LocalMembership::new("i");
        assert!(m.remaining().is_none(), "unconfirmed");
        let ttl = Duration::from_millis(400);
        m.confirmed(std::time::Instant::now(), ttl);
        let left = m.remaining().expect("confirmed");
        assert!(left <= ttl - LocalMembership::margin(ttl), "{left:?}");
        std::thread::sleep(ttl - LocalMembership::margin(ttl));
        assert!(m.remaining().is_none(), "past the deadline");
        // an older confirmation never moves the deadline back
        m.confirmed(std::time::Instant::now(), ttl);
        m.confirmed(std::time::Instant::now() - ttl, ttl);
        assert!(m.remaining().is_some());
        m.expire();
        assert!(m.remaining().is_none(), "gone");
        m.confirmed(std::time::Instant::now(), ttl);
        assert!(
            m.remaining().is_none(),
            "a gone membership is never confirmed again"
        );
    }
}
