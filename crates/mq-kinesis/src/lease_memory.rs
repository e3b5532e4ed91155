//! The in-memory lease store (one process).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::lease::{
    CheckpointOutcome, Lease, LeaseRecord, LeaseState, LeaseStore, Memberships, end_membership,
    heartbeat_member, keep_membership, live_members, now_ms, operator_checkpoint, ttl_ms,
};

/// Leases kept in this process: for tests and single-process deployments. Cloning shares the
/// state.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use mq_kinesis::{InMemoryLeaseStore, LeaseStore};
///
/// let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
/// # let _ = store;
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryLeaseStore {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    leases: HashMap<(String, String), LeaseRecord>,
    failures: HashMap<(String, String), HashMap<String, u32>>,
    members: HashMap<String, BTreeMap<String, u64>>,
    memberships: HashMap<String, Memberships>,
    versions: HashMap<String, u64>,
    /// stream → (holder, expiry in Unix ms) of the listing's lead
    listing_leads: HashMap<String, (String, u64)>,
    /// stream → (listing, when published in Unix ms)
    listings: HashMap<String, (String, u64)>,
}

impl InMemoryLeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the record of `shard` and the stream's memberships under the lock. A shard
    /// without a record gets one only when `f` changes it, so a fenced call leaves no trace.
    fn update<T>(
        &self,
        stream: &str,
        shard: &str,
        f: impl FnOnce(&mut LeaseRecord, &Memberships) -> T,
    ) -> T {
        let mut s = self.lock();
        let s = &mut *s;
        let empty = Memberships::new();
        let memberships = s.memberships.get(stream).unwrap_or(&empty);
        let key = key(stream, shard);
        let mut record = s
            .leases
            .get(&key)
            .cloned()
            .unwrap_or_else(|| LeaseRecord::unheld(shard));
        let before = record.clone();
        let out = f(&mut record, memberships);
        if record.changed_hands(&before) {
            *s.versions.entry(stream.to_owned()).or_default() += 1;
        }
        if record != before {
            s.leases.insert(key, record);
        }
        out
    }

    /// [`LeaseStore::force_release`], or [`LeaseStore::set_checkpoint`] with a `checkpoint`.
    async fn override_lease(
        &self,
        stream: &str,
        shard: &str,
        checkpoint: Option<String>,
    ) -> Result<LeaseState> {
        self.update(stream, shard, |l, _| l.override_owner(checkpoint));
        self.state(stream, shard).await
    }
}

impl InMemoryLeaseStore {
    fn keep(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
        renew: bool,
    ) -> bool {
        let mut s = self.lock();
        let s = &mut *s;
        if !renew {
            *s.versions.entry(stream.to_owned()).or_default() += 1;
        }
        keep_membership(
            s.memberships.entry(stream.to_owned()).or_default(),
            s.members.entry(stream.to_owned()).or_default(),
            instance,
            membership,
            ttl,
            renew,
        )
    }
}

fn key(stream: &str, shard: &str) -> (String, String) {
    (stream.to_owned(), shard.to_owned())
}

#[async_trait]
impl LeaseStore for InMemoryLeaseStore {
    async fn acquire_above(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        Ok(self.update(stream, shard, |l, m| {
            l.acquire(stream, owner, None, ttl, epoch_floor, m, now_ms())
        }))
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
        Ok(self.update(stream, shard, |l, m| {
            l.acquire(
                stream,
                owner,
                Some(membership),
                ttl,
                epoch_floor,
                m,
                now_ms(),
            )
        }))
    }

    async fn force_release(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        self.override_lease(stream, shard, None).await
    }

