//! The shard consumer: one shard of one stream, as an explicit state machine.

use std::fmt;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::SdkError;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kinesis::operation::get_records::{GetRecordsError, GetRecordsOutput};
use aws_sdk_kinesis::types::{Record, ShardIteratorType};
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, TimeZone, Utc};
use futures::FutureExt;
use mq_core::backend::{AdaptiveStrategy, BatchResult, ShardKey};
use mq_core::{
    Batch, BatchReport, CommonOptions, ConsumerInfo, ConsumerOptions, DeadLetter, DeadLetterOrigin,
    DisconnectReason, ErrorChain, Handler, HandlerContext, LifecycleEvent, Message, MessageId,
    MessageInfo, Outcome, Outcomes, QueueName, Status,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::fanout::{
    ConsumerArns, DEFAULT_RESUBSCRIBE_INTERVAL, FetchMode, StartPosition, Subscription,
};
use crate::lease::{CheckpointOutcome, Lease, LeaseStore};
use crate::record::decode_record;

pub(crate) const BACKEND: &str = "kinesis";

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InitialPosition {
    /// The oldest record kept by the stream (the default).
    #[default]
    TrimHorizon,
    /// Only records written after the consumer starts.
    Latest,
    /// Records written at or after this time (whole seconds on some emulators).
    AtTimestamp(DateTime<Utc>),
}

/// Settings of the shard consumers that are not in [`ConsumerOptions`].
///
/// The lease lasts [`ConsumerOptions::lease_duration`] and is renewed every third of it; the
/// handler timeout, retry policy and idle polling also come from [`ConsumerOptions`].
///
/// Defaults: trim horizon, 3 renewal attempts, poison pill after 3 failures from one checkpoint,
/// lease released after 10 fetch errors in a row, a stall timeout of 60 s, no rate limit,
/// [`FetchMode::Polling`] (with enhanced fan-out: a new subscription every 4 min 30 s).
///
/// # Examples
///
/// ```
/// use mq_kinesis::{InitialPosition, ShardOptions};
///
/// let opts = ShardOptions::default().initial_position(InitialPosition::Latest).poison_threshold(5);
/// assert_eq!(opts.get_poison_threshold(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct ShardOptions {
    initial_position: InitialPosition,
    renew_attempts: u32,
    poison_threshold: u32,
    max_fetch_errors: u32,
    stall_timeout: Duration,
    max_records_per_second: Option<NonZeroU32>,
    fetch_mode: FetchMode,
    resubscribe_interval: Duration,
    fan_out_consumers: ConsumerArns,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            initial_position: InitialPosition::TrimHorizon,
            renew_attempts: 3,
            poison_threshold: 3,
            max_fetch_errors: 10,
            stall_timeout: Duration::from_secs(60),
            max_records_per_second: None,
            fetch_mode: FetchMode::Polling,
            resubscribe_interval: DEFAULT_RESUBSCRIBE_INTERVAL,
            fan_out_consumers: ConsumerArns::default(),
        }
    }
}

impl ShardOptions {
    /// Where a shard without a checkpoint starts.
    pub fn initial_position(mut self, p: InitialPosition) -> Self {
        self.initial_position = p;
        self
    }
    /// Renewal attempts (with backoff) before the lease is given up (K2).
    pub fn renew_attempts(mut self, n: u32) -> Self {
        self.renew_attempts = n.max(1);
        self
    }
    /// Failures from one checkpoint (counted in the lease store, crashes included) before the
    /// record there is a poison pill (K1).
    pub fn poison_threshold(mut self, n: u32) -> Self {
        self.poison_threshold = n.max(1);
        self
    }
    /// Failed fetches in a row (throttling excluded) before the lease is released.
    pub fn max_fetch_errors(mut self, n: u32) -> Self {
        self.max_fetch_errors = n.max(1);
        self
    }
    /// How long a fetch may hang, or a handler run past its timeout, before the consumer stops
    /// renewing its lease so the shard moves to another consumer. The stuck call is still waited
    /// for (nothing it does afterwards is checkpointed: the lease's fence refuses it).
    pub fn stall_timeout(mut self, d: Duration) -> Self {
        self.stall_timeout = d.max(Duration::from_millis(1));
        self
    }
    /// A token bucket on each shard: at most `n` records per second are handed to the handler
    /// (the bucket holds a fifth of a second's worth, so the rate holds over short windows too).
    /// For a cap on the whole instance see
    /// [`KinesisOptions::max_records_per_second`](crate::KinesisOptions::max_records_per_second).
    pub fn max_records_per_second(mut self, n: NonZeroU32) -> Self {
        self.max_records_per_second = Some(n);
        self
    }
    /// The stall timeout.
    pub fn get_stall_timeout(&self) -> Duration {
        self.stall_timeout
    }
    /// The per-shard rate limit.
    pub fn get_max_records_per_second(&self) -> Option<NonZeroU32> {
        self.max_records_per_second
    }
    /// The poison threshold.
    pub fn get_poison_threshold(&self) -> u32 {
        self.poison_threshold
    }
    /// The initial position.
    pub fn get_initial_position(&self) -> InitialPosition {
        self.initial_position
    }
    /// How shards are read: [`FetchMode::Polling`] (the default) or
    /// [`FetchMode::EnhancedFanOut`].
    pub fn fetch_mode(mut self, mode: FetchMode) -> Self {
        self.fetch_mode = mode;
        self
    }
    /// Reads shards with enhanced fan-out (`SubscribeToShard`) through the stream consumer
    /// `consumer_name`, registered on first use; see [`FetchMode::EnhancedFanOut`] and
    /// [`mq_kinesis::fanout`](crate::fanout).
    ///
    /// # Examples
    ///
    /// ```
    /// use mq_kinesis::{FetchMode, ShardOptions};
    ///
    /// let opts = ShardOptions::default().enhanced_fan_out("orders-service");
    /// assert!(matches!(opts.get_fetch_mode(), FetchMode::EnhancedFanOut { .. }));
    /// ```
    pub fn enhanced_fan_out(self, consumer_name: impl Into<String>) -> Self {
        self.fetch_mode(FetchMode::EnhancedFanOut {
            consumer_name: consumer_name.into(),
        })
    }
    /// With enhanced fan-out: how long one subscription is read before the next one replaces it
    /// (AWS ends a subscription after 5 minutes). Default 4 min 30 s; at least 100 ms.
    pub fn resubscribe_interval(mut self, every: Duration) -> Self {
        self.resubscribe_interval = every.max(Duration::from_millis(100));
        self
    }
    /// The fetch mode.
    pub fn get_fetch_mode(&self) -> &FetchMode {
        &self.fetch_mode
    }
    /// The re-subscription interval of enhanced fan-out.
    pub fn get_resubscribe_interval(&self) -> Duration {
        self.resubscribe_interval
    }
}

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

