//! Lease renewal: a task that renews the lease every third of its duration, with retries, for
//! as long as the shard consumer makes progress. A lease tied to the instance's membership is
//! not renewed on its own (the worker renews the membership): the task then only stops the
//! consumer at the membership's local deadline, or when it is stuck.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::deadline::within;
use crate::lease::{Lease, LeaseStore, LocalMembership};

/// The lease of one shard consumer: the renewal task, the "lost" signal it raises, and the
/// stall check that ties renewal to progress.
///
/// - [`start`](Self::start) spawns the task once the lease is acquired; it renews every third of
///   the lease duration, retrying with backoff within what is left of the lease, and gives up
///   (cancelling [`lost`](Self::lost)) when the store refuses or keeps failing, or when the
///   consumer is stuck in a call for longer than that call may take ([`Busy`]).
/// - [`confirm`](Self::confirm) renews once more before a batch when a call to the lease store
///   failed anywhere in the instance since the lease was last confirmed.
/// - Every call to the store has a deadline (`limit`; a renewal at most a third of the lease):
///   a renewal that does not answer fails like one that errs.
#[derive(Debug)]
pub(super) struct LeaseRenewal {
    store: Arc<dyn LeaseStore>,
    ttl: Duration,
    /// The deadline of one call to the store.
    limit: Duration,
    /// Set when the lease was given up because the consumer was stuck (not for a store failure).
    stalled: Arc<AtomicBool>,
    attempts: u32,
    lost: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    busy: Arc<Busy>,
    /// Raised by every failed call to the lease store in this instance.
    trouble: Arc<AtomicU64>,
    /// The value of `trouble` when the lease was last confirmed by the store.
    confirmed_trouble: u64,
    /// The instance's membership, when the worker keeps one: leases are tied to it.
    membership: Option<Arc<LocalMembership>>,
}

impl LeaseRenewal {
    pub(super) fn new(
        store: Arc<dyn LeaseStore>,
        ttl: Duration,
        limit: Duration,
        attempts: u32,
        trouble: Arc<AtomicU64>,
        membership: Option<Arc<LocalMembership>>,
    ) -> Self {
        LeaseRenewal {
            membership,
            store,
            ttl,
            limit,
            stalled: Arc::new(AtomicBool::new(false)),
            attempts,
            lost: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
            busy: Arc::new(Busy::new()),
            confirmed_trouble: trouble.load(Ordering::SeqCst),
            trouble,
        }
    }

    /// Takes the lease of `shard`: tied to the membership when there is one (and only while its
    /// local deadline has not passed), else with its own expiry.
    pub(super) async fn acquire(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
    ) -> crate::Result<Option<Lease>> {
        match &self.membership {
            Some(m) if m.remaining().is_none() => Ok(None),
            Some(m) => {
                within(
                    "acquire",
                    self.limit,
                    None,
                    self.store
                        .acquire_as_member(stream, shard, owner, m.name(), self.ttl, 0),
                )
                .await
            }
            None => {
                within(
                    "acquire",
                    self.limit,
                    None,
                    self.store.acquire(stream, shard, owner, self.ttl),
                )
                .await
            }
        }
    }

    /// Renews `lease` in a task of `tracker` until `done` is cancelled or the lease is lost.
    pub(super) fn start(&self, lease: Arc<Lease>, done: CancellationToken, tracker: &TaskTracker) {
        let membership = self
            .membership
            .clone()
            .filter(|_| lease.membership.is_some());
        let task = RenewalTask {
            membership,
            store: self.store.clone(),
            lease,
            ttl: self.ttl,
            limit: self.renew_limit(),
            stalled: self.stalled.clone(),
            attempts: self.attempts,
            lost: self.lost.clone(),
            reason: self.reason.clone(),
            done,
            busy: self.busy.clone(),
            trouble: self.trouble.clone(),
        };
        tracker.spawn(task.run());
    }

    /// Cancelled once the lease is lost.
    pub(super) fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// The lease was given up because the consumer was stuck in a call past its limit (a
    /// handler that hangs), not because of the lease store.
    pub(super) fn lost_to_stall(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    /// The deadline of one call to the store.
    pub(super) fn limit(&self) -> Duration {
        self.limit
    }

    /// The deadline of one renewal: at most a third of the lease, so its retries fit in it.
    fn renew_limit(&self) -> Duration {
        self.limit.min(self.ttl / 3).max(Duration::from_millis(1))
    }

    /// What the consumer is blocked on.
    pub(super) fn busy(&self) -> &Arc<Busy> {
        &self.busy
    }

    /// The lease was given up because the membership it is tied to ended or passed its local
    /// deadline: the consumer releases it once its batch in flight is over (the renewal task
    /// does not, so no other instance starts on the shard while the handler still runs).
    pub(super) fn lost_to_membership(&self) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            == Some(MEMBERSHIP_LAPSED)
    }

