//! The worker behind [`KinesisQueue::consume`](crate::KinesisQueue): membership, the balanced
//! assignment, and starting and handing off shard consumers.
//!
//! The worker keeps one membership record of its instance alive in the lease store (one call
//! about every second, whatever the instance owns); its shard leases are tied to it, so when the
//! instance dies they are free as soon as the membership expires. A task renews it and keeps a
//! local deadline that shard consumers stop at, before the store can expire it.
//!
//! One instance leads the shard listing (a lead with a TTL of two discovery intervals in the
//! lease store): it calls `ListShards` every `discovery_interval` and publishes the listing; the
//! others read the published listing, so a fleet lists a stream about as often as one instance.
//! An instance lists the shards itself when it just finished a shard, when the published listing
//! is older than three discovery intervals (its leader is gone), and when the leases show shards
//! its listing lacks. Finished shards' records are forgotten once their children started.
//!
//! Every `rebalance_interval` the worker reads the live members of the stream and the store's
//! lease version (two cheap calls). When the members changed, when a lease changed hands (the
//! version moved), when it waits for shards it was assigned, when one of its shard consumers
//! ended, or when the shard listing (read every `discovery_interval`) changed, it also reads
//! every lease and recomputes [`balanced_assignment`]: at steady state an instance's calls to the
//! lease store do not grow with the number of shards. Every instance computes the same map from the
//! same view, so nobody has to coordinate: an instance starts consumers for the shards assigned
//! to it once their lease is free, and hands off the shards assigned away (stop fetching, let the
//! batch in flight finish or cancel it after the grace period, checkpoint, release), after which
//! their new owner takes them at its next tick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mq_core::backend::ConsumerStopper;
use mq_core::{ConsumerInfo, DisconnectReason, ErrorChain, LifecycleEvent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::assignment::{
    ShardLineage, balanced_assignment, eligible_shards, finished_shards, forgettable_shards,
};
use crate::consumer::{ShardConsumer, ShardEnv, ShardExit};
use crate::lease::{LeaseState, LeaseStore, LocalMembership};
use crate::shards::list_shard_lineage;

/// A shard consumer this worker runs.
struct Running {
    stop: CancellationToken,
    abort: CancellationToken,
    rebalanced: Arc<AtomicBool>,
    /// cancelled once the consumer lost its lease (it may still wait for a stuck handler)
    lost: CancellationToken,
    handing_off: bool,
}

impl Running {
    /// Still reading the shard for this instance.
    fn holds(&self) -> bool {
        !self.handing_off && !self.lost.is_cancelled()
    }
}

/// The fleet settings of a worker, from [`KinesisOptions`](crate::KinesisOptions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FleetSettings {
    pub(crate) rebalance_interval: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) membership_ttl: Duration,
    pub(crate) discovery_interval: Duration,
    pub(crate) heartbeat_failure_threshold: u32,
}

pub(crate) struct Coordinator {
    fleet: FleetSettings,
    env: ShardEnv,
    stopper: ConsumerStopper,
    info: ConsumerInfo,
    stream: String,
    running: HashMap<String, Running>,
    exits_tx: mpsc::UnboundedSender<(String, ShardExit)>,
    exits: mpsc::UnboundedReceiver<(String, ShardExit)>,
    /// shards not to try again before the instant (their consumer failed)
    retry_after: HashMap<String, Instant>,
    members: Vec<String>,
    listing: Vec<ShardLineage>,
    listed_at: Option<Instant>,
    full_at: Option<Instant>,
    /// the store's lease version at the last full read (`None`: the store keeps none)
    version: Option<u64>,
    wanting: bool,
    /// eligible shards without a live lease, since when
    free_since: HashMap<String, Instant>,
    /// The current membership, replaced by the keeper when one expired.
    membership: watch::Receiver<Arc<LocalMembership>>,
    membership_tx: Option<watch::Sender<Arc<LocalMembership>>>,
    /// finished shards whose records may be forgotten, since when (see `forget_finished`)
    forgettable_since: HashMap<String, Instant>,
    /// finished shards whose records this worker had the store forget
    forgotten: HashSet<String>,
    /// list the shards at the next listing instead of reading the published listing
    list_now: bool,
}

