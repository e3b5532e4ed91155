//! `KinesisQueue`: the [`MessageQueue`] over the producer, the lease store and shard consumers.

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use mq_core::backend::{
    AdaptiveStrategy, AimdStrategy, ConsumerStopper, RegisteredQueues, prepare_messages,
};
use mq_core::{
    BatchReport, CommonOptions, ConsumerHandle, ConsumerInfo, ConsumerOptions, Handler,
    LifecycleEvent, MessageInfo, MessageQueue, PublishFailure, PublishReport, QueueName,
};
use tokio_util::sync::CancellationToken;

use crate::assignment::eligible_shards;
use crate::consumer::{BACKEND, RecordBucket, ShardConsumer, ShardEnv, ShardOptions};
use crate::coordinator::{Coordinator, FleetSettings};
use crate::error::{Error, error_text, kinesis_size_refusal};
use crate::lease::LeaseStore;
use crate::producer::{KinesisProducer, ProducerOptions};
use crate::shards::{StreamStatus, list_shard_lineage, stream_status};

/// Settings of a [`KinesisQueue`].
///
/// Client settings: region, endpoint URL and credentials come from here when set and
/// from the standard AWS chain (environment, profile, instance metadata) otherwise; or hand in a
/// ready client with [`KinesisOptions::client`].
///
/// Defaults: a random instance id, [`CommonOptions::default`], [`ProducerOptions::default`],
/// [`ShardOptions::default`], an [`AimdStrategy`] with its defaults, a membership check every
/// 250 ms, a heartbeat every second that keeps the instance a member for 5 s, shard listing every
/// 5 s, heartbeat failure event from the 3rd failure in a row, no records/s cap.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use mq_kinesis::{InMemoryLeaseStore, KinesisOptions};
///
/// let opts = KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
///     .region("eu-west-1")
///     .endpoint_url("http://127.0.0.1:4567")
///     .credentials("AKID", "SECRET", None)
///     .instance_id("web-1");
/// assert_eq!(opts.get_instance_id(), "web-1");
/// ```
#[derive(Clone)]
pub struct KinesisOptions {
    lease_store: Arc<dyn LeaseStore>,
    client: Option<Client>,
    region: Option<String>,
    endpoint_url: Option<String>,
    credentials: Option<(String, String, Option<String>)>,
    instance_id: String,
    common: CommonOptions,
    producer: ProducerOptions,
    shard: ShardOptions,
    strategy: Arc<dyn AdaptiveStrategy>,
    discovery_interval: Duration,
    heartbeat_failure_threshold: u32,
    rebalance_interval: Duration,
    heartbeat_interval: Duration,
    membership_ttl: Duration,
    max_records_per_second: Option<NonZeroU32>,
}

impl fmt::Debug for KinesisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisOptions")
            .field("lease_store", &self.lease_store)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("instance_id", &self.instance_id)
            .field("producer", &self.producer)
            .field("shard", &self.shard)
            .field("discovery_interval", &self.discovery_interval)
            .field("rebalance_interval", &self.rebalance_interval)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("membership_ttl", &self.membership_ttl)
            .field("max_records_per_second", &self.max_records_per_second)
            .finish_non_exhaustive()
    }
}