    /// Why the lease was lost.
    pub(super) fn lost_reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "lease not renewable".into())
    }

    /// Before a batch goes to the handler: when a call to the lease store failed since the lease
    /// was last confirmed (here or anywhere in this instance), renew it first, and wait while the
    /// store is unreachable. A store that came back empty (a Redis restart without persistence)
    /// answers "not yours", and the consumer stops before another instance can have started on
    /// the shard, so no batch is ever handled by two instances at once. False when the lease is
    /// gone or `stop` was cancelled.
    ///
    /// Then the store's epoch fence is asked ([`LeaseStore::confirm_epoch`]): a lease whose
    /// epoch was overtaken there (a durable fence raised after the lease store lost the lease,
    /// with no failed call in this instance to tell) is given up before the batch starts, on a
    /// shard that had nothing to checkpoint as much as on a busy one.
    ///
    /// A lease tied to the membership is also given up here once the membership's local
    /// deadline passed (the process was paused, or renewals failed), so no batch starts on a
    /// shard that another instance may already read.
    pub(super) async fn confirm(&mut self, lease: &Lease, stop: &CancellationToken) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            if lease.membership.is_some()
                && self
                    .membership
                    .as_ref()
                    .is_some_and(|m| m.remaining().is_none())
            {
                lose(&self.reason, &self.lost, MEMBERSHIP_LAPSED.into());
                return false;
            }
            let trouble = self.trouble.load(Ordering::SeqCst);
            let renewing = trouble != self.confirmed_trouble;
            let answer = if renewing {
                within(
                    "renew",
                    self.renew_limit(),
                    Some(stop),
                    self.store.renew(lease, self.ttl),
                )
                .await
            } else {
                within(
                    "confirm_epoch",
                    self.renew_limit(),
                    Some(stop),
                    self.store.confirm_epoch(lease),
                )
                .await
            };
            match answer {
                Ok(true) if renewing => {
                    // renewed: the epoch fence is asked next
                    self.confirmed_trouble = trouble;
                }
                Ok(true) => return true,
                Ok(false) => {
                    let why = if renewing {
                        "lease gone after a lease-store outage"
                    } else {
                        EPOCH_OVERTAKEN
                    };
                    lose(&self.reason, &self.lost, why.into());
                    return false;
                }
                Err(_) if stop.is_cancelled() => return false,
                Err(e) => {
                    self.trouble.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(shard = %lease.shard, error = %e, "mq-kinesis: lease store unreachable, pausing the shard");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return false,
                        _ = self.lost.cancelled() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

const EPOCH_OVERTAKEN: &str = "a newer epoch of the shard is recorded by the lease store's fence: another instance took the shard";

const MEMBERSHIP_LAPSED: &str =
    "membership not renewed before its deadline: the shard may already belong to another instance";

fn lose(reason: &Mutex<Option<String>>, lost: &CancellationToken, why: String) {
    *reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    lost.cancel();
}

/// The renewal task of one acquired lease.
struct RenewalTask {
    /// Set when the lease is tied to the membership.
    membership: Option<Arc<LocalMembership>>,
    store: Arc<dyn LeaseStore>,
    lease: Arc<Lease>,
    ttl: Duration,
    /// The deadline of one renewal.
    limit: Duration,
    stalled: Arc<AtomicBool>,
    attempts: u32,
    lost: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    done: CancellationToken,
    busy: Arc<Busy>,
    trouble: Arc<AtomicU64>,
}

impl RenewalTask {
    async fn run(self) {
        if let Some(m) = self.membership.clone() {
            return self.watch(&m).await;
        }
        let interval = self.ttl / 3;
        loop {
            tokio::select! {
                _ = self.done.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            // renewal is tied to progress: a consumer stuck in a call lets its lease lapse
            if let Some(stuck) = self.busy.stalled() {
                tracing::warn!(shard = %self.lease.shard, stuck, "mq-kinesis: shard consumer is stuck");
                self.stalled.store(true, Ordering::SeqCst);
                lose(&self.reason, &self.lost, stuck);
                return;
            }
            match self.renew().await {
                Ok(()) => {}
                Err(None) => return,
                Err(Some(why)) => {
                    lose(&self.reason, &self.lost, why);
                    return;
                }
            }
        }
    }

    /// For a lease tied to the membership: loses it at the membership's local deadline or when
    /// the consumer is stuck. A lease lost with the membership is released by the consumer once
    /// its batch in flight is over: the store may not have ended the membership yet (or may
    /// have lost its renewals), and releasing it now would let another instance start on the
    /// shard while the handler still runs. A consumer stuck in a call past its limit, before or
    /// after the loss, has its lease released here, so the shard moves while the call hangs
    /// (the release is fenced if someone took the shard meanwhile).
    async fn watch(&self, m: &LocalMembership) {
        let interval = self.ttl / 3;
        loop {
            let lost = self.lost.is_cancelled();
            let wait = if lost {
                // lost already: only a stuck consumer is left to watch for, until it ends
                interval
            } else if let Some(left) = m.remaining() {
                left.min(interval)
            } else {
                tracing::warn!(shard = %self.lease.shard, "mq-kinesis: membership deadline passed, the shard consumer stops");
                lose(&self.reason, &self.lost, MEMBERSHIP_LAPSED.into());
                continue;
            };
            tokio::select! {
                _ = self.done.cancelled() => return,
                _ = self.lost.cancelled(), if !lost => {}
                _ = m.gone().cancelled(), if !lost => {}
                _ = tokio::time::sleep(wait) => {}
            }
            if let Some(stuck) = self.busy.stalled() {
                tracing::warn!(shard = %self.lease.shard, stuck, "mq-kinesis: shard consumer is stuck");
                self.stalled.store(true, Ordering::SeqCst);
                lose(&self.reason, &self.lost, stuck);
                break;
            }
        }
        if let Err(e) = within("release", self.limit, None, self.store.release(&self.lease)).await {
            tracing::debug!(shard = %self.lease.shard, error = %e, "mq-kinesis: cannot release a lost lease; it ends with the membership");
        }
    }

    /// One renewal, retried with backoff within what is left of the lease. `Err(None)` when the
    /// consumer ended meanwhile, `Err(Some(why))` when the lease is lost.
    async fn renew(&self) -> Result<(), Option<String>> {
        let ttl = self.ttl;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(ttl / 20)
            .with_max_delay(ttl / 6)
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .build();
        loop {
            let renewed = within(
                "renew",
                self.limit,
                Some(&self.done),
                self.store.renew(&self.lease, ttl),
            )
            .await;
            if self.done.is_cancelled() {
                return Err(None);
            }
            match renewed {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(Some("lease taken over or released".to_owned())),
                Err(e) => match delays.next() {
                    Some(d) => {
                        self.trouble.fetch_add(1, Ordering::SeqCst);
                        tracing::warn!(shard = %self.lease.shard, error = %e, "mq-kinesis: lease renewal failed, retrying");
                        tokio::select! {
                            _ = self.done.cancelled() => return Err(None),
                            _ = tokio::time::sleep(d) => {}
                        }
                    }
                    None => {
                        return Err(Some(format!("renewal failed {} times: {e}", self.attempts)));
                    }
                },
            }
        }
    }
}

/// What the consumer is blocked on, for the stall check of the renewal task.
#[derive(Debug)]
pub(super) struct Busy {
    base: Instant,
    /// ms since `base` + 1 when the current call started; 0 when not in a call
    since: AtomicU64,
    /// how long the current call may take, in ms
    limit: AtomicU64,
    what: Mutex<&'static str>,
}

impl Busy {
    fn new() -> Self {
        Busy {
            base: Instant::now(),
            since: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
            what: Mutex::new(""),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The consumer starts waiting on `what`, which may take up to `limit`.
    pub(super) fn enter(&self, what: &'static str, limit: Duration) {
        *self.what.lock().unwrap_or_else(|e| e.into_inner()) = what;
        self.limit.store(
            u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
        self.since.store(self.now_ms() + 1, Ordering::SeqCst);
    }

    /// The call returned.
    pub(super) fn leave(&self) {
        self.since.store(0, Ordering::SeqCst);
    }

    /// `Some(description)` when the current call has run past its limit.
    fn stalled(&self) -> Option<String> {
        let since = self.since.load(Ordering::SeqCst);
        if since == 0 {
            return None;
        }
        let ran = self.now_ms().saturating_sub(since - 1);
        (ran > self.limit.load(Ordering::SeqCst)).then(|| {
            let what = *self.what.lock().unwrap_or_else(|e| e.into_inner());
            format!("stuck in {what} for {ran} ms: renewal stopped so the shard can move")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_past_its_limit_is_a_stall() {
        let busy = Busy::new();
        assert!(busy.stalled().is_none());
        busy.enter("GetRecords", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        let stuck = busy.stalled().expect("stalled");
        assert!(stuck.contains("GetRecords"), "{stuck}");
        busy.leave();
        assert!(busy.stalled().is_none());
    }
}
