//! [`ShardOptions`]: the settings of the shard consumers that are not in [`ConsumerOptions`].

use std::num::NonZeroU32;
use std::time::Duration;

#[cfg(doc)]
use mq_core::ConsumerOptions;

use crate::fanout::{ConsumerArns, DEFAULT_RESUBSCRIBE_INTERVAL, FetchMode};
use crate::position::StartPosition;

/// The least time between two `GetRecords` calls on one shard by default.
const DEFAULT_MIN_READ_INTERVAL: Duration = Duration::from_millis(200);

/// How long one call to the lease store from a shard consumer may take by default.
const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the shard consumers that are not in [`ConsumerOptions`].
///
/// The lease lasts [`ConsumerOptions::lease_duration`] and is renewed every third of it; the
/// handler timeout, retry policy and idle polling also come from [`ConsumerOptions`].
///
/// Defaults: trim horizon, 3 renewal attempts, poison pill after 3 failures from one checkpoint,
/// lease released after 10 fetch errors in a row, a stall timeout of 60 s, 200 ms at least
/// between two reads of a shard, 5 s for a call to the lease store, no rate limit,
/// [`FetchMode::Polling`] (with enhanced fan-out: a new subscription every 4 min 30 s).
///
/// # Examples
///
/// ```
/// use mq_kinesis::{ShardOptions, StartPosition};
///
/// let opts = ShardOptions::default().initial_position(StartPosition::Latest).poison_threshold(5);
/// assert_eq!(opts.get_poison_threshold(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct ShardOptions {
    initial_position: StartPosition,
    renew_attempts: u32,
    poison_threshold: u32,
    max_fetch_errors: u32,
    stall_timeout: Duration,
    store_timeout: Duration,
    min_read_interval: Duration,
    max_records_per_second: Option<NonZeroU32>,
    fetch_mode: FetchMode,
    resubscribe_interval: Duration,
    fan_out_consumers: ConsumerArns,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            initial_position: StartPosition::TrimHorizon,
            renew_attempts: 3,
            poison_threshold: 3,
            max_fetch_errors: 10,
            stall_timeout: Duration::from_secs(60),
            store_timeout: DEFAULT_STORE_TIMEOUT,
            min_read_interval: DEFAULT_MIN_READ_INTERVAL,
            max_records_per_second: None,
            fetch_mode: FetchMode::Polling,
            resubscribe_interval: DEFAULT_RESUBSCRIBE_INTERVAL,
            fan_out_consumers: ConsumerArns::default(),
        }
    }
}

impl ShardOptions {
    mq_core::__option_setters! {
        /// Where a shard without a checkpoint and without lineage starts (a shard with a checkpoint
        /// continues right after it; the child of a split or a merge whose parent is still listed
        /// starts at its trim horizon, so nothing written to it before it is read is skipped).
        initial_position(p: StartPosition) p;
        /// Renewal attempts (with backoff) before the lease is given up.
        renew_attempts(n: u32) n.max(1);
        /// Failures from one checkpoint (counted in the lease store, crashes included) before the
        /// record there is a poison pill.
        poison_threshold(n: u32) n.max(1);
        /// Failed fetches in a row (throttling excluded) before the lease is released.
        max_fetch_errors(n: u32) n.max(1);
        /// How long a fetch may hang, or a handler run past its timeout, before the consumer stops
        /// renewing its lease so the shard moves to another consumer. The stuck call is still waited
        /// for (nothing it does afterwards is checkpointed: the lease's fence refuses it).
        stall_timeout(d: Duration) d.max(Duration::from_millis(1));
        /// How long one call of a shard consumer to the lease store (acquire, renew, checkpoint,
        /// failure counts, release) may take (default 5 s; a renewal gets at most a third of the
        /// lease duration). A call past it fails like any failed call: a checkpoint is retried
        /// and then the lease released, a renewal is retried and then the lease given up, so the
        /// shard moves instead of hanging. Once a stop's grace period is over, a call in flight
        /// is abandoned: stopping never waits on a lease store that does not answer.
        store_timeout(d: Duration) d.max(Duration::from_millis(1));
        /// The least time between two `GetRecords` calls on one shard (default 200 ms: AWS allows
        /// five per second per shard, shared by every application reading it). Polling only.
        min_read_interval(d: Duration) d;
        /// A token bucket on each shard: at most `n` records per second are handed to the handler
        /// (the bucket holds a fifth of a second's worth, so the rate holds over short windows too).
        /// For a cap on the whole instance see
        /// [`KinesisOptions::max_records_per_second`](crate::KinesisOptions::max_records_per_second).
        max_records_per_second(n: NonZeroU32) Some(n);
    }
    /// The stall timeout.
    pub fn get_stall_timeout(&self) -> Duration {
        self.stall_timeout
    }
    /// How long one call to the lease store may take.
    pub fn get_store_timeout(&self) -> Duration {
        self.store_timeout
    }
    /// The least time between two `GetRecords` calls on one shard.
    pub fn get_min_read_interval(&self) -> Duration {
        self.min_read_interval
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
    pub fn get_initial_position(&self) -> &StartPosition {
        &self.initial_position
    }
    /// The renewal attempts.
    pub fn get_renew_attempts(&self) -> u32 {
        self.renew_attempts
    }
    /// The failed fetches in a row before the lease is released.
    pub fn get_max_fetch_errors(&self) -> u32 {
        self.max_fetch_errors
    }
    /// The stream consumer ARNs, looked up once and shared by every clone of these options.
    pub(crate) fn fan_out_consumers(&self) -> &ConsumerArns {
        &self.fan_out_consumers
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