impl Coordinator {
    pub(crate) fn new(
        fleet: FleetSettings,
        env: ShardEnv,
        stopper: ConsumerStopper,
        info: ConsumerInfo,
    ) -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let (membership_tx, membership) =
            watch::channel(Arc::new(LocalMembership::new(&env.instance_id)));
        Coordinator {
            membership,
            membership_tx: Some(membership_tx),
            stream: env.queue.as_str().to_owned(),
            fleet,
            env,
            stopper,
            info,
            running: HashMap::new(),
            exits_tx,
            exits,
            retry_after: HashMap::new(),
            members: Vec::new(),
            listing: Vec::new(),
            listed_at: None,
            full_at: None,
            version: None,
            wanting: true,
            free_since: HashMap::new(),
            forgettable_since: HashMap::new(),
            forgotten: HashSet::new(),
            list_now: false,
        }
    }

    fn emit(&self, event: impl FnOnce() -> LifecycleEvent) {
        self.env.common.get_lifecycle().emit_with(event);
    }

    /// How long a renewal keeps this instance's membership (and the leases tied to it): the
    /// configured TTL, but never longer than a lease with its own expiry, and at least three
    /// rebalance intervals.
    fn membership_ttl(&self) -> Duration {
        self.fleet
            .membership_ttl
            .min(self.env.options.get_lease_duration())
            .max(self.fleet.rebalance_interval * 3)
    }

    /// A few heartbeats per membership TTL, so one slow call does not drop the instance.
    fn heartbeat_interval(&self) -> Duration {
        self.fleet.heartbeat_interval.min(self.membership_ttl() / 3)
    }

    fn trouble(&self) {
        self.env.store_trouble.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) async fn run(mut self) {
        self.emit(|| LifecycleEvent::ConsumerConnected {
            consumer: self.info.clone(),
        });
        let tick = self.fleet.rebalance_interval;
        let stop = self.stopper.stop_token().clone();
        let keeper_stop = CancellationToken::new();
        let keeper = self.membership_tx.take().map(|tx| {
            let keeper = Keeper {
                store: self.env.store.clone(),
                stream: self.stream.clone(),
                instance: self.env.instance_id.clone(),
                ttl: self.membership_ttl(),
                interval: self.heartbeat_interval(),
                threshold: self.fleet.heartbeat_failure_threshold,
                env: self.env.clone(),
                tx,
                stop: keeper_stop.clone(),
            };
            tokio::spawn(keeper.run())
        });
        while !stop.is_cancelled() {
            let mut ended = false;
            while let Ok((shard, exit)) = self.exits.try_recv() {
                ended = true;
                self.ended(shard, exit);
            }
            if let Err(e) = self.rebalance(ended).await {
                self.trouble();
                tracing::warn!(stream = %self.stream, error = %ErrorChain::from_error(&e), "mq-kinesis: rebalance skipped");
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                Some((shard, exit)) = self.exits.recv() => {
                    // a consumer ended: look again at once
                    self.ended(shard, exit);
                    self.wanting = true;
                }
                _ = stop.cancelled() => {}
            }
        }
        // Our consumers stop on the same token: they finish their batch, checkpoint and
        // release. Their leases are tied to the membership, so it ends only after them (or once
        // they had the grace period and a membership TTL to do so); the others then rebalance.
        let wait = self.env.options.get_shutdown_grace() + self.membership_ttl();
        let _ = tokio::time::timeout(wait, async {
            while !self.running.is_empty() {
                match self.exits.recv().await {
                    Some((shard, _)) => {
                        self.running.remove(&shard);
                    }
                    None => break,
                }
            }
        })
        .await;
        keeper_stop.cancel();
        if let Some(keeper) = keeper {
            let _ = keeper.await;
        }
        let membership = self.membership.borrow().clone();
        if let Err(e) = self
            .env
            .store
            .leave(&self.stream, &self.env.instance_id, membership.name())
            .await
        {
            tracing::debug!(stream = %self.stream, error = %ErrorChain::from_error(&e), "mq-kinesis: cannot leave the membership; it expires");
        }
        self.emit(|| LifecycleEvent::ConsumerDisconnected {
            consumer: self.info.clone(),
            reason: if self.env.shut.load(Ordering::SeqCst) {
                DisconnectReason::Shutdown
            } else {
                DisconnectReason::Stopped
            },
        });
    }

    fn ended(&mut self, shard: String, exit: ShardExit) {
        self.running.remove(&shard);
        match exit {
            ShardExit::Failed(e) => {
                tracing::warn!(shard, error = %e, "mq-kinesis: shard consumer failed");
                self.retry_after
                    .insert(shard, Instant::now() + Duration::from_secs(1));
            }
            ShardExit::Finished => {
                // its children may start now: list again, ourselves
                self.listed_at = None;
                self.list_now = true;
            }
            _ => {}
        }
    }

    async fn rebalance(&mut self, ended: bool) -> crate::Result<()> {
        if self.membership.borrow().remaining().is_none() {
            // not (or no longer) confirmed by the store: take nothing until it is
            self.wanting = true;
            return Ok(());
        }
        let discovery = self.fleet.discovery_interval;
        let mut members = self.env.store.live_instances(&self.stream).await?;
        // we know we are alive even when our heartbeat did not reach the store
        if !members.contains(&self.env.instance_id) {
            members.push(self.env.instance_id.clone());
            members.sort();
        }
        let changed = members != self.members;
        let mut listing_changed = false;
        if self.listed_at.is_none_or(|t| t.elapsed() >= discovery) {
            match self.fetch_listing().await {
                Ok((listing, age)) => {
                    listing_changed = listing != self.listing;
                    self.listing = listing;
                    let now = Instant::now();
                    self.listed_at = Some(now.checked_sub(age).unwrap_or(now));
                }
                // the last listing stands until the next attempt
                Err(e) if !self.listing.is_empty() => {
                    tracing::warn!(stream = %self.stream, error = %ErrorChain::from_error(&e), "mq-kinesis: cannot list the shards, keeping the last listing");
                }
                Err(e) => return Err(e),
            }
        }
        // Every lease is read only when something changed: the members, the listing, a lease
        // changing hands (the store's version), or one of our consumers; a store without a
        // version is read on the discovery timer instead.
        let version = self.env.store.lease_version(&self.stream).await?;
        let moved = match version {
            Some(v) => self.full_at.is_none() || self.version != Some(v),
            None => self.full_at.is_none_or(|t| t.elapsed() >= discovery),
        };
        if !(changed || ended || self.wanting || listing_changed || moved) {
            return Ok(());
        }
        self.members = members;
        self.version = version;
        let leases: HashMap<String, LeaseState> = self
            .env
            .store
            .leases(&self.stream)
            .await?
            .into_iter()
            .map(|l| (l.shard.clone(), l))
            .collect();
        self.full_at = Some(Instant::now());
        if self.listing_behind(&leases) {
            // others read shards our listing does not have (children of a resharding): list
            // again before taking anything, as their parents' records may be forgotten already
            self.listed_at = None;
            self.list_now = true;
            self.wanting = true;
            return Ok(());
        }
        let known: HashSet<String> = leases.keys().cloned().collect();
        let finished = finished_shards(
            &self.listing,
            leases
                .values()
                .filter(|l| l.finished)
                .map(|l| l.shard.clone()),
            &known,
        );
        let forgetting = self.forget_finished(&finished, &known).await;
        let eligible = eligible_shards(&self.listing, &finished);
        let mut current: BTreeMap<String, String> = leases
            .values()
            .filter(|l| l.live)
            .filter_map(|l| l.owner.clone().map(|o| (l.shard.clone(), o)))
            .collect();
        for (shard, r) in &self.running {
            if r.holds() {
                current.insert(shard.clone(), self.env.instance_id.clone());
            }
        }
        let assignment = balanced_assignment(&self.members, &eligible, &current);
        let mine = assignment
            .get(&self.env.instance_id)
            .cloned()
            .unwrap_or_default();

        let mut released = Vec::new();
        for (shard, r) in self.running.iter_mut() {
            if !mine.contains(shard) && !r.handing_off && !finished.contains(shard) {
                r.handing_off = true;
                r.rebalanced.store(true, Ordering::SeqCst);
                r.stop.cancel();
                // past the grace period the batch in flight is cancelled
                let (abort, grace) = (r.abort.clone(), self.env.options.get_shutdown_grace());
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    abort.cancel();
                });
                released.push(shard.clone());
            }
        }
        let mut acquired = Vec::new();
        let mut wanting = false;
        for shard in &mine {
            if self.running.contains_key(shard) {
                continue;
            }
            wanting = true;
            if self
                .retry_after
                .get(shard)
                .is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            if leases.get(shard).is_some_and(|l| l.live) {
                // its owner hands it off; take it once released
                continue;
            }
            self.start(shard.clone());
            acquired.push(shard.clone());
        }
        // A shard nobody took for a whole membership TTL although it is assigned to a live
        // member (that member's consumer is stuck, or views differ for long): anyone takes it,
        // and the balance is restored by the next rebalance.
        let now = Instant::now();
        self.free_since.retain(|s, _| {
            eligible.binary_search(s).is_ok() && !leases.get(s).is_some_and(|l| l.live)
        });
        for shard in &eligible {
            if leases.get(shard).is_some_and(|l| l.live) || self.running.contains_key(shard) {
                continue;
            }
            let since = *self.free_since.entry(shard.clone()).or_insert(now);
            wanting = true;
            if !mine.contains(shard) && now.duration_since(since) >= self.membership_ttl() {
                tracing::warn!(stream = %self.stream, shard, "mq-kinesis: shard unclaimed by its assigned owner, taking it");
                self.free_since.remove(shard);
                self.start(shard.clone());
                acquired.push(shard.clone());
            }
        }
        // a full read again at the next tick while a forgotten record is due
        self.wanting = wanting || forgetting;
        if !acquired.is_empty() || !released.is_empty() {
            released.sort();
            tracing::info!(stream = %self.stream, instance = %self.env.instance_id, ?acquired, ?released, members = self.members.len(), "mq-kinesis: rebalance");
            self.emit(|| LifecycleEvent::Rebalance {
                queue: self.env.queue.clone(),
                instance_id: self.env.instance_id.clone(),
                acquired: acquired.clone(),
                released: released.clone(),
            });
        }
        Ok(())
    }

    /// The shard listing: from `ListShards` when this instance leads the listing (it then
    /// publishes it), when it just finished a shard, or when the published one is missing or
    /// older than three discovery intervals (its leader is gone); else the published one.
    /// Also how old the listing is.
    async fn fetch_listing(&mut self) -> crate::Result<(Vec<ShardLineage>, Duration)> {
        let discovery = self.fleet.discovery_interval;
        let holder = self.membership.borrow().name().to_owned();
        let store = self.env.store.clone();
        let leads = match store
            .lead_listing(&self.stream, &holder, discovery * 2)
            .await
        {
            Ok(leads) => leads,
            Err(e) => {
                self.trouble();
                tracing::debug!(stream = %self.stream, error = %ErrorChain::from_error(&e), "mq-kinesis: cannot take the listing's lead, listing the shards");
                true
            }
        };
        if !leads && !std::mem::take(&mut self.list_now) {
            match store.published_listing(&self.stream).await {
                Ok(Some((text, age))) if age <= discovery * 3 => {
                    match serde_json::from_str::<Vec<ShardLineage>>(&text) {
                        Ok(listing) if !listing.is_empty() => return Ok((listing, age)),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(stream = %self.stream, error = %ErrorChain::from_error(&e), "mq-kinesis: unreadable published shard listing, listing the shards");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.trouble();
                    tracing::debug!(stream = %self.stream, error = %ErrorChain::from_error(&e), "mq-kinesis: cannot read the published shard listing");
                }
            }
        }
        self.list_now = false;
        let listing = list_shard_lineage(&self.env.client, &self.stream).await?;
        if leads {
            let published = serde_json::to_string(&listing)
                .map_err(|e| crate::error::Error::lease("publish_listing", e));
            match published {
                Ok(text) => {
                    if let Err(e) = store.publish_listing(&self.stream, &text).await {
                        self.trouble();
                        tracing::debug!(stream = %self.stream, error = %ErrorChain::from_error(&e), "mq-kinesis: cannot publish the shard listing");
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %self.stream, error = %ErrorChain::from_error(&e), "mq-kinesis: cannot publish the shard listing");
                }
            }
        }
        Ok((listing, Duration::ZERO))
    }

    /// True when a shard the store has a live lease on is missing from a listing older than a
    /// second: the listing predates a resharding.
    fn listing_behind(&self, leases: &HashMap<String, LeaseState>) -> bool {
        let old = self
            .listed_at
            .is_some_and(|t| t.elapsed() > Duration::from_secs(1));
        old && leases
            .values()
            .any(|l| l.live && !self.listing.iter().any(|s| s.id() == l.shard))
    }

    /// Has the store forget the records of finished shards whose children all started (or that
    /// Kinesis no longer lists), once that has held for three discovery intervals and a
    /// membership TTL, so every instance listed the children meanwhile and counts the parent as
    /// finished by them. Once per shard and worker. True while one is waiting for its time.
    async fn forget_finished(
        &mut self,
        finished: &HashSet<String>,
        known: &HashSet<String>,
    ) -> bool {
        if self.listing.is_empty() {
            return false;
        }
        let mut waiting = false;
        let ready = forgettable_shards(&self.listing, finished, known);
        self.forgettable_since
            .retain(|s, _| ready.binary_search(s).is_ok());
        let after = self.fleet.discovery_interval * 3 + self.membership_ttl();
        let now = Instant::now();
        for shard in ready {
            if self.forgotten.contains(&shard) || self.running.contains_key(&shard) {
                continue;
            }
            let since = *self.forgettable_since.entry(shard.clone()).or_insert(now);
            if now.duration_since(since) < after {
                waiting = true;
                continue;
            }
            match self.env.store.forget_finished(&self.stream, &shard).await {
                Ok(forgotten) => {
                    tracing::debug!(stream = %self.stream, shard, forgotten, "mq-kinesis: finished shard's record forgotten");
                    self.forgettable_since.remove(&shard);
                    self.forgotten.insert(shard);
                }
                Err(e) => {
                    self.trouble();
                    tracing::warn!(stream = %self.stream, shard, error = %ErrorChain::from_error(&e), "mq-kinesis: cannot forget a finished shard");
                }
            }
        }
        waiting
    }

    fn start(&mut self, shard: String) {
        let stop = self.stopper.stop_token().child_token();
        let abort = self.stopper.abort_token().child_token();
        let mut env = self.env.clone();
        env.membership = Some(self.membership.borrow().clone());
        let consumer = ShardConsumer::new(
            env,
            shard.clone(),
            stop.clone(),
            abort.clone(),
            self.stopper.tracker().clone(),
        )
        .lineage(&self.listing);
        self.running.insert(
            shard.clone(),
            Running {
                stop,
                abort,
                rebalanced: consumer.rebalance_flag(),
                lost: consumer.lost_token(),
                handing_off: false,
            },
        );
        let exits = self.exits_tx.clone();
        self.stopper.tracker().spawn(async move {
            let (exit, _) = consumer.run().await;
            let _ = exits.send((shard, exit));
        });
    }
}