impl KinesisOptions {
    /// Options with leases in `lease_store`.
    pub fn new(lease_store: Arc<dyn LeaseStore>) -> Self {
        KinesisOptions {
            lease_store,
            client: None,
            region: None,
            endpoint_url: None,
            credentials: None,
            instance_id: format!(
                "mq-{}-{}",
                std::process::id(),
                ulid::Ulid::new().to_string().to_lowercase()
            ),
            common: CommonOptions::default(),
            producer: ProducerOptions::default(),
            shard: ShardOptions::default(),
            strategy: Arc::new(AimdStrategy::default()),
            discovery_interval: Duration::from_secs(5),
            heartbeat_failure_threshold: 3,
            rebalance_interval: Duration::from_millis(250),
            heartbeat_interval: Duration::from_secs(1),
            membership_ttl: Duration::from_secs(2),
            max_records_per_second: None,
        }
    }
    mq_core::__option_setters! {
        /// A ready Kinesis client (region, endpoint and credentials options are then ignored).
        client(client: Client) Some(client);
        /// The AWS region.
        region(region: impl Into<String>) Some(region.into());
        /// The endpoint URL (an emulator, a VPC endpoint).
        endpoint_url(url: impl Into<String>) Some(url.into());
    }
    /// Static credentials.
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        self.credentials = Some((
            access_key_id.into(),
            secret_access_key.into(),
            session_token,
        ));
        self
    }
    mq_core::__option_setters! {
        /// This instance's id: the lease owner and membership name. Unique per process.
        instance_id(id: impl Into<String>) id.into();
        /// Lifecycle, dead letters, ids, queue-name resolution.
        common(common: CommonOptions) common;
        /// Producer settings.
        producer(producer: ProducerOptions) producer;
        /// Shard consumer settings.
        shard(shard: ShardOptions) shard;
        /// The adaptive strategy (batch size and delays per shard).
        strategy(strategy: Arc<dyn AdaptiveStrategy>) strategy;
        /// How often the shards are listed again (new shards after resharding). The leases are read
        /// only when the listing, the members or a lease's owner changed (on a lease store that
        /// does not count lease changes, also at this interval).
        discovery_interval(d: Duration) d.max(Duration::from_millis(1));
        /// How often an instance checks the membership (one cheap call to the lease store) and, when
        /// it changed or shards wait to be taken, rebalances. This is how fast a join, a departure or a
        /// released shard is noticed.
        rebalance_interval(d: Duration) d.max(Duration::from_millis(1));
        /// How often an instance renews its membership (1 s; at most a third of the
        /// [`membership_ttl`](KinesisOptions::membership_ttl)). One call to the lease store,
        /// whatever the number of shards the instance holds.
        heartbeat_interval(d: Duration) d.max(Duration::from_millis(1));
        /// How long an instance's membership lasts after its last renewal (2 s; at least three
        /// rebalance intervals, at most [`ConsumerOptions::lease_duration`]). The instance's shard
        /// leases are tied to its membership, so this is how soon the shards of a crashed
        /// instance are taken over: about this TTL plus one rebalance interval.
        ///
        /// An instance that cannot renew its membership in time stops its shard consumers (and
        /// cancels their handlers) a quarter of the TTL before the store can expire it, so no
        /// two instances ever read one shard at once. The trade-off: a pause longer than that
        /// (a stop-the-world pause, a frozen VM, a lease store out of reach) makes the instance
        /// drop its shards and take them again. On networks or hosts with long pauses, raise the
        /// TTL (and crash takeover becomes that much slower).
        ///
        /// ```
        /// use std::sync::Arc;
        /// use std::time::Duration;
        /// use mq_kinesis::{InMemoryLeaseStore, KinesisOptions};
        ///
        /// // tolerate pauses of up to about 7 s; a crashed instance's shards move after ~10 s
        /// let opts = KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
        ///     .membership_ttl(Duration::from_secs(10));
        /// assert_eq!(opts.get_membership_ttl(), Duration::from_secs(10));
        /// ```
        membership_ttl(d: Duration) d.max(Duration::from_millis(1));
        /// A token bucket on the whole instance: at most `n` records per second are handed to
        /// handlers, over all its shards. For a cap per shard see
        /// [`ShardOptions::max_records_per_second`].
        max_records_per_second(n: NonZeroU32) Some(n);
    }
    /// The rebalance interval.
    pub fn get_rebalance_interval(&self) -> Duration {
        self.rebalance_interval
    }
    /// The heartbeat interval.
    pub fn get_heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }
    /// The membership TTL.
    pub fn get_membership_ttl(&self) -> Duration {
        self.membership_ttl
    }
    /// The discovery interval.
    pub fn get_discovery_interval(&self) -> Duration {
        self.discovery_interval
    }
    /// The heartbeat failure threshold.
    pub fn get_heartbeat_failure_threshold(&self) -> u32 {
        self.heartbeat_failure_threshold
    }
    /// Heartbeat failures in a row before the `heartbeat_failure` event fires.
    pub fn heartbeat_failure_threshold(mut self, n: u32) -> Self {
        self.heartbeat_failure_threshold = n.max(1);
        self
    }
    /// The instance id.
    pub fn get_instance_id(&self) -> &str {
        &self.instance_id
    }
    /// The lease store.
    pub fn get_lease_store(&self) -> &Arc<dyn LeaseStore> {
        &self.lease_store
    }

    async fn build_client(&self) -> Client {
        if let Some(c) = &self.client {
            return c.clone();
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &self.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(u) = &self.endpoint_url {
            loader = loader.endpoint_url(u);
        }
        if let Some((id, secret, token)) = &self.credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                id,
                secret,
                token.clone(),
                None,
                "mq-kinesis",
            ));
        }
        Client::new(&loader.load().await)
    }
}

