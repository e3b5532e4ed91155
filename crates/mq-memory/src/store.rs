//! The in-process store behind [`InMemoryQueue`](crate::InMemoryQueue).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mq_core::backend::duplicate_id;
use mq_core::backend::{Claim, Claimed, Completion, CompletionAction, Holder, QueueStore};
use mq_core::{
    CancelOutcome, CancelTarget, Message, MessageId, QueueName, QueueStats, Result, Status,
    async_trait,
};
use tokio::sync::Notify;

/// Keeps messages in process memory, with the same claim and lease rules as the durable stores.
///
/// Ready messages are delivered in publication order, delayed ones when their `execute_at`
/// passes. A claim holds a message under a lease; a lease that expires (a consumer task that was
/// aborted) makes the message claimable again. Acknowledged messages are dropped; failed ones are
/// kept in a bounded list ([`MemoryStore::finished`]).
///
/// # Examples
///
/// ```
/// use mq_memory::MemoryStore;
///
/// let store = MemoryStore::new(1000);
/// # let _ = store;
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    queues: RwLock<HashMap<QueueName, Arc<Slot>>>,
    finished_capacity: usize,
}

#[derive(Debug, Default)]
struct Slot {
    state: Mutex<State>,
    notify: Notify,
    paused: std::sync::atomic::AtomicBool,
}

/// Ready messages: one FIFO per priority, highest priority first.
#[derive(Debug, Default)]
struct Ready(std::collections::BTreeMap<Reverse<i16>, VecDeque<MessageId>>);

impl Ready {
    fn push(&mut self, priority: i16, id: MessageId) {
        self.0.entry(Reverse(priority)).or_default().push_back(id);
    }

    fn pop(&mut self) -> Option<MessageId> {
        loop {
            let mut first = self.0.first_entry()?;
            if let Some(id) = first.get_mut().pop_front() {
                return Some(id);
            }
            first.remove();
        }
    }

    fn len(&self) -> usize {
        self.0.values().map(VecDeque::len).sum()
    }

    fn is_empty(&self) -> bool {
        self.0.values().all(VecDeque::is_empty)
    }
}

/// Ids may come from publishers, so the map keeps a seeded hash (foldhash), several times
/// cheaper than SipHash on the hot path.
type IdMap<V> = HashMap<MessageId, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct State {
    entries: IdMap<Entry>,
    ready: Ready,
    /// Unique keys: the message holding each, and (once it finished) until when it blocks.
    unique: HashMap<String, (MessageId, Option<DateTime<Utc>>)>,
    delayed: BinaryHeap<Reverse<(DateTime<Utc>, u64, MessageId)>>,
    leases: BinaryHeap<Reverse<(Instant, u64, MessageId)>>,
    finished: VecDeque<Message>,
    /// Messages that left the store, per final status (acked ones are not kept).
    done: std::collections::BTreeMap<Status, u64>,
    seq: u64,
}

#[derive(Debug)]
struct Entry {
    message: Message,
    lease: Option<Lease>,
}

#[derive(Debug)]
struct Lease {
    owner: Arc<str>,
    expires: Instant,
    seq: u64,
}

impl MemoryStore {
    /// A store keeping at most `finished_capacity` failed messages per queue.
    pub fn new(finished_capacity: usize) -> Self {
        MemoryStore {
            queues: RwLock::default(),
            finished_capacity,
        }
    }

    fn slot(&self, queue: &QueueName) -> Arc<Slot> {
        if let Some(s) = self
            .queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
        {
            return s.clone();
        }
        self.queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(queue.clone())
            .or_default()
            .clone()
    }

    /// Messages of `queue` that failed for good (failed or dead-lettered), oldest first, at most
    /// `finished_capacity` of them.
    pub fn finished(&self, queue: &QueueName) -> Vec<Message> {
        let slot = self.slot(queue);
        let st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        st.finished.iter().cloned().collect()
    }

    /// Messages of `queue` not yet finished (scheduled or processing).
    pub fn pending(&self, queue: &QueueName) -> usize {
        let slot = self.slot(queue);
        let st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        st.entries.len()
    }
}

impl State {
    fn schedule(&mut self, id: MessageId, execute_at: DateTime<Utc>, now: DateTime<Utc>) {
        if execute_at <= now {
            let priority = self.entries.get(&id).map_or(0, |e| e.message.priority);
            self.ready.push(priority, id);
        } else {
            self.seq += 1;
            self.delayed.push(Reverse((execute_at, self.seq, id)));
        }
    }

