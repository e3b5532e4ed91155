//! The worker behind [`KinesisQueue::consume`](crate::KinesisQueue): membership, the balanced
//! assignment, and starting and handing off shard consumers.
//!
//! Every `rebalance_interval` the worker reads the live members of the stream (one cheap call).
//! When they changed, when it waits for shards it was assigned, when one of its shard consumers
//! ended, or every `discovery_interval`, it also reads the leases (and, less often, the shard
//! listing) and recomputes [`balanced_assignment`]. Every instance computes the same map from the
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
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::assignment::{ShardLineage, balanced_assignment, eligible_shards};
use crate::consumer::{ShardConsumer, ShardEnv, ShardExit};
use crate::lease::LeaseState;
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
    wanting: bool,
    /// eligible shards without a live lease, since when
    free_since: HashMap<String, Instant>,
    heartbeat_failures: u32,
    next_heartbeat: Instant,
}

impl Coordinator {
    pub(crate) fn new(
        fleet: FleetSettings,
        env: ShardEnv,
        stopper: ConsumerStopper,
        info: ConsumerInfo,
    ) -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Coordinator {
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
            wanting: true,
            free_since: HashMap::new(),
            heartbeat_failures: 0,
            next_heartbeat: Instant::now(),
        }
    }

    fn emit(&self, event: impl FnOnce() -> LifecycleEvent) {
        self.env.common.get_lifecycle().emit_with(event);
    }

    /// How long a heartbeat keeps this instance a member: the configured TTL, but never longer
    /// than a lease (a dead member's shards are reassigned only once it left the membership).
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
        while !stop.is_cancelled() {
            let mut ended = false;
            while let Ok((shard, exit)) = self.exits.try_recv() {
                ended = true;
                self.ended(shard, exit);
            }
            self.heartbeat().await;
            if let Err(e) = self.rebalance(ended).await {
                self.trouble();
                tracing::warn!(stream = %self.stream, error = %e, "mq-kinesis: rebalance skipped");
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
        // Leave the membership first so the others rebalance while our consumers hand off
        // (they stop on the same token, finish their batch, checkpoint and release).
        if let Err(e) = self
            .env
            .store
            .heartbeat(&self.stream, &self.env.instance_id, Duration::ZERO)
            .await
        {
            tracing::debug!(stream = %self.stream, error = %e, "mq-kinesis: cannot leave the membership; it expires");
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
                // its children may start now: list again
                self.listed_at = None;
            }
            _ => {}
        }
    }

    /// The membership heartbeat; repeated failure is an event.
    async fn heartbeat(&mut self) {
        if Instant::now() < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = Instant::now() + self.heartbeat_interval();
        let threshold = self.fleet.heartbeat_failure_threshold;
        match self
            .env
            .store
            .heartbeat(&self.stream, &self.env.instance_id, self.membership_ttl())
            .await
        {
            Ok(()) => self.heartbeat_failures = 0,
            Err(e) => {
                self.trouble();
                self.heartbeat_failures += 1;
                tracing::warn!(stream = %self.stream, failures = self.heartbeat_failures, error = %e, "mq-kinesis: heartbeat failed");
                if self.heartbeat_failures >= threshold {
                    self.emit(|| LifecycleEvent::HeartbeatFailure {
                        queue: self.env.queue.clone(),
                        instance_id: self.env.instance_id.clone(),
                        consecutive_failures: self.heartbeat_failures,
                        error: ErrorChain::from_error(&e),
                    });
                }
            }
        }
    }

    async fn rebalance(&mut self, ended: bool) -> crate::Result<()> {
        let discovery = self.fleet.discovery_interval;
        let mut members = self.env.store.live_instances(&self.stream).await?;
        // we know we are alive even when our heartbeat did not reach the store
        if !members.contains(&self.env.instance_id) {
            members.push(self.env.instance_id.clone());
            members.sort();
        }
        let changed = members != self.members;
        let discovery_due = self.full_at.is_none_or(|t| t.elapsed() >= discovery);
        if !(changed || ended || self.wanting || discovery_due) {
            return Ok(());
        }
        self.members = members;
        if self.listed_at.is_none_or(|t| t.elapsed() >= discovery) {
            match list_shard_lineage(&self.env.client, &self.stream).await {
                Ok(listing) => {
                    self.listing = listing;
                    self.listed_at = Some(Instant::now());
                }
                // the last listing stands until the next attempt
                Err(e) if !self.listing.is_empty() => {
                    tracing::warn!(stream = %self.stream, error = %e, "mq-kinesis: cannot list the shards, keeping the last listing");
                }
                Err(e) => return Err(e),
            }
        }
        let leases: HashMap<String, LeaseState> = self
            .env
            .store
            .leases(&self.stream)
            .await?
            .into_iter()
            .map(|l| (l.shard.clone(), l))
            .collect();
        self.full_at = Some(Instant::now());
        let finished: HashSet<String> = leases
            .values()
            .filter(|l| l.finished)
            .map(|l| l.shard.clone())
            .collect();
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
        self.wanting = wanting;
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

    fn start(&mut self, shard: String) {
        let stop = self.stopper.stop_token().child_token();
        let abort = self.stopper.abort_token().child_token();
        let consumer = ShardConsumer::new(
            self.env.clone(),
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