/// Messages on AWS Kinesis streams, one stream per queue.
///
/// Publishing goes through the [`KinesisProducer`]. A consumer is a worker that keeps its
/// instance a member of the stream (one membership record, renewed about every second, with a
/// TTL of [`membership_ttl`](KinesisOptions::membership_ttl)) and reads the shards assigned to
/// it:
///
/// - Crash takeover: the instance's shard leases are tied to its membership, so when the
///   instance dies its shards are free once the membership expires (2 s by default) and are
///   taken by the live instances at their next rebalance; an instance that cannot renew its
///   membership stops its shard consumers before it can expire.
/// - Assignment: every instance computes the same [`balanced_assignment`](crate::balanced_assignment)
///   from the live members and the lease owners, so no instance holds more than one shard above
///   another and a membership change moves as few shards as possible.
/// - Eager rebalance: the membership is checked every
///   [`rebalance_interval`](KinesisOptions::rebalance_interval) (250 ms), so a start or a stop is
///   acted on within about a second; a stopping instance hands its shards off and then leaves
///   the membership.
/// - Graceful handoff: a shard assigned away (or on stop) stops fetching, finishes its batch in
///   flight (cancelled after [`ConsumerOptions::shutdown_grace`]), checkpoints and releases its
///   lease; the new owner takes it at its next check.
/// - Resharding: shards are listed with their lineage; a closed parent is read to its end and
///   marked finished, its children start only after every parent finished (so the order of a
///   partition key holds across a split or a merge), and finished shards are never read again.
/// - Backpressure: the [`AdaptiveStrategy`] sets each shard's fetch size and spaces reads out
///   when the handler is slow; token buckets cap records/s per shard
///   ([`ShardOptions::max_records_per_second`]) or per instance
///   ([`KinesisOptions::max_records_per_second`]).
/// - A lease-store outage pauses the shards (no batch starts until the lease is confirmed
///   again) instead of crashing them.
///
/// A shard consumer:
///
/// - starts after the shard's checkpoint, or at [`ShardOptions::initial_position`];
/// - holds its lease for as long as the membership lives (a lease store without memberships:
///   renews it every third of [`ConsumerOptions::lease_duration`], retrying with backoff
///   before giving up), for as long as it runs, including while a handler overruns its
///   timeout: the handler's token is cancelled and the batch is not handed to anyone else until
///   the handler returned;
/// - backs off on throttling without counting it as an error and re-creates expired
///   iterators from the checkpoint;
/// - counts every batch start in the lease store by checkpoint, so a batch that never completes
///   (a crash, a lost lease, on any instance) is retried record by record and, past
///   [`ShardOptions::poison_threshold`], the record goes to the dead-letter hook, a `poison_pill`
///   event fires and the shard moves on;
/// - retries messages in place with the retry policy's backoff; exhausted, failed and
///   dead-lettered messages go to the dead-letter hook (retried until it accepts them) before the
///   checkpoint moves past them. Without a hook they are reported as `failed` events and an error
///   log, never skipped silently. A timed-out batch is retried as a whole;
/// - stops at once when its lease is lost (the handler's token is cancelled, nothing more is
///   checkpointed; a stale owner's checkpoint is refused by the store's fence anyway).
///
/// Kinesis keeps no per-message state: `execute_at` and `expires_at` are not honoured (a record is
/// delivered when read), and retries happen in place, in the consumer, before the checkpoint moves.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use mq_kinesis::{KinesisOptions, KinesisQueue, RedisLeaseStore};
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let leases = Arc::new(RedisLeaseStore::connect("redis://127.0.0.1:6379", "mq").await?);
/// let queue = KinesisQueue::connect(KinesisOptions::new(leases)).await?;
/// # let _ = queue; Ok(()) }
/// ```
#[derive(Clone)]
pub struct KinesisQueue {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    producer: KinesisProducer,
    options: KinesisOptions,
    registered: RegisteredQueues,
    stop: CancellationToken,
    abort: CancellationToken,
    consumers: Mutex<Vec<ConsumerStopper>>,
    shut: Arc<AtomicBool>,
    next_worker: AtomicUsize,
    /// Where the next `consume_batch` starts reading, so that calls take turns over the shards.
    next_batch_shard: AtomicUsize,
    instance_limiter: Option<Arc<RecordBucket>>,
    store_trouble: Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for KinesisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisQueue")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl KinesisQueue {
    /// Builds the client from the options (or the standard AWS chain) and the queue.
    pub async fn connect(options: KinesisOptions) -> crate::Result<Self> {
        let client = options.build_client().await;
        Ok(Self::with_client(client, options))
    }

