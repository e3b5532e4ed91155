//! The shard consumer: one shard of one stream, as an explicit state machine.
//!
//! The parts, each in its own file:
//!
//! - `options`: [`ShardOptions`];
//! - `source`: where records come from, a [`RecordSource`](source::RecordSource) polling
//!   `GetRecords` or pushed by enhanced fan-out;
//! - `deaggregate`: the records of the handler, with KPL-aggregated records expanded into
//!   their user records;
//! - `renewal`: the lease renewal task and the stall check tied to it;
//! - `fetch`: opening the source, reading, and the idle and error backoff;
//! - `limits`: the record buckets and the adaptive pause before a read;
//! - `batch`: decoding, the handler (through `mq_core`'s `HandlerRunner`), outcomes, retries in
//!   place, dead letters and poison pills;
//! - `checkpoint`: moving the checkpoint after a batch;
//! - `deadline`: the deadline of every call to the lease store;
//! - `excused`: batch starts that do not count towards a poison pill.

mod batch;
mod checkpoint;
mod deadline;
mod deaggregate;
mod excused;
mod fetch;
mod limits;
mod options;
mod renewal;
mod source;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use mq_core::backend::{AdaptiveStrategy, HandlerRunner, ShardKey};
use mq_core::{
    BatchReport, CommonOptions, ConsumerInfo, ConsumerOptions, DisconnectReason, Handler,
    LifecycleEvent, QueueName,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::assignment::ShardLineage;
use crate::lease::{Lease, LeaseStore};
use crate::position::{Checkpoint, StartPosition};

use deadline::within;
use deaggregate::UserRecord;
pub(crate) use excused::Excused;
pub(crate) use limits::RecordBucket;
pub use options::ShardOptions;
use renewal::LeaseRenewal;
use source::RecordSource;

/// The backend name in events, dead letters and errors.
pub(crate) const BACKEND: &str = "kinesis";

/// Why a shard consumer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum ShardExit {
    /// The lease was held by someone else.
    NotAcquired,
    /// Stopped (or its batch limit reached); the lease was released.
    Stopped,
    /// The shard was read to its end and marked finished.
    Finished,
    /// The lease was lost; nothing more was checkpointed.
    LeaseLost,
    /// Too many errors; the lease was released.
    Failed(String),
}

/// The states of [`ShardConsumer`].
#[derive(Debug)]
enum State {
    Acquiring,
    /// Positions the record source after the checkpoint (or at the initial position).
    Opening,
    Fetching,
    Processing {
        records: Vec<UserRecord>,
        /// Open the source again at the new checkpoint instead of reading on.
        reopen: bool,
        failures: u32,
    },
    Checkpointing {
        to: Checkpoint,
        reopen: bool,
        records: u64,
    },
    Backoff {
        delay: Duration,
        then: Box<State>,
    },
    Finishing,
    Releasing(ShardExit),
    LeaseLost(String),
    Stopped(ShardExit),
}

/// Everything a shard consumer needs, shared by the consumers of one worker.
#[derive(Clone)]
pub(crate) struct ShardEnv {
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn LeaseStore>,
    pub(crate) strategy: Arc<dyn AdaptiveStrategy>,
    pub(crate) common: CommonOptions,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) options: ConsumerOptions,
    pub(crate) shard_options: ShardOptions,
    pub(crate) queue: QueueName,
    pub(crate) instance_id: String,
    pub(crate) worker_id: String,
    /// Set once the queue shuts down (disconnect reason `shutdown` instead of `stopped`).
    pub(crate) shut: Arc<AtomicBool>,
    /// The records/s cap of the whole instance, shared by its shard consumers.
    pub(crate) instance_limiter: Option<Arc<RecordBucket>>,
    /// Raised whenever a call to the lease store fails; see [`LeaseRenewal::confirm`].
    pub(crate) store_trouble: Arc<AtomicU64>,
    /// The worker's membership, which leases are tied to (none for `consume_batch`).
    pub(crate) membership: Option<Arc<crate::lease::LocalMembership>>,
    /// The batch starts of this worker that were not their records' fault.
    pub(crate) excused: Arc<Excused>,
}