/// The states of [`ShardConsumer`] (backlog LOW-005).
#[derive(Debug)]
enum State {
    Acquiring,
    InitIterator,
    Fetching {
        iterator: String,
    },
    Processing {
        records: Vec<Record>,
        next: Option<String>,
        failures: u32,
    },
    Checkpointing {
        sequence: String,
        next: Option<String>,
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
    pub(crate) shut: Arc<std::sync::atomic::AtomicBool>,
    /// The records/s cap of the whole instance, shared by its shard consumers.
    pub(crate) instance_limiter: Option<Arc<RecordBucket>>,
    /// Raised whenever a call to the lease store fails; see [`ShardConsumer::confirm_lease`].
    pub(crate) store_trouble: Arc<AtomicU64>,
}

/// A token bucket of records (`governor`) that holds a fifth of a second's worth, so a rate
/// holds over short windows too.
#[derive(Debug)]
pub(crate) struct RecordBucket {
    limiter: governor::DefaultDirectRateLimiter,
    burst: NonZeroU32,
}

impl RecordBucket {
    pub(crate) fn new(per_second: NonZeroU32) -> Self {
        let burst = NonZeroU32::new((per_second.get() / 5).max(1)).unwrap_or(NonZeroU32::MIN);
        RecordBucket {
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_second(per_second).allow_burst(burst),
            ),
            burst,
        }
    }

    /// Waits until `n` records may pass, asking at most a full bucket at a time.
    async fn take(&self, n: usize) {
        let mut left = u32::try_from(n).unwrap_or(u32::MAX);
        while let Some(ask) = NonZeroU32::new(left.min(self.burst.get())) {
            // cannot fail: `ask` never exceeds the burst
            let _ = self.limiter.until_n_ready(ask).await;
            left -= ask.get();
        }
    }
}