    /// The queue on a ready client.
    pub fn with_client(client: Client, options: KinesisOptions) -> Self {
        let producer = KinesisProducer::new(client.clone(), options.producer.clone());
        KinesisQueue {
            inner: Arc::new(Inner {
                client,
                producer,
                registered: RegisteredQueues::default(),
                stop: CancellationToken::new(),
                abort: CancellationToken::new(),
                consumers: Mutex::new(Vec::new()),
                shut: Arc::new(AtomicBool::new(false)),
                next_worker: AtomicUsize::new(0),
                next_batch_shard: AtomicUsize::new(0),
                instance_limiter: options
                    .max_records_per_second
                    .map(|n| Arc::new(RecordBucket::new(n))),
                store_trouble: Arc::default(),
                options,
            }),
        }
    }

    /// The producer.
    pub fn producer(&self) -> &KinesisProducer {
        &self.inner.producer
    }

    /// The Kinesis client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The status of `stream`: its shards with their lease (owner, epoch, expiry), checkpoint,
    /// failure counts and assignment, and the live instances, read through this queue's lease
    /// store; see [`stream_status`](crate::stream_status).
    ///
    /// # Errors
    ///
    /// [`Error::Kinesis`] when `ListShards` fails, [`Error::LeaseStore`] when the store does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(queue: mq_kinesis::KinesisQueue) -> mq_kinesis::Result<()> {
    /// let status = queue.stream_status("orders").await?;
    /// println!("live: {:?}", status.live_instances);
    /// for s in &status.shards {
    ///     println!("{} held by {:?} (epoch {})", s.shard, s.lease.owner, s.lease.epoch);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn stream_status(&self, stream: &str) -> crate::Result<StreamStatus> {
        stream_status(
            &self.inner.client,
            self.inner.options.lease_store.as_ref(),
            stream,
        )
        .await
    }

    fn fleet(&self) -> FleetSettings {
        let o = &self.inner.options;
        FleetSettings {
            rebalance_interval: o.rebalance_interval,
            heartbeat_interval: o.heartbeat_interval,
            membership_ttl: o.membership_ttl,
            discovery_interval: o.discovery_interval,
            heartbeat_failure_threshold: o.heartbeat_failure_threshold,
        }
    }

    fn check_open(&self) -> mq_core::Result<()> {
        if self.inner.shut.load(Ordering::SeqCst) {
            Err(mq_core::Error::ShutDown { backend: BACKEND })
        } else {
            Ok(())
        }
    }

    fn resolve_registered(&self, queue: &QueueName) -> mq_core::Result<QueueName> {
        self.check_open()?;
        self.inner
            .registered
            .resolve(&self.inner.options.common, queue)
    }

    fn env(
        &self,
        queue: QueueName,
        handler: Arc<dyn Handler>,
        options: ConsumerOptions,
        worker_id: String,
    ) -> ShardEnv {
        let o = &self.inner.options;
        ShardEnv {
            client: self.inner.client.clone(),
            store: o.lease_store.clone(),
            strategy: o.strategy.clone(),
            common: o.common.clone(),
            handler,
            options,
            shard_options: o.shard.clone(),
            queue,
            instance_id: o.instance_id.clone(),
            worker_id,
            shut: self.inner.shut.clone(),
            instance_limiter: self.inner.instance_limiter.clone(),
            store_trouble: self.inner.store_trouble.clone(),
            membership: None,
            excused: Arc::default(),
        }
    }
}