/// Keeps the worker's membership alive: renews it every `interval` (one call, whatever the
/// instance owns), moves its local deadline forward on every success, and starts a new
/// membership when the store says the old one expired (the process was paused, or the store
/// was unreachable for longer than the TTL). Repeated failure is an event.
struct Keeper {
    store: Arc<dyn LeaseStore>,
    stream: String,
    instance: String,
    ttl: Duration,
    interval: Duration,
    threshold: u32,
    env: ShardEnv,
    tx: watch::Sender<Arc<LocalMembership>>,
    stop: CancellationToken,
}

impl Keeper {
    async fn run(self) {
        let mut joined = false;
        let mut failures = 0u32;
        while !self.stop.is_cancelled() {
            let current = self.tx.borrow().clone();
            let sent = std::time::Instant::now();
            let call = async {
                if joined {
                    self.store
                        .renew_membership(&self.stream, &self.instance, current.name(), self.ttl)
                        .await
                } else {
                    self.store
                        .join(&self.stream, &self.instance, current.name(), self.ttl)
                        .await
                        .map(|()| true)
                }
            };
            // a call slower than this cannot extend the deadline by much anyway
            let outcome = tokio::time::timeout(self.ttl / 2, call).await;
            match outcome {
                Ok(Ok(true)) => {
                    current.confirmed(sent, self.ttl);
                    joined = true;
                    failures = 0;
                }
                Ok(Ok(false)) => {
                    tracing::warn!(stream = %self.stream, membership = current.name(), "mq-kinesis: membership expired; its shards are free, joining again");
                    // its shard consumers stop now, not at the local deadline
                    current.expire();
                    self.tx
                        .send_replace(Arc::new(LocalMembership::new(&self.instance)));
                    joined = false;
                    continue;
                }
                Ok(Err(e)) => self.failed(&mut failures, &e),
                Err(_) => self.failed(
                    &mut failures,
                    &crate::error::Error::lease("renew_membership", "timed out"),
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.stop.cancelled() => {}
            }
        }
    }

    fn failed(&self, failures: &mut u32, e: &crate::error::Error) {
        self.env.store_trouble.fetch_add(1, Ordering::SeqCst);
        *failures += 1;
        let n = *failures;
        tracing::warn!(stream = %self.stream, failures = n, error = %ErrorChain::from_error(e), "mq-kinesis: membership renewal failed");
        if n >= self.threshold {
            self.env
                .common
                .get_lifecycle()
                .emit_with(|| LifecycleEvent::HeartbeatFailure {
                    queue: self.env.queue.clone(),
                    instance_id: self.instance.clone(),
                    consecutive_failures: n,
                    error: ErrorChain::from_error(e),
                });
        }
    }
}