/// Consumes one shard: acquires its lease, reads after the checkpoint, runs the handler with
/// per-message outcomes, checkpoints, and releases the lease when stopped.
///
/// - The lease is renewed every third of its duration, with retries and backoff, for as long
///   as the consumer runs, including while a handler runs past its timeout: the handler's
///   token is cancelled and the batch is not handed to anyone else until the handler returned.
/// - Throttling backs off and is never counted as an error; an expired iterator is re-created
///   from the checkpoint.
/// - Every batch start is counted in the lease store by checkpoint, so a batch that never
///   completes (a crash, a lost lease, on any instance) is retried record by record and, past the
///   poison threshold, the record is handed to the dead-letter hook, a `poison_pill` event fires
///   and the shard moves on.
/// - Messages the handler retries are retried in place with the retry policy's backoff; exhausted
///   or failed ones go to the dead-letter hook before the checkpoint moves past them. A retried
///   message holds back the later messages of its partition key (they are delivered again after
///   it), so a key's messages are last handled in order.
/// - A batch that fails as a whole (an error for the batch, a panic, a timeout) is handed to the
///   handler again one message at a time, so only messages that fail alone reach the dead-letter
///   hook; each message handled alone is checkpointed before the next, so a stop meanwhile
///   resumes after it. Only the handler and the decoder count towards a poison pill: a
///   checkpoint the lease store cannot save, a lease-store outage, a lost lease (unless the
///   handler was stuck) and a stop do not.
/// - Every call to the lease store has a deadline ([`ShardOptions::store_timeout`]): a call
///   past it fails (a checkpoint is retried, then the lease released; a renewal is retried, then
///   the lease given up), and a stop past its grace period abandons it.
/// - A lost lease cancels the handler's token and stops the consumer without checkpointing; a
///   stale owner's checkpoint is refused by the store's fence anyway.
pub(crate) struct ShardConsumer {
    env: ShardEnv,
    shard: String,
    key: ShardKey,
    info: ConsumerInfo,
    consumer_id: String,
    stop: CancellationToken,
    abort: CancellationToken,
    renewal: LeaseRenewal,
    lease: Option<Arc<Lease>>,
    position: Option<String>,
    /// Where the shard starts when it has no checkpoint (see [`ShardConsumer::lineage`]).
    initial: StartPosition,
    idle_delay: Duration,
    fetch_errors: u32,
    /// The last wait after a throttled call (zero when the last read was not throttled).
    throttle_delay: Duration,
    max_batches: Option<usize>,
    batches: usize,
    report: BatchReport,
    tracker: TaskTracker,
    source: Box<dyn RecordSource>,
    runner: HandlerRunner,
    shard_limiter: Option<RecordBucket>,
    /// Set by the coordinator before it stops this consumer to hand the shard over.
    rebalanced: Arc<AtomicBool>,
    /// The backpressure pause before the next fetch was taken.
    paused: bool,
    /// Records read but not handled yet: a read that expanded into more user records than a
    /// batch holds is handed out in batches, each checkpointed.
    pending: Vec<UserRecord>,
    /// The shard ended after the pending records.
    pending_ended: bool,
}