#[async_trait]
impl MessageQueue for KinesisQueue {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn register(&self, queue: &QueueName) -> mq_core::Result<()> {
        self.check_open()?;
        let q = self.inner.options.common.get_resolver().resolve(queue)?;
        let described = self
            .inner
            .client
            .describe_stream_summary()
            .stream_name(q.as_str())
            .send()
            .await;
        if let Err(e) = described {
            if e.code() == Some("ResourceNotFoundException") {
                return Err(mq_core::Error::invalid_option(
                    "queue",
                    format!(
                        "kinesis stream {q} does not exist: create it (aws kinesis create-stream --stream-name {q}) before registering"
                    ),
                ));
            }
            return Err(Error::kinesis("DescribeStreamSummary", error_text(&e)).into());
        }
        self.inner.registered.insert(q);
        Ok(())
    }

    async fn publish(
        &self,
        queue: &QueueName,
        messages: Vec<mq_core::NewMessage>,
    ) -> mq_core::Result<PublishReport> {
        let q = self.resolve_registered(queue)?;
        let mut failed = Vec::new();
        let prepared = prepare_messages(&self.inner.options.common, &q, messages, &mut failed);
        // the generic size check names an option that cannot go past the Kinesis limit
        let mut failed: Vec<PublishFailure> = failed
            .into_iter()
            .map(|f| PublishFailure::new(f.index, f.id, kinesis_size_refusal(f.error)))
            .collect();
        let mut records = Vec::with_capacity(prepared.len());
        let mut stored = std::collections::HashMap::with_capacity(prepared.len());
        for (index, m) in prepared {
            match self.inner.producer.prepare(index, &m) {
                Ok(r) => {
                    records.push((index, r));
                    stored.insert(index, m);
                }
                Err(e) => failed.push(PublishFailure::new(
                    index,
                    Some(m.id.clone()),
                    e.refusal_of(m.id),
                )),
            }
        }
        let put = self.inner.producer.put_prepared(q.as_str(), records).await;
        let lifecycle = self.inner.options.common.get_lifecycle();
        let mut report = PublishReport::default();
        for p in put.published {
            if let Some(m) = stored.get(&p.index) {
                lifecycle.emit_with(|| LifecycleEvent::Published {
                    message: MessageInfo::of(m, BACKEND),
                    size_bytes: m.encoded_len(),
                });
                report.published.push(m.id.clone());
            }
        }
        for f in put.failed {
            let id = stored.get(&f.index).map(|m| m.id.clone());
            failed.push(PublishFailure::new(
                f.index,
                id,
                mq_core::Error::backend(BACKEND, "publish", f.error),
            ));
        }
        failed.sort_by_key(|f| f.index);
        report.failed = failed;
        Ok(report)
    }

