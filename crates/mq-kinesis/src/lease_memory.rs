//! The in-memory lease store (one process).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use mq_core::backend::normalize_sequence_number;

use crate::error::{Error, Result};
use crate::lease::{
    CheckpointOutcome, Lease, LeaseState, LeaseStore, compare_sequence_numbers, now_ms, ttl_ms,
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
    leases: HashMap<(String, String), LeaseState>,
    failures: HashMap<(String, String), HashMap<String, u32>>,
    members: HashMap<String, BTreeMap<String, u64>>,
}

impl InMemoryLeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(stream: &str, shard: &str) -> (String, String) {
    (stream.to_owned(), shard.to_owned())
}

fn holds(state: &LeaseState, lease: &Lease) -> bool {
    state.owner.as_deref() == Some(lease.owner.as_str()) && state.epoch == lease.epoch
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
        let now = now_ms();
        let mut s = self.lock();
        let st = s
            .leases
            .entry(key(stream, shard))
            .or_insert_with(|| LeaseState {
                shard: shard.to_owned(),
                ..LeaseState::default()
            });
        if st.finished || (st.owner.is_some() && st.expires_at_ms > now) {
            return Ok(None);
        }
        st.epoch = st.epoch.max(epoch_floor) + 1;
        st.owner = Some(owner.to_owned());
        st.expires_at_ms = now + ttl_ms(ttl);
        Ok(Some(Lease {
            stream: stream.to_owned(),
            shard: shard.to_owned(),
            owner: owner.to_owned(),
            epoch: st.epoch,
            expires_at_ms: st.expires_at_ms,
            checkpoint: st.checkpoint.clone(),
        }))
    }

    async fn force_release(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        {
            let mut s = self.lock();
            let st = s
                .leases
                .entry(key(stream, shard))
                .or_insert_with(|| LeaseState {
                    shard: shard.to_owned(),
                    ..LeaseState::default()
                });
            st.epoch += 1;
            st.owner = None;
            st.expires_at_ms = 0;
        }
        self.state(stream, shard).await
    }

    async fn set_checkpoint(
        &self,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> Result<LeaseState> {
        let seq = normalize_sequence_number(sequence_number)
            .map_err(|e| Error::lease("set_checkpoint", e))?;
        {
            let mut s = self.lock();
            let st = s
                .leases
                .entry(key(stream, shard))
                .or_insert_with(|| LeaseState {
                    shard: shard.to_owned(),
                    ..LeaseState::default()
                });
            st.epoch += 1;
            st.owner = None;
            st.expires_at_ms = 0;
            st.checkpoint = Some(seq);
        }
        self.state(stream, shard).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let mut s = self.lock();
        match s.leases.get_mut(&key(&lease.stream, &lease.shard)) {
            Some(st) if holds(st, lease) => {
                st.expires_at_ms = now_ms() + ttl_ms(ttl);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn checkpoint(&self, lease: &Lease, sequence_number: &str) -> Result<CheckpointOutcome> {
        let mut s = self.lock();
        match s.leases.get_mut(&key(&lease.stream, &lease.shard)) {
            Some(st) if holds(st, lease) => {
                let forward = st.checkpoint.as_deref().is_none_or(|cur| {
                    compare_sequence_numbers(sequence_number, cur) == Ordering::Greater
                });
                if forward {
                    st.checkpoint = Some(sequence_number.to_owned());
                    Ok(CheckpointOutcome::Advanced)
                } else {
                    Ok(CheckpointOutcome::NotForward)
                }
            }
            _ => Ok(CheckpointOutcome::Fenced),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let mut s = self.lock();
        match s.leases.get_mut(&key(&lease.stream, &lease.shard)) {
            Some(st) if holds(st, lease) => {
                st.owner = None;
                st.expires_at_ms = 0;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn finish(&self, lease: &Lease) -> Result<bool> {
        let mut s = self.lock();
        match s.leases.get_mut(&key(&lease.stream, &lease.shard)) {
            Some(st) if holds(st, lease) => {
                st.finished = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn state(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        let now = now_ms();
        let s = self.lock();
        let mut st = s
            .leases
            .get(&key(stream, shard))
            .cloned()
            .unwrap_or_else(|| LeaseState {
                shard: shard.to_owned(),
                ..LeaseState::default()
            });
        st.live = st.owner.is_some() && st.expires_at_ms > now;
        Ok(st)
    }

    async fn leases(&self, stream: &str) -> Result<Vec<LeaseState>> {
        let now = now_ms();
        let s = self.lock();
        let mut out: Vec<LeaseState> = s
            .leases
            .iter()
            .filter(|((st, _), _)| st == stream)
            .map(|(_, l)| {
                let mut l = l.clone();
                l.live = l.owner.is_some() && l.expires_at_ms > now;
                l
            })
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
        let now = now_ms();
        let mut s = self.lock();
        let m = s.members.entry(stream.to_owned()).or_default();
        m.retain(|_, exp| *exp > now);
        m.insert(instance.to_owned(), now + ttl_ms(ttl));
        Ok(())
    }

    async fn live_instances(&self, stream: &str) -> Result<Vec<String>> {
        let now = now_ms();
        let mut s = self.lock();
        let Some(m) = s.members.get_mut(stream) else {
            return Ok(Vec::new());
        };
        m.retain(|_, exp| *exp > now);
        Ok(m.keys().cloned().collect())
    }
}