/// What the consumer is blocked on, for the stall check of the renewal loop.
#[derive(Debug)]
struct Busy {
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
    fn enter(&self, what: &'static str, limit: Duration) {
        *self.what.lock().unwrap_or_else(|e| e.into_inner()) = what;
        self.limit.store(
            u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
        self.since.store(self.now_ms() + 1, Ordering::SeqCst);
    }
    fn leave(&self) {
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

/// Consumes one shard: acquires its lease, reads after the checkpoint, runs the handler with
/// per-message outcomes, checkpoints, and releases the lease when stopped.
///
/// - The lease is renewed every third of its duration, with retries and backoff (K2), for as long
///   as the consumer runs, including while a handler runs past its timeout (K4): the handler's
///   token is cancelled and the batch is not handed to anyone else until the handler returned.
/// - Throttling backs off and is never counted as an error (K3); an expired iterator is
///   re-created from the checkpoint.
/// - Every batch start is counted in the lease store by checkpoint, so a batch that never
///   completes (a crash, a lost lease, on any instance) is retried record by record and, past the
///   poison threshold, the record is handed to the dead-letter hook, a `poison_pill` event fires
///   and the shard moves on (K1).
/// - Messages the handler retries are retried in place with the retry policy's backoff; exhausted
///   or failed ones go to the dead-letter hook before the checkpoint moves past them.
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
    lost: CancellationToken,
    lost_reason: Arc<Mutex<Option<String>>>,
    lease: Option<Arc<Lease>>,
    position: Option<String>,
    idle_delay: Duration,
    fetch_errors: u32,
    max_batches: Option<usize>,
    batches: usize,
    report: BatchReport,
    tracker: TaskTracker,
    /// The read of the next batch, started while the current one is handled (keyed by the
    /// iterator it reads from); aborted when dropped.
    prefetched: Option<(String, AbortOnDropHandle<GetRecordsResult>)>,
    busy: Arc<Busy>,
    shard_limiter: Option<RecordBucket>,
    /// The value of `store_trouble` when the lease was last confirmed by the store.
    confirmed_trouble: u64,
    /// Set by the coordinator before it stops this consumer to hand the shard over.
    rebalanced: Arc<AtomicBool>,
    /// The backpressure pause before the next fetch was taken.
    paused: bool,
    /// With enhanced fan-out, the subscription the shard is read from (its task ends when this is
    /// dropped, so with the consumer).
    subscription: Option<Subscription>,
}

type GetRecordsResult = Result<GetRecordsOutput, SdkError<GetRecordsError>>;

async fn get_records(client: Client, iterator: String, limit: usize) -> GetRecordsResult {
    client
        .get_records()
        .shard_iterator(iterator)
        .limit(i32::try_from(limit).unwrap_or(10_000))
        .send()
        .await
}

impl fmt::Debug for ShardConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardConsumer")
            .field("queue", &self.env.queue)
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

pub(crate) fn error_text<E: std::error::Error + 'static>(e: &E) -> String {
    DisplayErrorContext(e).to_string()
}

fn is_throttle(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ProvisionedThroughputExceededException"
                | "LimitExceededException"
                | "KMSThrottlingException"
                | "ThrottlingException"
        )
    )
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
        let idle = env.options.get_poll_interval();
        ShardConsumer {
            key: ShardKey::new(env.queue.as_str(), shard.as_str()),
            consumer_id: format!("{}:{shard}", env.instance_id),
            info,
            shard,
            stop,
            abort,
            lost: CancellationToken::new(),
            lost_reason: Arc::new(Mutex::new(None)),
            lease: None,
            position: None,
            idle_delay: idle,
            fetch_errors: 0,
            max_batches: None,
            batches: 0,
            report: BatchReport::default(),
            tracker,
            prefetched: None,
            busy: Arc::new(Busy::new()),
            shard_limiter: env
                .shard_options
                .max_records_per_second
                .map(RecordBucket::new),
            confirmed_trouble: env.store_trouble.load(Ordering::SeqCst),
            rebalanced: Arc::new(AtomicBool::new(false)),
            paused: false,
            subscription: None,
            env,
        }
    }

    /// The flag the coordinator sets before stopping this consumer for a handoff (the
    /// disconnect reason is then `rebalance`).
    pub(crate) fn rebalance_flag(&self) -> Arc<AtomicBool> {
        self.rebalanced.clone()
    }

    /// Cancelled when the lease is lost (the consumer may still be waiting for a stuck call).
    pub(crate) fn lost_token(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stop after `n` handled batches (for `consume_batch`).
    pub(crate) fn max_batches(mut self, n: usize) -> Self {
        self.max_batches = Some(n);
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
            && self.lost.is_cancelled()
            && !matches!(state, State::LeaseLost(_) | State::Stopped(_))
        {
            return self.lost_state();
        }
        match state {
            State::Acquiring => self.acquire(done).await,
            State::InitIterator => self.init_iterator().await,
            State::Fetching { iterator } => self.fetch(iterator).await,
            State::Processing {
                records,
                next,
                failures,
            } => self.process(records, next, failures).await,
            State::Checkpointing {
                sequence,
                next,
                records,
            } => self.checkpoint(sequence, next, records).await,
            State::Backoff { delay, then } => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => *then,
                    _ = self.stop.cancelled() => State::Releasing(ShardExit::Stopped),
                    _ = self.lost.cancelled() => *then,
                }
            }
            State::Finishing => {
                if let Some(lease) = &self.lease {
                    match self.env.store.finish(lease).await {
                        Ok(true) => State::Releasing(ShardExit::Finished),
                        Ok(false) => State::LeaseLost("fenced while finishing".into()),
                        Err(e) => State::Releasing(ShardExit::Failed(e.to_string())),
                    }
                } else {
                    State::Stopped(ShardExit::Finished)
                }
            }
            State::Releasing(exit) => {
                if let Some(lease) = &self.lease
                    && let Err(e) = self.env.store.release(lease).await
                {
                    tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: lease release failed; it expires on its own");
                }
                let reason = match &exit {
                    ShardExit::Failed(e) => DisconnectReason::Error(e.clone()),
                    ShardExit::Stopped if self.rebalanced.load(Ordering::SeqCst) => {
                        DisconnectReason::Rebalance
                    }
                    _ if self.env.shut.load(std::sync::atomic::Ordering::SeqCst) => {
                        DisconnectReason::Shutdown
                    }
                    _ => DisconnectReason::Stopped,
                };
                self.emit(|| LifecycleEvent::ConsumerDisconnected {
                    consumer: self.info.clone(),
                    reason,
                });
                State::Stopped(exit)
            }
            State::LeaseLost(reason) => {
                let epoch = self.lease.as_ref().map_or(0, |l| l.epoch);
                tracing::warn!(shard = %self.shard, epoch, reason, "mq-kinesis: lease lost, shard consumer stops");
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
            State::Stopped(exit) => State::Stopped(exit),
        }
    }

    async fn acquire(&mut self, done: &CancellationToken) -> State {
        let ttl = self.env.options.get_lease_duration();
        match self
            .env
            .store
            .acquire(self.stream(), &self.shard, &self.env.instance_id, ttl)
            .await
        {
            Ok(Some(lease)) => {
                let lease = Arc::new(lease);
                self.position = lease.checkpoint.clone();
                self.lease = Some(lease.clone());
                self.tracker.spawn(renew_loop(
                    self.env.store.clone(),
                    lease,
                    ttl,
                    self.env.shard_options.renew_attempts,
                    self.lost.clone(),
                    self.lost_reason.clone(),
                    done.clone(),
                    self.busy.clone(),
                    self.env.store_trouble.clone(),
                ));
                self.emit(|| LifecycleEvent::ConsumerConnected {
                    consumer: self.info.clone(),
                });
                State::InitIterator
            }
            Ok(None) => State::Stopped(ShardExit::NotAcquired),
            Err(e) => {
                self.env.store_trouble.fetch_add(1, Ordering::SeqCst);
                State::Stopped(ShardExit::Failed(e.to_string()))
            }
        }
    }

    fn fetch_error(&mut self, code: Option<&str>, text: String, then: State) -> State {
        if is_throttle(code) {
            // K3: throttling backs off and is never an error
            self.env
                .strategy
                .record(&self.key, &BatchResult::throttled());
            tracing::debug!(shard = %self.shard, "mq-kinesis: throttled, backing off");
            return State::Backoff {
                delay: self.env.strategy.delay(&self.key),
                then: Box::new(then),
            };
        }
        self.fetch_errors += 1;
        tracing::warn!(shard = %self.shard, errors = self.fetch_errors, error = %text, "mq-kinesis: fetch failed");
        if self.fetch_errors >= self.env.shard_options.max_fetch_errors {
            return State::Releasing(ShardExit::Failed(text));
        }
        // exponential from the poll interval, capped at 30 s
        let base = self
            .env
            .options
            .get_poll_interval()
            .max(Duration::from_millis(50));
        State::Backoff {
            delay: (base * 2u32.saturating_pow(self.fetch_errors.min(16)))
                .min(Duration::from_secs(30)),
            then: Box::new(then),
        }
    }

    async fn init_iterator(&mut self) -> State {
        if self.stop.is_cancelled() {
            return State::Releasing(ShardExit::Stopped);
        }
        if let Some(state) = self.fan_out_init().await {
            return state;
        }
        let mut req = self
            .env
            .client
            .get_shard_iterator()
            .stream_name(self.stream())
            .shard_id(&self.shard);
        req = match (&self.position, self.env.shard_options.initial_position) {
            (Some(seq), _) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            (None, InitialPosition::TrimHorizon) => {
                req.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            (None, InitialPosition::Latest) => req.shard_iterator_type(ShardIteratorType::Latest),
            (None, InitialPosition::AtTimestamp(at)) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_smithy_types::DateTime::from_millis(
                    at.timestamp_millis(),
                )),
        };
        match req.send().await {
            Ok(out) => match out.shard_iterator() {
                Some(it) => State::Fetching {
                    iterator: it.to_owned(),
                },
                None => State::Finishing,
            },
            Err(e) => {
                let code = e.code().map(str::to_owned);
                self.fetch_error(code.as_deref(), error_text(&e), State::InitIterator)
            }
        }
    }

    async fn fetch(&mut self, iterator: String) -> State {
        if self.stop.is_cancelled() || self.max_batches.is_some_and(|m| self.batches >= m) {
            return State::Releasing(ShardExit::Stopped);
        }
        if self.env.strategy.should_back_off(&self.key) {
            return State::Backoff {
                delay: self.env.strategy.delay(&self.key),
                then: Box::new(State::Fetching { iterator }),
            };
        }
        // backpressure: a slow or failing handler spaces the reads out
        let pause = self.env.strategy.fetch_pause(&self.key);
        if !self.paused && !pause.is_zero() && self.max_batches.is_none() {
            self.paused = true;
            return State::Backoff {
                delay: pause,
                then: Box::new(State::Fetching { iterator }),
            };
        }
        self.paused = false;
        let mut limit = self.env.strategy.batch_size(&self.key).clamp(1, 10_000);
        if self.max_batches.is_some() {
            // on-demand batches honour the caller's batch size
            limit = limit.min(self.env.options.get_batch_size());
        }
        // a hung call must not keep the lease: see `Busy` and the renewal loop
        let (busy, lost) = (self.busy.clone(), self.lost.clone());
        busy.enter("GetRecords", self.env.shard_options.stall_timeout);
        let read = async {
            if self.subscription.is_some() {
                return self.fan_out_fetch(limit).await.map(Ok);
            }
            Ok(match self.prefetched.take() {
                Some((from, handle)) if from == iterator => match handle.await {
                    Ok(sent) => sent,
                    // the prefetch task panicked or was cancelled: read again
                    Err(_) => get_records(self.env.client.clone(), iterator.clone(), limit).await,
                },
                _ => get_records(self.env.client.clone(), iterator.clone(), limit).await,
            })
        };
        let read = tokio::select! {
            read = read => read,
            _ = lost.cancelled() => {
                busy.leave();
                return self.lost_state();
            }
        };
        busy.leave();
        let sent = match read {
            Ok(sent) => sent,
            Err(state) => return state,
        };
        match sent {
            Ok(out) => {
                self.fetch_errors = 0;
                let next = out.next_shard_iterator().map(str::to_owned);
                let millis_behind_latest = out
                    .millis_behind_latest()
                    .and_then(|ms| u64::try_from(ms).ok());
                let records = out.records;
                self.emit(|| LifecycleEvent::RecordsFetched {
                    consumer: self.info.clone(),
                    records: records.len(),
                    millis_behind_latest,
                });
                // Read the next batch while this one is handled: the round trip to Kinesis
                // overlaps the handler and the checkpoint instead of adding to them. Only for
                // the continuous consumer, after a non-empty read, and not while the adaptive
                // strategy asks this shard to slow down.
                if let Some(next) = &next
                    && !records.is_empty()
                    && self.max_batches.is_none()
                    && self.subscription.is_none()
                    && !self.env.strategy.should_back_off(&self.key)
                    && self.env.strategy.fetch_pause(&self.key).is_zero()
                {
                    let limit = self.env.strategy.batch_size(&self.key).clamp(1, 10_000);
                    let handle =
                        tokio::spawn(get_records(self.env.client.clone(), next.clone(), limit));
                    self.prefetched = Some((next.clone(), AbortOnDropHandle::new(handle)));
                }
                if records.is_empty() {
                    if self.max_batches.is_some() {
                        self.batches += 1;
                    }
                    return match next {
                        None => State::Finishing,
                        Some(it) => {
                            let delay = self.idle_delay;
                            self.idle_delay =
                                (delay * 2).min(self.env.options.get_max_poll_interval());
                            State::Backoff {
                                delay,
                                then: Box::new(State::Fetching { iterator: it }),
                            }
                        }
                    };
                }
                self.idle_delay = self.env.options.get_poll_interval();
                let from = self.position.clone().unwrap_or_else(|| "start".into());
                let failures = match self
                    .env
                    .store
                    .record_failure(self.stream(), &self.shard, &from)
                    .await
                {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: cannot count the batch start");
                        1
                    }
                };
                State::Processing {
                    records,
                    next,
                    failures,
                }
            }
            Err(e) => {
                let code = e.code().map(str::to_owned);
                if code.as_deref() == Some("ExpiredIteratorException") {
                    return State::InitIterator;
                }
                self.fetch_error(
                    code.as_deref(),
                    error_text(&e),
                    State::Fetching { iterator },
                )
            }
        }
    }

    async fn checkpoint(&mut self, sequence: String, next: Option<String>, records: u64) -> State {
        let Some(lease) = self.lease.clone() else {
            return State::Stopped(ShardExit::Stopped);
        };
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(5)
            .build();
        loop {
            match self.env.store.checkpoint(&lease, &sequence).await {
                Ok(CheckpointOutcome::Fenced) => {
                    return State::LeaseLost("checkpoint refused by the fence".into());
                }
                Ok(_) => break,
                Err(e) => match delays.next() {
                    Some(d) => {
                        tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: checkpoint failed, retrying");
                        tokio::time::sleep(d).await;
                    }
                    None => {
                        // the handled records are delivered again by whoever reads next
                        return State::Releasing(ShardExit::Failed(format!(
                            "checkpoint failed: {e}"
                        )));
                    }
                },
            }
        }
        self.position = Some(sequence.clone());
        self.batches += 1;
        if let Err(e) = self
            .env
            .store
            .clear_failures(self.stream(), &self.shard)
            .await
        {
            tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: cannot clear failure counts");
        }
        self.emit(|| LifecycleEvent::Checkpoint {
            consumer: self.info.clone(),
            checkpoint: sequence.clone(),
            records_since_last: records,
        });
        match next {
            Some(iterator) => State::Fetching { iterator },
            None => State::InitIterator,
        }
    }

    async fn process(
        &mut self,
        mut records: Vec<Record>,
        mut next: Option<String>,
        failures: u32,
    ) -> State {
        let threshold = self.env.shard_options.poison_threshold;
        if failures > 1 && records.len() > 1 {
            // an earlier start from this checkpoint never completed: isolate the first record
            records.truncate(1);
            next = None;
        }
        let Some(last) = records.last().map(|r| r.sequence_number().to_owned()) else {
            return State::InitIterator;
        };
        let count = records.len() as u64;
        let mut letters: Vec<DeadLetter> = Vec::new();
        let mut messages: Vec<(Message, String)> = Vec::new();
        for r in &records {
            let seq = r.sequence_number().to_owned();
            let arrival = r
                .approximate_arrival_timestamp()
                .and_then(|t| t.to_millis().ok())
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                .unwrap_or_else(Utc::now);
            match decode_record(
                r.data().as_ref(),
                &self.env.queue,
                &self.shard,
                &seq,
                arrival,
            ) {
                Ok(m) => messages.push((m, seq)),
                Err(e) => {
                    let m = self.placeholder(&seq, r.data().as_ref(), arrival);
                    letters.push(self.letter(m, &seq, ErrorChain::from_error(&e), false));
                }
            }
        }
        if failures > threshold {
            // K1: the record at the checkpoint kept failing (crashes and other instances included)
            let from = self.position.clone().unwrap_or_else(|| "start".into());
            for (m, seq) in messages.drain(..) {
                let e = ErrorChain::msg(format!(
                    "poison pill: processing from checkpoint {from} failed {} times",
                    failures - 1
                ));
                letters.push(self.letter(m, &seq, e, true));
            }
            if !self.deliver_letters(letters).await {
                return self.interrupted();
            }
            let mut result = BatchResult::failure(records.len(), records.len());
            result.poison_pill = true;
            self.env.strategy.record(&self.key, &result);
            self.emit(|| LifecycleEvent::PoisonPill {
                consumer: self.info.clone(),
                checkpoint: from.clone(),
                failures: failures - 1,
                records: records.len(),
            });
            return State::Checkpointing {
                sequence: last,
                next,
                records: count,
            };
        }
        if !letters.is_empty() && !self.deliver_letters(std::mem::take(&mut letters)).await {
            return self.interrupted();
        }
        if !self.confirm_lease().await || !self.take_tokens(messages.len()).await {
            return self.interrupted();
        }
        match self.handle_in_place(messages).await {
            Ok(()) => State::Checkpointing {
                sequence: last,
                next,
                records: count,
            },
            Err(()) => {
                if !self.lost.is_cancelled() {
                    // a graceful stop is no failure of the batch: do not count it towards a
                    // poison pill (a crash never gets here, so crashes still count)
                    let _ = self
                        .env
                        .store
                        .clear_failures(self.stream(), &self.shard)
                        .await;
                }
                self.interrupted()
            }
        }
    }

    /// Before a batch goes to the handler: when a call to the lease store failed since the lease
    /// was last confirmed (here or anywhere in this instance), renew it first, and wait while the
    /// store is unreachable. A store that came back empty (a Redis restart without persistence)
    /// answers "not yours", and the consumer stops before another instance can have started on
    /// the shard, so no batch is ever handled by two instances at once. False when the lease is
    /// gone or the consumer is stopping.
    async fn confirm_lease(&mut self) -> bool {
        let Some(lease) = self.lease.clone() else {
            return true;
        };
        let ttl = self.env.options.get_lease_duration();
        let mut delay = Duration::from_millis(100);
        loop {
            let trouble = self.env.store_trouble.load(Ordering::SeqCst);
            if trouble == self.confirmed_trouble {
                return true;
            }
            match self.env.store.renew(&lease, ttl).await {
                Ok(true) => {
                    self.confirmed_trouble = trouble;
                    return true;
                }
                Ok(false) => {
                    *self.lost_reason.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some("lease gone after a lease-store outage".into());
                    self.lost.cancel();
                    return false;
                }
                Err(e) => {
                    self.env.store_trouble.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: lease store unreachable, pausing the shard");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.cancelled() => return false,
                        _ = self.lost.cancelled() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Waits until the shard's and the instance's buckets let `n` records through. False when
    /// stopped meanwhile.
    async fn take_tokens(&self, n: usize) -> bool {
        let take = async {
            if let Some(b) = &self.shard_limiter {
                b.take(n).await;
            }
            if let Some(b) = &self.env.instance_limiter {
                b.take(n).await;
            }
        };
        tokio::select! {
            () = take => true,
            _ = self.stop.cancelled() => false,
            _ = self.lost.cancelled() => false,
        }
    }

    fn lost_state(&self) -> State {
        let reason = self
            .lost_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "lease not renewable".into());
        State::LeaseLost(reason)
    }

    fn interrupted(&self) -> State {
        if self.lost.is_cancelled() {
            self.lost_state()
        } else {
            State::Releasing(ShardExit::Stopped)
        }
    }

    fn placeholder(&self, seq: &str, data: &[u8], at: DateTime<Utc>) -> Message {
        let id = MessageId::new(format!("{}:{seq}", self.shard))
            .or_else(|_| MessageId::new(seq))
            .unwrap_or_else(|_| self.env.common.get_id_generator().next_id());
        let mut m = Message::new(
            id,
            self.env.queue.clone(),
            "undecodable",
            serde_json::Value::String(String::from_utf8_lossy(data).into_owned()),
            at,
        );
        m.status = Status::Failed;
        m
    }

    fn letter(&self, m: Message, seq: &str, error: ErrorChain, exhausted: bool) -> DeadLetter {
        DeadLetter::new(
            m,
            DeadLetterOrigin::shard(BACKEND, self.shard.clone(), seq),
            error,
            exhausted,
            self.consumer_id.clone(),
        )
    }

    /// Hands letters to the dead-letter hook, retrying until it accepts them; false when stopped
    /// or the lease was lost meanwhile (nothing is checkpointed then).
    async fn deliver_letters(&mut self, letters: Vec<DeadLetter>) -> bool {
        if letters.is_empty() {
            return true;
        }
        let infos: Vec<(MessageInfo, ErrorChain, bool)> = letters
            .iter()
            .map(|l| {
                (
                    MessageInfo::of(&l.message, BACKEND),
                    l.error.clone(),
                    l.exhausted,
                )
            })
            .collect();
        let Some(sink) = self.env.common.get_dead_letters().cloned() else {
            for (info, error, exhausted) in infos {
                tracing::error!(message_id = %info.message_id, error = %error, "mq-kinesis: message failed for good and no dead-letter hook is configured");
                self.emit(|| LifecycleEvent::Failed {
                    message: info.clone(),
                    consumer_id: self.consumer_id.clone(),
                    error: error.clone(),
                    exhausted,
                });
            }
            self.report.failed += letters.len();
            return true;
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match sink.dead_letter(letters.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "mq-kinesis: dead-letter hook failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.abort.cancelled() => return false,
                        _ = self.lost.cancelled() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.report.dead_lettered += infos.len();
        for (info, error, exhausted) in infos {
            self.emit(|| LifecycleEvent::Failed {
                message: info.clone(),
                consumer_id: self.consumer_id.clone(),
                error: error.clone(),
                exhausted,
            });
            self.emit(|| LifecycleEvent::DeadLettered {
                message: info.clone(),
                consumer_id: self.consumer_id.clone(),
                error: error.clone(),
            });
        }
        true
    }

    /// Runs the handler until every message is acked or dead-lettered; Err when stopped hard or
    /// the lease was lost (the batch is then left for the next owner).
    async fn handle_in_place(&mut self, messages: Vec<(Message, String)>) -> Result<(), ()> {
        let retry = self.env.options.get_retry().clone();
        let mut pending = messages;
        let mut types: Vec<String> = Vec::new();
        for (m, _) in &pending {
            if !types.contains(&m.message_type) {
                types.push(m.message_type.clone());
            }
        }
        let total = pending.len();
        let mut failed_types: Vec<String> = Vec::new();
        let started = tokio::time::Instant::now();
        let mut failures = 0;
        while !pending.is_empty() {
            let now = Utc::now();
            for (m, _) in pending.iter_mut() {
                m.attempts += 1;
                m.status = Status::Processing;
                m.processing_started_at = Some(now);
            }
            let (messages, seqs): (Vec<Message>, Vec<String>) = pending.into_iter().unzip();
            let batch = Batch::from(messages);
            self.report.delivered += batch.len();
            if self.env.common.get_lifecycle().is_active() {
                for m in batch.iter() {
                    let age = (now - m.created_at).to_std().unwrap_or_default();
                    self.emit(|| LifecycleEvent::Consumed {
                        message: MessageInfo::of(m, BACKEND),
                        consumer_id: self.consumer_id.clone(),
                        age,
                    });
                }
            }
            let run_started = tokio::time::Instant::now();
            self.busy.enter(
                "the handler",
                self.env.options.get_handler_timeout() + self.env.shard_options.stall_timeout,
            );
            let (outcomes, timed_out) = self.run_handler(batch.clone()).await;
            self.busy.leave();
            let handler_duration = run_started.elapsed();
            if self.lost.is_cancelled() {
                return Err(());
            }
            if timed_out {
                self.report.cancelled = true;
            }
            let mut still: Vec<(Message, String)> = Vec::new();
            let mut letters = Vec::new();
            let mut wait = Duration::ZERO;
            for (m, seq) in batch.iter().zip(seqs) {
                let outcome = if timed_out {
                    Outcome::Retry {
                        after: None,
                        error: Some(ErrorChain::msg(format!(
                            "handler timed out after {:?}",
                            self.env.options.get_handler_timeout()
                        ))),
                    }
                } else {
                    match outcomes.get(&m.id) {
                        o @ (Outcome::Ack
                        | Outcome::Retry { .. }
                        | Outcome::Fail { .. }
                        | Outcome::DeadLetter { .. }) => o.clone(),
                        // an outcome this version does not know: deliver again
                        _ => Outcome::retry(),
                    }
                };
                match outcome {
                    Outcome::Ack => {
                        self.report.acked += 1;
                        self.emit(|| LifecycleEvent::Acked {
                            message: MessageInfo::of(m, BACKEND),
                            consumer_id: self.consumer_id.clone(),
                            handler_duration,
                        });
                    }
                    Outcome::Retry { after, error } => {
                        failures += 1;
                        if !failed_types.contains(&m.message_type) {
                            failed_types.push(m.message_type.clone());
                        }
                        if retry.is_exhausted(m) {
                            let e = error.unwrap_or_else(|| ErrorChain::msg("attempts exhausted"));
                            letters.push(self.letter(m.clone(), &seq, e, true));
                        } else {
                            let delay = after.unwrap_or_else(|| retry.delay_for(m));
                            wait = wait.max(delay);
                            self.report.retried += 1;
                            self.emit(|| LifecycleEvent::Retried {
                                message: MessageInfo::of(m, BACKEND),
                                consumer_id: self.consumer_id.clone(),
                                delay,
                                error: error.clone(),
                            });
                            still.push((m.clone(), seq));
                        }
                    }
                    Outcome::DeadLetter { error } | Outcome::Fail { error } => {
                        failures += 1;
                        if !failed_types.contains(&m.message_type) {
                            failed_types.push(m.message_type.clone());
                        }
                        letters.push(self.letter(m.clone(), &seq, error, false));
                    }
                    // unknown outcomes were turned into retries above
                    _ => still.push((m.clone(), seq)),
                }
            }
            if !self.deliver_letters(letters).await {
                return Err(());
            }
            pending = still;
            if !pending.is_empty() {
                // stopping abandons the retries: the batch is delivered again from the checkpoint
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.stop.cancelled() => return Err(()),
                    _ = self.abort.cancelled() => return Err(()),
                    _ = self.lost.cancelled() => return Err(()),
                }
            }
        }
        let result = if failures == 0 {
            BatchResult::success(total, started.elapsed())
        } else {
            BatchResult::failure(total, failures.min(total))
        };
        self.env
            .strategy
            .record(&self.key, &result.with_types(types, failed_types));
        Ok(())
    }

    /// Runs the handler once; cancels its token at the timeout, when the lease is lost, or on
    /// abort, and always waits for it to return (K4).
    async fn run_handler(&self, batch: Batch) -> (Outcomes, bool) {
        let timeout = self.env.options.get_handler_timeout();
        let token = self.abort.child_token();
        let deadline = tokio::time::Instant::now() + timeout;
        let ctx = HandlerContext::new(
            self.env.queue.clone(),
            self.consumer_id.clone(),
            Some(self.shard.clone()),
            token.clone(),
            Some(deadline),
        );
        let span = batch.tracing_span(BACKEND, Some(&self.shard));
        let fut = AssertUnwindSafe(tracing::Instrument::instrument(
            self.env.handler.handle(batch, ctx),
            span,
        ))
        .catch_unwind();
        tokio::pin!(fut);
        let mut timed_out = false;
        let result = loop {
            tokio::select! {
                r = &mut fut => break r,
                _ = tokio::time::sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    tracing::warn!(shard = %self.shard, ?timeout, "mq-kinesis: handler timed out, cancelling it and waiting for it to return");
                    token.cancel();
                }
                _ = self.lost.cancelled(), if !token.is_cancelled() => token.cancel(),
            }
        };
        match result {
            Ok(outcomes) => (outcomes, timed_out),
            Err(_) => (
                Outcomes::retry_all(ErrorChain::msg("handler panicked")),
                timed_out,
            ),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn renew_loop(
    store: Arc<dyn LeaseStore>,
    lease: Arc<Lease>,
    ttl: Duration,
    attempts: u32,
    lost: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    done: CancellationToken,
    busy: Arc<Busy>,
    trouble: Arc<AtomicU64>,
) {
    let interval = ttl / 3;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // renewal is tied to progress: a consumer stuck in a call lets its lease lapse
        if let Some(stuck) = busy.stalled() {
            tracing::warn!(shard = %lease.shard, stuck, "mq-kinesis: shard consumer is stuck");
            *reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(stuck);
            lost.cancel();
            return;
        }
        // K2: retry with backoff, within what is left of the lease
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(ttl / 20)
            .with_max_delay(ttl / 6)
            .with_max_times(attempts.saturating_sub(1) as usize)
            .build();
        let failure = loop {
            match store.renew(&lease, ttl).await {
                Ok(true) => break None,
                Ok(false) => break Some("lease taken over or released".to_owned()),
                Err(e) => match delays.next() {
                    Some(d) => {
                        trouble.fetch_add(1, Ordering::SeqCst);
                        tracing::warn!(shard = %lease.shard, error = %e, "mq-kinesis: lease renewal failed, retrying");
                        tokio::select! {
                            _ = done.cancelled() => return,
                            _ = tokio::time::sleep(d) => {}
                        }
                    }
                    None => break Some(format!("renewal failed {attempts} times: {e}")),
                },
            }
        };
        if let Some(r) = failure {
            *reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            lost.cancel();
            return;
        }
    }
}

/// The `Fetching` iterator of enhanced fan-out: the batches come from the subscription.
const FAN_OUT_ITERATOR: &str = "enhanced-fan-out";

/// Enhanced fan-out: a subscription instead of shard iterators; everything after the read is the
/// polling code.
impl ShardConsumer {
    /// Opens the subscription at the checkpoint (or keeps the open one when it has handed out
    /// exactly up to the checkpoint); None when polling.
    async fn fan_out_init(&mut self) -> Option<State> {
        let FetchMode::EnhancedFanOut { consumer_name } = &self.env.shard_options.fetch_mode else {
            return None;
        };
        if self.max_batches.is_some() {
            // one subscription per on-demand batch would run into AWS's 5-second rule: poll
            return None;
        }
        let fetching = State::Fetching {
            iterator: FAN_OUT_ITERATOR.to_owned(),
        };
        if self
            .subscription
            .as_ref()
            .is_some_and(|s| !s.is_dead() && s.last_sequence_number() == self.position.as_deref())
        {
            return Some(fetching);
        }
        // one subscription per shard and consumer: close the old one first
        self.subscription = None;
        let arns = self.env.shard_options.fan_out_consumers.clone();
        let arn = tokio::select! {
            arn = arns.get(&self.env.client, self.stream(), consumer_name) => arn,
            _ = self.stop.cancelled() => return Some(State::Releasing(ShardExit::Stopped)),
            _ = self.lost.cancelled() => return Some(self.lost_state()),
        };
        let arn = match arn {
            Ok(arn) => arn,
            Err(e) => {
                return Some(self.fetch_error(e.code(), error_text(&e), State::InitIterator));
            }
        };
        let from = match (&self.position, self.env.shard_options.initial_position) {
            (Some(seq), _) => StartPosition::AfterSequenceNumber(seq.clone()),
            (None, InitialPosition::TrimHorizon) => StartPosition::TrimHorizon,
            (None, InitialPosition::Latest) => StartPosition::Latest,
            (None, InitialPosition::AtTimestamp(at)) => StartPosition::AtTimestamp(at),
        };
        tracing::debug!(shard = %self.shard, ?from, "mq-kinesis: subscribing to the shard");
        self.subscription = Some(Subscription::start(
            self.env.client.clone(),
            arn,
            self.shard.clone(),
            from,
            self.env.shard_options.resubscribe_interval,
        ));
        Some(fetching)
    }

    /// The next batch from the subscription, as a GetRecords output (no next iterator once the
    /// shard ended), so the rest of `fetch` is the polling code; Err with the next state when
    /// stopped, when the lease was lost, or on an error.
    ///
    /// Heartbeats (events without records) are reported as fetches of nothing and waited past:
    /// the next event is awaited, not polled for.
    async fn fan_out_fetch(&mut self, limit: usize) -> Result<GetRecordsOutput, State> {
        enum Got {
            Batch(crate::Result<crate::fanout::FanOutBatch>),
            Stopped,
            Lost,
        }
        loop {
            let Some(sub) = self.subscription.as_mut() else {
                return Err(State::InitIterator);
            };
            let got = tokio::select! {
                biased;
                _ = self.stop.cancelled() => Got::Stopped,
                _ = self.lost.cancelled() => Got::Lost,
                b = sub.next(limit) => Got::Batch(b),
            };
            let batch = match got {
                Got::Stopped => return Err(State::Releasing(ShardExit::Stopped)),
                Got::Lost => return Err(self.lost_state()),
                Got::Batch(Ok(b)) => b,
                Got::Batch(Err(e)) => {
                    let then = if sub.is_dead() {
                        // the subscription's task is gone: open a new one
                        self.subscription = None;
                        State::InitIterator
                    } else if e.code() == Some("ResourceNotFoundException") {
                        // the stream consumer was deleted: register it again
                        if let (Some(sub), FetchMode::EnhancedFanOut { consumer_name }) =
                            (self.subscription.take(), &self.env.shard_options.fetch_mode)
                        {
                            self.env.shard_options.fan_out_consumers.forget(
                                &self.env.client,
                                self.env.queue.as_str(),
                                consumer_name,
                                sub.consumer_arn(),
                            );
                        }
                        State::InitIterator
                    } else {
                        State::Fetching {
                            iterator: FAN_OUT_ITERATOR.to_owned(),
                        }
                    };
                    return Err(self.fetch_error(e.code(), error_text(&e), then));
                }
            };
            if batch.records.is_empty() && !batch.ended {
                self.fetch_errors = 0;
                // an empty event is a sign of life: only a subscription silent for the whole
                // stall timeout counts as stuck
                self.busy
                    .enter("SubscribeToShard", self.env.shard_options.stall_timeout);
                self.emit(|| LifecycleEvent::RecordsFetched {
                    consumer: self.info.clone(),
                    records: 0,
                    millis_behind_latest: batch.millis_behind_latest,
                });
                continue;
            }
            return GetRecordsOutput::builder()
                .set_records(Some(batch.records))
                .set_next_shard_iterator((!batch.ended).then(|| FAN_OUT_ITERATOR.to_owned()))
                .set_millis_behind_latest(
                    batch
                        .millis_behind_latest
                        .and_then(|ms| i64::try_from(ms).ok()),
                )
                .set_child_shards(Some(batch.child_shards).filter(|c| !c.is_empty()))
                .build()
                .map_err(|e| State::Releasing(ShardExit::Failed(e.to_string())));
        }
    }
}