    async fn consume(
        &self,
        queue: &QueueName,
        handler: Arc<dyn Handler>,
        options: ConsumerOptions,
    ) -> mq_core::Result<ConsumerHandle> {
        options.validate()?;
        let q = self.resolve_registered(queue)?;
        match self
            .inner
            .options
            .lease_store
            .check_stream(q.as_str())
            .await
        {
            Err(e @ Error::InvalidOption { .. }) => return Err(e.into()),
            // unreachable now: the worker waits for the store like after any outage
            Err(e) => {
                tracing::warn!(stream = %q, error = %e, "mq-kinesis: cannot check the lease store's layout of the stream yet")
            }
            Ok(()) => {}
        }
        let n = self.inner.next_worker.fetch_add(1, Ordering::Relaxed);
        let worker_id = format!("{}-{n}", self.inner.options.instance_id);
        let stopper = ConsumerStopper::new(
            &self.inner.stop,
            &self.inner.abort,
            options.get_shutdown_grace(),
        );
        let info = ConsumerInfo::worker(worker_id.clone(), q.clone(), BACKEND);
        let env = self.env(q, handler, options, worker_id.clone());
        let coordinator = Coordinator::new(self.fleet(), env, stopper.clone(), info);
        stopper.tracker().spawn(coordinator.run());
        self.inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stopper.clone());
        Ok(ConsumerHandle::new(worker_id, stopper))
    }

    async fn consume_batch(
        &self,
        queue: &QueueName,
        handler: Arc<dyn Handler>,
        options: &ConsumerOptions,
    ) -> mq_core::Result<BatchReport> {
        options.validate()?;
        let q = self.resolve_registered(queue)?;
        // the same order as the continuous consumers: no child before its parents finished
        let listing = list_shard_lineage(&self.inner.client, q.as_str()).await?;
        let finished: HashSet<String> = self
            .inner
            .options
            .lease_store
            .leases(q.as_str())
            .await?
            .into_iter()
            .filter(|l| l.finished)
            .map(|l| l.shard)
            .collect();
        let mut shards = eligible_shards(&listing, &finished);
        // Each call starts one shard further on: a shard with more than a batch waiting would
        // otherwise fill every call and the shards after it would never be read.
        if !shards.is_empty() {
            let start = self.inner.next_batch_shard.fetch_add(1, Ordering::Relaxed) % shards.len();
            shards.rotate_left(start);
        }
        let worker_id = format!("{}-batch", self.inner.options.instance_id);
        let mut env = self.env(q, handler, options.clone(), worker_id);
        let mut total = BatchReport::default();
        let tracker = tokio_util::task::TaskTracker::new();
        for shard in shards {
            if total.delivered >= options.get_batch_size() {
                break;
            }
            env.options = options
                .clone()
                .batch_size(options.get_batch_size() - total.delivered);
            let stop = self.inner.stop.child_token();
            let consumer = ShardConsumer::new(
                env.clone(),
                shard,
                stop,
                self.inner.abort.child_token(),
                tracker.clone(),
            )
            .lineage(&listing)
            .max_batches(1);
            let (_, report) = consumer.run().await;
            total.merge(&report);
        }
        tracker.close();
        tracker.wait().await;
        Ok(total)
    }

    async fn shutdown(&self) -> mq_core::Result<()> {
        if self.inner.shut.swap(true, Ordering::SeqCst) {
            return Err(mq_core::Error::ShutDown { backend: BACKEND });
        }
        let consumers: Vec<ConsumerStopper> = std::mem::take(
            &mut *self
                .inner
                .consumers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        futures::future::join_all(consumers.iter().map(ConsumerStopper::stop)).await;
        self.inner.stop.cancel();
        Ok(())
    }
}