    async fn set_checkpoint(
        &self,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> Result<LeaseState> {
        let checkpoint = Some(operator_checkpoint(sequence_number)?);
        self.override_lease(stream, shard, checkpoint).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        Ok(self.update(&lease.stream, &lease.shard, |l, m| {
            l.renew(lease, ttl, m, now_ms())
        }))
    }

    async fn checkpoint(&self, lease: &Lease, sequence_number: &str) -> Result<CheckpointOutcome> {
        Ok(self.update(&lease.stream, &lease.shard, |l, _| {
            l.checkpoint(lease, sequence_number)
        }))
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        Ok(self.update(&lease.stream, &lease.shard, |l, _| l.release(lease)))
    }

    async fn finish(&self, lease: &Lease) -> Result<bool> {
        Ok(self.update(&lease.stream, &lease.shard, |l, _| l.finish(lease)))
    }

    async fn lead_listing(&self, stream: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = now_ms();
        let mut s = self.lock();
        let lead = s
            .listing_leads
            .entry(stream.to_owned())
            .or_insert_with(|| (holder.to_owned(), 0));
        if lead.0 != holder && lead.1 > now {
            return Ok(false);
        }
        *lead = (holder.to_owned(), now + ttl_ms(ttl));
        Ok(true)
    }

    async fn publish_listing(&self, stream: &str, listing: &str) -> Result<()> {
        self.lock()
            .listings
            .insert(stream.to_owned(), (listing.to_owned(), now_ms()));
        Ok(())
    }

    async fn published_listing(&self, stream: &str) -> Result<Option<(String, Duration)>> {
        let now = now_ms();
        Ok(self
            .lock()
            .listings
            .get(stream)
            .map(|(l, at)| (l.clone(), Duration::from_millis(now.saturating_sub(*at)))))
    }

    async fn forget_finished(&self, stream: &str, shard: &str) -> Result<bool> {
        let mut s = self.lock();
        let k = key(stream, shard);
        if !s.leases.get(&k).is_some_and(|l| l.finished) {
            return Ok(false);
        }
        s.leases.remove(&k);
        s.failures.remove(&k);
        Ok(true)
    }

    async fn state(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        let now = now_ms();
        let s = self.lock();
        let empty = Memberships::new();
        let memberships = s.memberships.get(stream).unwrap_or(&empty);
        Ok(match s.leases.get(&key(stream, shard)) {
            Some(record) => record.state(now, memberships),
            None => LeaseState::unheld(shard),
        })
    }

    async fn leases(&self, stream: &str) -> Result<Vec<LeaseState>> {
        let now = now_ms();
        let s = self.lock();
        let empty = Memberships::new();
        let memberships = s.memberships.get(stream).unwrap_or(&empty);
        let mut out: Vec<LeaseState> = s
            .leases
            .iter()
            .filter(|((st, _), _)| st == stream)
            .map(|(_, l)| l.state(now, memberships))
            .collect();
        out.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(out)
    }

    async fn record_failure(&self, stream: &str, shard: &str, checkpoint: &str) -> Result<u32> {
        let mut s = self.lock();
        let n = s
            .failures
            .entry(key(stream, shard))
            .or_default()
            .entry(checkpoint.to_owned())
            .or_default();
        *n += 1;
        Ok(*n)
    }

    async fn failure_counts(&self, stream: &str, shard: &str) -> Result<BTreeMap<String, u32>> {
        Ok(self
            .lock()
            .failures
            .get(&key(stream, shard))
            .map(|c| c.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default())
    }

    async fn clear_failures(&self, stream: &str, shard: &str) -> Result<()> {
        self.lock().failures.remove(&key(stream, shard));
        Ok(())
    }

    async fn heartbeat(&self, stream: &str, instance: &str, ttl: Duration) -> Result<()> {
        let mut s = self.lock();
        heartbeat_member(
            s.members.entry(stream.to_owned()).or_default(),
            instance,
            ttl,
        );
        Ok(())
    }

    async fn join(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.keep(stream, instance, membership, ttl, false);
        Ok(())
    }

    async fn renew_membership(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<bool> {
        Ok(self.keep(stream, instance, membership, ttl, true))
    }

    async fn lease_version(&self, stream: &str) -> Result<Option<u64>> {
        Ok(Some(
            self.lock()
                .versions
                .get(stream)
                .copied()
                .unwrap_or_default(),
        ))
    }

    async fn leave(&self, stream: &str, instance: &str, membership: &str) -> Result<()> {
        let mut s = self.lock();
        let s = &mut *s;
        *s.versions.entry(stream.to_owned()).or_default() += 1;
        end_membership(
            s.memberships.entry(stream.to_owned()).or_default(),
            s.members.entry(stream.to_owned()).or_default(),
            instance,
            membership,
        );
        Ok(())
    }

    async fn live_instances(&self, stream: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .members
            .get(stream)
            .map(live_members)
            .unwrap_or_default())
    }
}