impl fmt::Debug for ShardConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardConsumer")
            .field("queue", &self.env.queue)
            .field("shard", &self.shard)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ShardConsumer {
    pub(crate) fn new(
        env: ShardEnv,
        shard: String,
        stop: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        let info = ConsumerInfo::shard(
            env.worker_id.clone(),
            env.queue.clone(),
            BACKEND,
            shard.clone(),
        );
        let consumer_id = format!("{}:{shard}", env.instance_id);
        let runner = HandlerRunner::new(
            env.handler.clone(),
            BACKEND,
            env.queue.clone(),
            consumer_id.clone(),
            env.options.get_handler_timeout(),
            env.common.get_lifecycle().clone(),
        )
        .shard(shard.clone());
        let renewal = LeaseRenewal::new(
            env.store.clone(),
            env.options.get_lease_duration(),
            env.shard_options.get_store_timeout(),
            env.shard_options.get_renew_attempts(),
            env.store_trouble.clone(),
            env.membership.clone(),
        );
        ShardConsumer {
            key: ShardKey::new(env.queue.as_str(), shard.as_str()),
            source: source::for_mode(&env, &shard, &stop),
            consumer_id,
            info,
            shard,
            stop,
            abort,
            renewal,
            lease: None,
            position: None,
            initial: env.shard_options.get_initial_position().clone(),
            idle_delay: env.options.get_poll_interval(),
            fetch_errors: 0,
            throttle_delay: Duration::ZERO,
            max_batches: None,
            batches: 0,
            report: BatchReport::default(),
            tracker,
            runner,
            shard_limiter: env
                .shard_options
                .get_max_records_per_second()
                .map(RecordBucket::new),
            rebalanced: Arc::new(AtomicBool::new(false)),
            paused: false,
            pending: Vec::new(),
            pending_ended: false,
            env,
        }
    }

    /// Takes the shard's lineage from `listing`. A shard with a parent still in the listing (a
    /// child of a split or a merge) starts at `TRIM_HORIZON` when it has no checkpoint, whatever
    /// the initial position: it is read only after its parents finished, and the records written
    /// to it meanwhile must not be skipped. The initial position applies to shards without
    /// lineage (a parent that aged out of the stream's retention has left nothing to keep in
    /// order).
    pub(crate) fn lineage(mut self, listing: &[ShardLineage]) -> Self {
        let listed = |id: &String| listing.iter().any(|s| s.id() == id);
        if listing
            .iter()
            .find(|s| s.id() == self.shard)
            .is_some_and(|s| s.parents().iter().any(listed))
        {
            self.initial = StartPosition::TrimHorizon;
        }
        self
    }

    /// The flag the coordinator sets before stopping this consumer for a handoff (the
    /// disconnect reason is then `rebalance`).
    pub(crate) fn rebalance_flag(&self) -> Arc<AtomicBool> {
        self.rebalanced.clone()
    }

    /// Cancelled when the lease is lost (the consumer may still be waiting for a stuck call).
    pub(crate) fn lost_token(&self) -> CancellationToken {
        self.renewal.lost().clone()
    }

    /// Stop after `n` handled batches (for `consume_batch`). Such a consumer always polls: one
    /// subscription per on-demand batch would run into AWS's limit of one subscription per shard
    /// every 5 seconds.
    pub(crate) fn max_batches(mut self, n: usize) -> Self {
        self.max_batches = Some(n);
        self.source = source::polling(&self.env, &self.shard);
        self
    }

    fn emit(&self, event: impl FnOnce() -> LifecycleEvent) {
        self.env.common.get_lifecycle().emit_with(event);
    }

    fn stream(&self) -> &str {
        self.env.queue.as_str()
    }

    /// Runs the state machine to its end.
    pub(crate) async fn run(mut self) -> (ShardExit, BatchReport) {
        let mut state = State::Acquiring;
        let done = CancellationToken::new();
        // dropped mid-flight (a crash, a runtime shutdown): renewal stops, the lease expires
        let _renewal_guard = done.clone().drop_guard();
        let exit = loop {
            state = match state {
                State::Stopped(exit) => break exit,
                s => self.step(s, &done).await,
            };
        };
        done.cancel();
        (exit, self.report)
    }

    async fn step(&mut self, state: State, done: &CancellationToken) -> State {
        // a lost lease ends everything at once, whatever the state
        if self.lease.is_some()
            && self.renewal.lost().is_cancelled()
            && !matches!(state, State::LeaseLost(_) | State::Stopped(_))
        {
            return self.lost_state();
        }
        match state {
            State::Acquiring => self.acquire(done).await,
            State::Opening => self.open().await,
            State::Fetching => self.fetch().await,
            State::Processing {
                records,
                reopen,
                failures,
            } => self.process(records, reopen, failures).await,
            State::Checkpointing {
                to,
                reopen,
                records,
            } => self.checkpoint(to, reopen, records).await,
            State::Backoff { delay, then } => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => *then,
                    _ = self.stop.cancelled() => State::Releasing(ShardExit::Stopped),
                    _ = self.renewal.lost().cancelled() => *then,
                }
            }
            State::Finishing => self.finish().await,
            State::Releasing(exit) => self.release(exit).await,
            State::LeaseLost(reason) => self.lease_lost(reason).await,
            State::Stopped(exit) => State::Stopped(exit),
        }
    }

    async fn acquire(&mut self, done: &CancellationToken) -> State {
        match self
            .renewal
            .acquire(self.stream(), &self.shard, &self.env.instance_id)
            .await
        {
            Ok(Some(lease)) => {
                let lease = Arc::new(lease);
                self.position = lease.checkpoint.clone();
                self.lease = Some(lease.clone());
                self.renewal.start(lease, done.clone(), &self.tracker);
                self.emit(|| LifecycleEvent::ConsumerConnected {
                    consumer: self.info.clone(),
                });
                State::Opening
            }
            Ok(None) => State::Stopped(ShardExit::NotAcquired),
            Err(e) => {
                self.env.store_trouble.fetch_add(1, Ordering::SeqCst);
                State::Stopped(ShardExit::Failed(e.to_string()))
            }
        }
    }

    async fn finish(&mut self) -> State {
        let Some(lease) = &self.lease else {
            return State::Stopped(ShardExit::Finished);
        };
        let finished = within(
            "finish",
            self.renewal.limit(),
            None,
            self.env.store.finish(lease),
        )
        .await;
        match finished {
            Ok(true) => State::Releasing(ShardExit::Finished),
            Ok(false) => State::LeaseLost("fenced while finishing".into()),
            Err(e) => State::Releasing(ShardExit::Failed(e.to_string())),
        }
    }

    /// Gives the lease back (fenced if another instance took the shard meanwhile), within the
    /// deadline of one call to the store.
    async fn give_back(&self) -> crate::Result<()> {
        match &self.lease {
            Some(lease) => within(
                "release",
                self.renewal.limit(),
                None,
                self.env.store.release(lease),
            )
            .await
            .map(|_| ()),
            None => Ok(()),
        }
    }

    async fn release(&mut self, exit: ShardExit) -> State {
        if let Err(e) = self.give_back().await {
            tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: lease release failed; it expires on its own");
        }
        let reason = match &exit {
            ShardExit::Failed(e) => DisconnectReason::Error(e.clone()),
            ShardExit::Stopped if self.rebalanced.load(Ordering::SeqCst) => {
                DisconnectReason::Rebalance
            }
            _ if self.env.shut.load(Ordering::SeqCst) => DisconnectReason::Shutdown,
            _ => DisconnectReason::Stopped,
        };
        self.emit(|| LifecycleEvent::ConsumerDisconnected {
            consumer: self.info.clone(),
            reason,
        });
        State::Stopped(exit)
    }

    async fn lease_lost(&self, reason: String) -> State {
        let epoch = self.lease.as_ref().map_or(0, |l| l.epoch);
        tracing::warn!(shard = %self.shard, epoch, reason, "mq-kinesis: lease lost, shard consumer stops");
        // lost with the membership: released only now that the handler returned
        if self.renewal.lost_to_membership()
            && let Err(e) = self.give_back().await
        {
            tracing::debug!(shard = %self.shard, error = %e, "mq-kinesis: cannot release a lease lost with the membership; it ends with the membership");
        }
        self.emit(|| LifecycleEvent::LeaseLost {
            consumer: self.info.clone(),
            epoch,
            reason: reason.clone(),
        });
        self.emit(|| LifecycleEvent::ConsumerDisconnected {
            consumer: self.info.clone(),
            reason: DisconnectReason::Error(format!("lease lost: {reason}")),
        });
        State::Stopped(ShardExit::LeaseLost)
    }

    fn lost_state(&self) -> State {
        State::LeaseLost(self.renewal.lost_reason())
    }

    fn interrupted(&self) -> State {
        if self.renewal.lost().is_cancelled() {
            self.lost_state()
        } else {
            State::Releasing(ShardExit::Stopped)
        }
    }
}