    /// A message left the store: its unique key stops blocking, or blocks until its window
    /// ends.
    fn release_key(&mut self, message: &Message, now: DateTime<Utc>) {
        let Some(key) = &message.unique_key else {
            return;
        };
        match message.unique_window {
            Some(window) => {
                if let Some(held) = self.unique.get_mut(key) {
                    held.1 = Some(mq_core::later_by(now, window));
                }
            }
            None => {
                self.unique.remove(key);
            }
        }
    }

    /// The message holding `key`, if it still blocks at `now`.
    fn key_holder(&self, key: &str, now: DateTime<Utc>) -> Option<&MessageId> {
        self.unique
            .get(key)
            .filter(|(_, until)| until.is_none_or(|u| u > now))
            .map(|(id, _)| id)
    }

    fn holds(&self, id: &MessageId, owner: &str, attempt: u32, now: Instant) -> bool {
        self.entries.get(id).is_some_and(|e| {
            e.message.status == Status::Processing
                && e.message.attempts == attempt
                && e.lease
                    .as_ref()
                    .is_some_and(|l| &*l.owner == owner && l.expires > now)
        })
    }
}

#[async_trait]
impl QueueStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn register(&self, queue: &QueueName) -> Result<()> {
        self.slot(queue);
        Ok(())
    }

    async fn insert(&self, queue: &QueueName, messages: Vec<Message>) -> Result<Vec<Result<()>>> {
        let slot = self.slot(queue);
        let now = Utc::now();
        let mut results = Vec::with_capacity(messages.len());
        {
            let mut guard = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            let st = &mut *guard;
            st.entries.reserve(messages.len());
            for m in messages {
                if let Some(key) = &m.unique_key
                    && let Some(holder) = st.key_holder(key, now)
                {
                    results.push(Err(mq_core::Error::DuplicateKey {
                        key: key.clone(),
                        holder: holder.clone(),
                        queue: queue.clone(),
                    }));
                    continue;
                }
                match st.entries.entry(m.id.clone()) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        results.push(Err(duplicate_id(queue, &m.id)));
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        let (id, at) = (m.id.clone(), m.execute_at);
                        if let Some(key) = &m.unique_key {
                            st.unique.insert(key.clone(), (id.clone(), None));
                        }
                        slot.insert(Entry {
                            message: m,
                            lease: None,
                        });
                        st.schedule(id, at, now);
                        results.push(Ok(()));
                    }
                }
            }
        }
        slot.notify.notify_waiters();
        Ok(results)
    }

    async fn claim(&self, queue: &QueueName, holder: Holder<'_>, limit: usize) -> Result<Claimed> {
        let Holder { owner, lease, .. } = holder;
        let slot = self.slot(queue);
        if slot.paused.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(Claimed::default());
        }
        let now = Utc::now();
        let mono = Instant::now();
        let owner: Arc<str> = Arc::from(owner);
        let expires = mono.checked_add(lease).ok_or_else(|| {
            mq_core::Error::invalid_option("lease_duration", "too long for this platform's clock")
        })?;
        let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        while let Some(Reverse((at, _, _))) = st.delayed.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, _, id))) = st.delayed.pop() {
                let priority = st.entries.get(&id).map_or(0, |e| e.message.priority);
                st.ready.push(priority, id);
            }
        }
        // Crash recovery: claims whose lease ran out go first, they are the oldest work.
        let mut candidates: Vec<MessageId> = Vec::new();
        while let Some(Reverse((expires, _, _))) = st.leases.peek() {
            if *expires > mono || candidates.len() >= limit {
                break;
            }
            if let Some(Reverse((_, seq, id))) = st.leases.pop() {
                let current = st
                    .entries
                    .get(&id)
                    .and_then(|e| e.lease.as_ref())
                    .filter(|l| l.seq == seq)
                    .map(|l| l.expires);
                match current {
                    // Renewed since: renewals update the lease in place, so the heap holds one
                    // entry per live lease; put it back at its new expiry.
                    Some(exp) if exp > mono => st.leases.push(Reverse((exp, seq, id))),
                    Some(_) => candidates.push(id),
                    None => {}
                }
            }
        }
        let mut messages = Vec::with_capacity(limit.min(st.ready.len() + candidates.len()));
        let mut expired = Vec::new();
        let mut recovered = candidates.into_iter();
        while messages.len() < limit {
            let Some(id) = recovered.next().or_else(|| st.ready.pop()) else {
                break;
            };
            let Some(entry) = st.entries.get_mut(&id) else {
                continue;
            };
            let reclaim = entry.message.status == Status::Processing;
            if reclaim && entry.lease.as_ref().is_some_and(|l| l.expires > mono) {
                continue; // claimed again already (a duplicate heap entry)
            }
            if !reclaim && entry.message.status != Status::Scheduled {
                continue;
            }
            if !reclaim && entry.message.is_expired_at(now) {
                let mut m = st
                    .entries
                    .remove(&id)
                    .map(|e| e.message)
                    .unwrap_or_else(|| unreachable!());
                m.status = Status::Expired;
                m.updated_at = now;
                *st.done.entry(Status::Expired).or_default() += 1;
                st.release_key(&m, now);
                expired.push(m);
                continue;
            }
            st.seq += 1;
            let seq = st.seq;
            entry.message.status = Status::Processing;
            entry.message.attempts += 1;
            entry.message.processing_started_at = Some(now);
            entry.message.updated_at = now;
            entry.lease = Some(Lease {
                owner: owner.clone(),
                expires,
                seq,
            });
            messages.push(entry.message.clone());
            st.leases.push(Reverse((expires, seq, id)));
        }
        Ok(Claimed::new(messages, expired))
    }

    async fn renew(
        &self,
        queue: &QueueName,
        holder: Holder<'_>,
        claims: &[Claim],
    ) -> Result<Vec<Claim>> {
        let Holder { owner, lease, .. } = holder;
        let slot = self.slot(queue);
        let mono = Instant::now();
        let expires = mono.checked_add(lease).ok_or_else(|| {
            mq_core::Error::invalid_option("lease_duration", "too long for this platform's clock")
        })?;
        let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut lost = Vec::new();
        for c in claims {
            if !st.holds(&c.id, owner, c.attempt, mono) {
                lost.push(c.clone());
                continue;
            }
            let mut earlier = None;
            if let Some(l) = st.entries.get_mut(&c.id).and_then(|e| e.lease.as_mut()) {
                // Extensions are updated in place (the heap entry is re-queued when popped); a
                // shorter lease needs its own entry to be found in time.
                if expires < l.expires {
                    earlier = Some(l.seq);
                }
                l.expires = expires;
            }
            if let Some(seq) = earlier {
                st.leases.push(Reverse((expires, seq, c.id.clone())));
            }
        }
        Ok(lost)
    }

    async fn complete(
        &self,
        queue: &QueueName,
        owner: &str,
        completions: Vec<Completion>,
    ) -> Result<Vec<Claim>> {
        let slot = self.slot(queue);
        let now = Utc::now();
        let mono = Instant::now();
        let mut rejected = Vec::new();
        let mut wake = false;
        {
            let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            for c in completions {
                if !st.holds(&c.claim.id, owner, c.claim.attempt, mono) {
                    rejected.push(c.claim);
                    continue;
                }
                match c.action {
                    CompletionAction::Ack => {
                        if let Some(e) = st.entries.remove(&c.claim.id) {
                            st.release_key(&e.message, now);
                        }
                        *st.done.entry(Status::Executed).or_default() += 1;
                    }
                    CompletionAction::Retry { execute_at, .. } => {
                        if let Some(e) = st.entries.get_mut(&c.claim.id) {
                            e.lease = None;
                            e.message.status = Status::Scheduled;
                            e.message.execute_at = execute_at;
                            e.message.updated_at = now;
                        }
                        wake |= execute_at <= now;
                        st.schedule(c.claim.id, execute_at, now);
                    }
                    CompletionAction::Release => {
                        if let Some(e) = st.entries.get_mut(&c.claim.id) {
                            e.lease = None;
                            e.message.status = Status::Scheduled;
                            e.message.execute_at = now;
                            e.message.updated_at = now;
                            e.message.attempts = e.message.attempts.saturating_sub(1);
                        }
                        wake = true;
                        st.schedule(c.claim.id, now, now);
                    }
                    CompletionAction::Finish { status, .. } => {
                        if let Some(mut e) = st.entries.remove(&c.claim.id) {
                            *st.done.entry(status).or_default() += 1;
                            st.release_key(&e.message, now);
                            e.message.status = status;
                            e.message.updated_at = now;
                            if self.finished_capacity > 0 {
                                if st.finished.len() >= self.finished_capacity {
                                    st.finished.pop_front();
                                }
                                st.finished.push_back(e.message);
                            }
                        }
                    }
                    // CompletionAction is non-exhaustive: an action this store does not know is
                    // refused rather than guessed at.
                    _ => rejected.push(c.claim),
                }
            }
        }
        if wake {
            slot.notify.notify_waiters();
        }
        Ok(rejected)
    }

    async fn cancel(&self, queue: &QueueName, target: CancelTarget) -> Result<CancelOutcome> {
        let slot = self.slot(queue);
        let now = Utc::now();
        let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        let id = match target {
            CancelTarget::Id(id) => id,
            CancelTarget::UniqueKey(key) => match st.unique.get(&key) {
                Some((id, _)) => id.clone(),
                None => return Ok(CancelOutcome::NotFound),
            },
            _ => return Ok(CancelOutcome::NotFound),
        };
        // A running message leaves the store at once: its holder's renewals and completions
        // find nothing to hold, which stops its handler.
        let Some(mut e) = st.entries.remove(&id) else {
            return Ok(match st.finished.iter().rev().find(|m| m.id == id) {
                Some(m) => CancelOutcome::AlreadyFinished(id, m.status),
                None => CancelOutcome::NotFound,
            });
        };
        let running = e.message.status == Status::Processing;
        e.message.status = Status::Cancelled;
        e.message.updated_at = now;
        *st.done.entry(Status::Cancelled).or_default() += 1;
        st.release_key(&e.message, now);
        Ok(if running {
            CancelOutcome::CancelledRunning(id)
        } else {
            CancelOutcome::Cancelled(id)
        })
    }

    async fn set_paused(&self, queue: &QueueName, paused: bool) -> Result<()> {
        self.slot(queue)
            .paused
            .store(paused, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    async fn is_paused(&self, queue: &QueueName) -> Result<bool> {
        Ok(self
            .slot(queue)
            .paused
            .load(std::sync::atomic::Ordering::Acquire))
    }

    fn wake(&self, queue: &QueueName) {
        self.slot(queue).notify.notify_waiters();
    }

    async fn queue_stats(&self, queue: Option<&QueueName>) -> Result<Vec<QueueStats>> {
        let slots: Vec<(QueueName, Arc<Slot>)> = {
            let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = queues
                .iter()
                .filter(|(name, _)| queue.is_none_or(|q| q == *name))
                .map(|(name, slot)| (name.clone(), slot.clone()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let now = Utc::now();
        let mono = Instant::now();
        let mut out = Vec::with_capacity(slots.len());
        for (name, slot) in slots {
            let st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut stats = QueueStats::new(name);
            stats.counts = st.done.clone();
            let mut oldest: Option<DateTime<Utc>> = None;
            for e in st.entries.values() {
                let m = &e.message;
                *stats.counts.entry(m.status).or_default() += 1;
                match m.status {
                    Status::Scheduled if m.execute_at <= now && !m.is_expired_at(now) => {
                        oldest = Some(oldest.map_or(m.execute_at, |o| o.min(m.execute_at)));
                    }
                    Status::Processing if e.lease.as_ref().is_none_or(|l| l.expires <= mono) => {
                        stats.expired_leases += 1;
                    }
                    _ => {}
                }
            }
            stats.oldest_ready_age = oldest.map(|t| (now - t).to_std().unwrap_or_default());
            out.push(stats);
        }
        Ok(out)
    }

    async fn wait_for_work(&self, queue: &QueueName, timeout: Duration) {
        let slot = self.slot(queue);
        let notified = slot.notify.notified();
        let next_due = {
            let st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Utc::now();
            let delayed = st
                .delayed
                .peek()
                .map(|Reverse((at, _, _))| (*at - now).to_std().unwrap_or_default());
            let lease = st
                .leases
                .peek()
                .map(|Reverse((exp, _, _))| exp.saturating_duration_since(Instant::now()));
            if st.ready.is_empty() {
                [delayed, lease].into_iter().flatten().min()
            } else {
                Some(Duration::ZERO)
            }
        };
        let wait = next_due.map_or(timeout, |d| d.min(timeout));
        let _ = tokio::time::timeout(wait, notified).await;
    }
}
