//! Enhanced fan-out: shard records pushed over `SubscribeToShard` instead of polled with
//! `GetRecords`.
//!
//! With enhanced fan-out every registered stream consumer gets its own 2 MB/s per shard and
//! records arrive about 70 ms after they were written, instead of sharing 2 MB/s and five reads
//! per second per shard with every other poller. It costs a registered stream consumer (at most
//! 20 per stream) and per-hour, per-shard fees on AWS.
//!
//! Turn it on for the shard consumers of a [`KinesisQueue`](crate::KinesisQueue) with
//! [`ShardOptions::enhanced_fan_out`](crate::ShardOptions::enhanced_fan_out) (or
//! [`FetchMode::EnhancedFanOut`]): the stream consumer is registered on first use (or found
//! registered, by name), each leased shard is read through a [`Subscription`] that starts after the
//! shard's checkpoint, and everything after the read (batches, outcomes, retries, dead letters,
//! poison pills, checkpoints, the end of a closed shard) is the same code as with polling.
//! On-demand batches (`consume_batch`) still poll: a subscription for one batch would run into
//! the limit of one subscription per shard and consumer every 5 seconds.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use mq_kinesis::{FetchMode, InMemoryLeaseStore, KinesisOptions, ShardOptions};
//!
//! let shard = ShardOptions::default()
//!     .enhanced_fan_out("orders-service")
//!     .resubscribe_interval(Duration::from_secs(240));
//! assert_eq!(
//!     shard.get_fetch_mode(),
//!     &FetchMode::EnhancedFanOut { consumer_name: "orders-service".into() }
//! );
//! let options = KinesisOptions::new(Arc::new(InMemoryLeaseStore::new())).shard(shard);
//! # let _ = options;
//! ```
//!
//! A [`Subscription`] can also be used on its own, with the ARN from
//! [`register_stream_consumer`]:
//!
//! ```no_run
//! use std::time::Duration;
//! use mq_kinesis::{StartPosition, Subscription, register_stream_consumer};
//!
//! # async fn f(client: aws_sdk_kinesis::Client) -> mq_kinesis::Result<()> {
//! let arn = register_stream_consumer(&client, "orders", "audit", Duration::from_secs(60)).await?;
//! let mut sub = Subscription::start(
//!     client,
//!     arn,
//!     "shardId-000000000000",
//!     StartPosition::TrimHorizon,
//!     Duration::from_secs(270),
//! );
//! loop {
//!     let batch = sub.next(1000).await?;
//!     println!("{} records", batch.records.len());
//!     if batch.ended {
//!         break;
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{
    ChildShard, ConsumerStatus, Record, SubscribeToShardEvent, SubscribeToShardEventStream,
};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::{Error, Result, error_text};
use crate::position::StartPosition;

/// How long AWS serves one `SubscribeToShard` subscription before it ends it.
pub const SUBSCRIPTION_LIMIT: Duration = Duration::from_secs(5 * 60);

/// The default time after which a [`Subscription`] re-subscribes on its own: 30 s before
/// [`SUBSCRIPTION_LIMIT`].
pub const DEFAULT_RESUBSCRIBE_INTERVAL: Duration = Duration::from_secs(4 * 60 + 30);

/// How long a shard consumer waits for its stream consumer to become `ACTIVE` after registering
/// it, before it reports an error (and retries like after any failed read).
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(120);

/// Events read ahead of the reader: the push stream overlaps the handler without a prefetch.
const READ_AHEAD: usize = 2;

/// Quiet retries of a refused subscription (throttling, the 5-second rule) before each further
/// one is logged as a warning.
const QUIET_REFUSALS: u32 = 12;

/// How shard consumers read their shard.
///
/// - [`FetchMode::Polling`] (the default): `GetRecords` in a loop, with the next read started
///   while a batch is handled and an idle backoff up to `ConsumerOptions::max_poll_interval`.
/// - [`FetchMode::EnhancedFanOut`]: `SubscribeToShard` through a registered stream consumer; see
///   [the module](crate::fanout) and [`Subscription`].
///
/// Both modes hand the same batches to the same code: outcomes, retries, dead letters, poison
/// pills, checkpoints and the end of a closed shard behave the same. On-demand batches
/// (`consume_batch`) always poll.
///
/// # Examples
///
/// ```
/// use mq_kinesis::{FetchMode, ShardOptions};
///
/// assert_eq!(ShardOptions::default().get_fetch_mode(), &FetchMode::Polling);
/// let opts = ShardOptions::default()
///     .fetch_mode(FetchMode::EnhancedFanOut { consumer_name: "billing".into() });
/// assert!(matches!(opts.get_fetch_mode(), FetchMode::EnhancedFanOut { consumer_name } if consumer_name == "billing"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FetchMode {
    /// `GetRecords` polling.
    #[default]
    Polling,
    /// `SubscribeToShard` through the stream consumer `consumer_name`.
    EnhancedFanOut {
        /// The stream consumer's name (1 to 128 of `a-z A-Z 0-9 _ . -`), the same on every
        /// instance of one application: it is registered on first use, found by name afterwards,
        /// and its throughput is shared by the instances (one subscription per shard at a time).
        consumer_name: String,
    },
}

/// What one `SubscribeToShard` event (or a part of it) carried.
///
/// # Examples
///
/// ```
/// # async fn f(mut sub: mq_kinesis::Subscription) -> mq_kinesis::Result<()> {
/// let batch = sub.next(500).await?;
/// for r in &batch.records {
///     println!("{:?} {}", r.partition_key(), r.sequence_number());
/// }
/// if batch.ended {
///     println!("closed and read to its end; children: {:?}", batch.child_shards);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FanOutBatch {
    /// The records, in shard order; empty for a heartbeat.
    pub records: Vec<Record>,
    /// Where the shard is read up to: subscribing after it continues right behind these
    /// records. `None` once the shard ended.
    pub continuation_sequence_number: Option<String>,
    /// How far behind the tip of the shard the reader is.
    pub millis_behind_latest: Option<u64>,
    /// The shard's children, at its end.
    pub child_shards: Vec<ChildShard>,
    /// The shard is closed (split or merged) and has been read to its end: no record follows.
    pub ended: bool,
}

impl FanOutBatch {
    fn from_event(e: SubscribeToShardEvent) -> Self {
        let continuation = Some(e.continuation_sequence_number).filter(|c| !c.is_empty());
        let child_shards = e.child_shards.unwrap_or_default();
        // AWS: the last event of a closed shard has its children and no continuation. Emulators
        // may name the children on every event of a closed shard and send a continuation on the
        // last one, which then carries no records.
        let ended = continuation.is_none() || (!child_shards.is_empty() && e.records.is_empty());
        FanOutBatch {
            records: e.records,
            continuation_sequence_number: if ended { None } else { continuation },
            millis_behind_latest: u64::try_from(e.millis_behind_latest).ok(),
            child_shards,
            ended,
        }
    }

    fn end() -> Self {
        FanOutBatch {
            records: Vec::new(),
            continuation_sequence_number: None,
            millis_behind_latest: None,
            child_shards: Vec::new(),
            ended: true,
        }
    }
}

/// One shard read through `SubscribeToShard`, re-subscribing on its own.
///
/// A background task subscribes, reads events ahead (a couple of them), and subscribes again
/// from the last continuation sequence number it received:
///
/// - every `resubscribe_interval` (default [`DEFAULT_RESUBSCRIBE_INTERVAL`]), before AWS ends the
///   subscription at [`SUBSCRIPTION_LIMIT`];
/// - when the event stream ends or fails.
///
/// Batches come out in shard order with nothing skipped or repeated across re-subscriptions:
/// everything the task received is handed out before anything from the next subscription.
/// Throttling and `ResourceInUseException` (AWS accepts one subscription per shard and consumer
/// every 5 seconds) back off and retry without an error; other failed subscriptions are handed
/// out as errors (and retried with backoff meanwhile). Dropping the subscription cancels the task
/// and closes the stream.
///
/// Started at [`StartPosition::Latest`], a subscription renewed before its first event (which AWS
/// sends at once) starts at the latest record of that moment again: records written in between
/// would be skipped.
///
/// Must be started inside a Tokio runtime.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use mq_kinesis::{StartPosition, Subscription};
///
/// # async fn f(client: aws_sdk_kinesis::Client, consumer_arn: String) -> mq_kinesis::Result<()> {
/// let mut sub = Subscription::start(
///     client,
///     consumer_arn,
///     "shardId-000000000000",
///     StartPosition::AfterSequenceNumber("49590338271490256608559692538361571095921575989136588898".into()),
///     Duration::from_secs(270),
/// );
/// let batch = sub.next(100).await?;
/// if let Some(last) = batch.records.last() {
///     assert_eq!(sub.last_sequence_number(), Some(last.sequence_number()));
/// }
/// # Ok(()) }
/// ```
pub struct Subscription {
    shard_id: String,
    consumer_arn: String,
    events: mpsc::Receiver<Result<FanOutBatch>>,
    pending: Option<FanOutBatch>,
    ended: bool,
    last_sequence_number: Option<String>,
    subscribed: Arc<AtomicU64>,
    _cancel: DropGuard,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("shard_id", &self.shard_id)
            .field("consumer_arn", &self.consumer_arn)
            .field("last_sequence_number", &self.last_sequence_number)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Subscribes `consumer_arn` to `shard_id` from `from`, in a background task.
    ///
    /// `resubscribe_interval` is how long one subscription is read before the next one replaces
    /// it (use [`DEFAULT_RESUBSCRIBE_INTERVAL`] on AWS; below 5 s AWS refuses the new
    /// subscription until 5 s have passed, which is waited out).
    pub fn start(
        client: Client,
        consumer_arn: impl Into<String>,
        shard_id: impl Into<String>,
        from: StartPosition,
        resubscribe_interval: Duration,
    ) -> Self {
        let shard_id = shard_id.into();
        let consumer_arn = consumer_arn.into();
        let (tx, events) = mpsc::channel(READ_AHEAD);
        let cancel = CancellationToken::new();
        let subscribed = Arc::new(AtomicU64::new(0));
        let last_sequence_number = match &from {
            StartPosition::AfterSequenceNumber(s) => Some(s.clone()),
            _ => None,
        };
        let task = Subscriber {
            client,
            consumer_arn: consumer_arn.clone(),
            shard_id: shard_id.clone(),
            interval: resubscribe_interval.max(Duration::from_millis(100)),
            tx,
            cancel: cancel.clone(),
            subscribed: subscribed.clone(),
        };
        tokio::spawn(task.run(from));
        Subscription {
            shard_id,
            consumer_arn,
            events,
            pending: None,
            ended: false,
            last_sequence_number,
            subscribed,
            _cancel: cancel.drop_guard(),
        }
    }

    /// The next batch of at most `max_records` records (the rest of a larger event comes with
    /// the next calls), a heartbeat (no records), or the end of the shard (`ended`, and again on
    /// every later call).
    ///
    /// Cancel safe: dropping the future loses nothing.
    ///
    /// # Errors
    ///
    /// [`Error::FanOut`] when a subscription failed for another reason than throttling (the
    /// subscription keeps retrying with backoff; call again), or when the background task is
    /// gone.
    pub async fn next(&mut self, max_records: usize) -> Result<FanOutBatch> {
        let mut batch = match self.pending.take() {
            Some(b) => b,
            None if self.ended => return Ok(FanOutBatch::end()),
            None => match self.events.recv().await {
                Some(Ok(b)) => b,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(Error::FanOut {
                        operation: "SubscribeToShard",
                        code: None,
                        message: format!("the subscription to {} has stopped", self.shard_id),
                    });
                }
            },
        };
        let max = max_records.max(1);
        if batch.records.len() > max {
            let rest = batch.records.split_off(max);
            self.pending = Some(FanOutBatch {
                records: rest,
                continuation_sequence_number: batch.continuation_sequence_number.take(),
                millis_behind_latest: batch.millis_behind_latest,
                child_shards: std::mem::take(&mut batch.child_shards),
                ended: batch.ended,
            });
            batch.ended = false;
            batch.continuation_sequence_number =
                batch.records.last().map(|r| r.sequence_number().to_owned());
        }
        if let Some(last) = batch.records.last() {
            self.last_sequence_number = Some(last.sequence_number().to_owned());
        }
        self.ended |= batch.ended;
        Ok(batch)
    }

    /// The sequence number of the last record handed out, or the one the subscription started
    /// after.
    pub fn last_sequence_number(&self) -> Option<&str> {
        self.last_sequence_number.as_deref()
    }

    /// The shard.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The stream consumer's ARN.
    pub fn consumer_arn(&self) -> &str {
        &self.consumer_arn
    }

    /// Successful `SubscribeToShard` calls so far: 1 plus the re-subscriptions.
    pub fn subscriptions(&self) -> u64 {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// True when nothing more can come: the background task is gone (it never stops on its own
    /// before the end of the shard) and everything it sent was handed out.
    pub(crate) fn is_dead(&self) -> bool {
        !self.ended && self.pending.is_none() && self.events.is_closed() && self.events.is_empty()
    }
}

/// The background half of a [`Subscription`].
struct Subscriber {
    client: Client,
    consumer_arn: String,
    shard_id: String,
    interval: Duration,
    tx: mpsc::Sender<Result<FanOutBatch>>,
    cancel: CancellationToken,
    subscribed: Arc<AtomicU64>,
}

/// Refusals that are waited out, never reported: throttling, and `ResourceInUseException` (a
/// subscription to the shard less than 5 s ago, or a consumer that is not active yet).
fn is_refusal(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ResourceInUseException"
                | "LimitExceededException"
                | "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "KMSThrottlingException"
        )
    )
}

fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Subscriber {
    async fn run(self, mut from: StartPosition) {
        let mut delays = backoff();
        let mut refusals = 0u32;
        loop {
            let position = match from.to_sdk() {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.send(Err(e)).await;
                    return;
                }
            };
            let sent = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                sent = self
                    .client
                    .subscribe_to_shard()
                    .consumer_arn(&self.consumer_arn)
                    .shard_id(&self.shard_id)
                    .starting_position(position)
                    .send() => sent,
            };
            let mut events = match sent {
                Ok(out) => out.event_stream,
                Err(e) => {
                    let code = e.code().map(str::to_owned);
                    if is_refusal(code.as_deref()) {
                        refusals += 1;
                        if refusals > QUIET_REFUSALS {
                            tracing::warn!(shard = %self.shard_id, refusals, code, "mq-kinesis: subscription still refused, backing off");
                        } else {
                            tracing::debug!(shard = %self.shard_id, code, "mq-kinesis: subscription refused, backing off");
                        }
                    } else {
                        tracing::warn!(shard = %self.shard_id, error = %error_text(&e), "mq-kinesis: SubscribeToShard failed");
                        let err = Error::FanOut {
                            operation: "SubscribeToShard",
                            code,
                            message: error_text(&e),
                        };
                        if !self.send(Err(err)).await {
                            return;
                        }
                    }
                    if !self.pause(&mut delays).await {
                        return;
                    }
                    continue;
                }
            };
            refusals = 0;
            let n = self.subscribed.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(shard = %self.shard_id, subscription = n, ?from, "mq-kinesis: subscribed to shard");
            let renew_at = Instant::now() + self.interval;
            let mut received = false;
            loop {
                let got = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(renew_at) => {
                        tracing::debug!(shard = %self.shard_id, "mq-kinesis: re-subscribing before the subscription limit");
                        break;
                    }
                    got = events.recv() => got,
                };
                match got {
                    Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                        received = true;
                        delays = backoff();
                        let batch = FanOutBatch::from_event(event);
                        // the next subscription starts right behind what was received (and so
                        // will be handed out before it)
                        if let Some(c) = &batch.continuation_sequence_number {
                            from = StartPosition::AfterSequenceNumber(c.clone());
                        } else if let Some(r) = batch.records.last() {
                            from =
                                StartPosition::AfterSequenceNumber(r.sequence_number().to_owned());
                        }
                        let ended = batch.ended;
                        if !self.send(Ok(batch)).await {
                            return;
                        }
                        if ended {
                            tracing::debug!(shard = %self.shard_id, "mq-kinesis: shard read to its end, subscription done");
                            return;
                        }
                    }
                    // an event this SDK version does not know
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::debug!(shard = %self.shard_id, "mq-kinesis: event stream ended, re-subscribing");
                        // a stream that ends without an event must not turn into a busy loop
                        if !received && !self.pause(&mut delays).await {
                            return;
                        }
                        break;
                    }
                    Err(e) => {
                        let code = e.code().map(str::to_owned);
                        if is_refusal(code.as_deref()) {
                            tracing::debug!(shard = %self.shard_id, code, "mq-kinesis: subscription taken over or throttled, re-subscribing");
                        } else {
                            tracing::warn!(shard = %self.shard_id, error = %error_text(&e), "mq-kinesis: event stream failed, re-subscribing");
                        }
                        if !self.pause(&mut delays).await {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// False when the subscription was dropped.
    async fn send(&self, item: Result<FanOutBatch>) -> bool {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            sent = self.tx.send(item) => sent.is_ok(),
        }
    }

    /// False when the subscription was dropped.
    async fn pause(&self, delays: &mut ExponentialBackoff) -> bool {
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

fn fan_out_error<E, R>(operation: &'static str, e: &SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug + 'static,
{
    Error::FanOut {
        operation,
        code: e.code().map(str::to_owned),
        message: error_text(e),
    }
}

/// Registers the stream consumer `consumer_name` on `stream`, or finds it registered (by name),
/// and waits until it is `ACTIVE`; returns its ARN.
///
/// A consumer being deleted is waited out and registered again.
///
/// # Errors
///
/// [`Error::FanOut`] when a call fails (with the AWS error code), [`Error::ConsumerNotActive`]
/// when it is not `ACTIVE` after `timeout`.
///
/// # Examples
///
/// ```no_run
/// # async fn f(client: aws_sdk_kinesis::Client) -> mq_kinesis::Result<()> {
/// use std::time::Duration;
///
/// let arn = mq_kinesis::register_stream_consumer(&client, "orders", "audit", Duration::from_secs(60)).await?;
/// assert!(arn.contains("/consumer/audit:"));
/// # Ok(()) }
/// ```
pub async fn register_stream_consumer(
    client: &Client,
    stream: &str,
    consumer_name: &str,
    timeout: Duration,
) -> Result<String> {
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| fan_out_error("DescribeStreamSummary", &e))?;
    let stream_arn = summary
        .stream_description_summary()
        .map(|d| d.stream_arn().to_owned())
        .ok_or_else(|| Error::FanOut {
            operation: "DescribeStreamSummary",
            code: None,
            message: format!("no description of stream {stream}"),
        })?;
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    let (mut arn, mut status) = register_or_describe(client, &stream_arn, consumer_name).await?;
    loop {
        if status == ConsumerStatus::Active {
            tracing::debug!(
                stream,
                consumer_name,
                arn,
                "mq-kinesis: stream consumer active"
            );
            return Ok(arn);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::ConsumerNotActive {
                stream: stream.to_owned(),
                consumer_name: consumer_name.to_owned(),
                status: status.as_str().to_owned(),
                waited: timeout,
            });
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        let described = client
            .describe_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(consumer_name)
            .send()
            .await;
        (arn, status) = match described {
            Ok(out) => match out.consumer_description() {
                Some(d) => (d.consumer_arn().to_owned(), d.consumer_status().clone()),
                None => (arn, status),
            },
            // deleted meanwhile: register it again
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                register_or_describe(client, &stream_arn, consumer_name).await?
            }
            Err(e) => return Err(fan_out_error("DescribeStreamConsumer", &e)),
        };
    }
}

async fn register_or_describe(
    client: &Client,
    stream_arn: &str,
    consumer_name: &str,
) -> Result<(String, ConsumerStatus)> {
    match client
        .register_stream_consumer()
        .stream_arn(stream_arn)
        .consumer_name(consumer_name)
        .send()
        .await
    {
        Ok(out) => {
            let c = out.consumer().ok_or_else(|| Error::FanOut {
                operation: "RegisterStreamConsumer",
                code: None,
                message: "no consumer in the response".into(),
            })?;
            tracing::info!(
                stream_arn,
                consumer_name,
                "mq-kinesis: stream consumer registered"
            );
            Ok((c.consumer_arn().to_owned(), c.consumer_status().clone()))
        }
        Err(e) if e.code() == Some("ResourceInUseException") => {
            let out = client
                .describe_stream_consumer()
                .stream_arn(stream_arn)
                .consumer_name(consumer_name)
                .send()
                .await
                .map_err(|e| fan_out_error("DescribeStreamConsumer", &e))?;
            let d = out.consumer_description().ok_or_else(|| Error::FanOut {
                operation: "DescribeStreamConsumer",
                code: None,
                message: "no consumer description in the response".into(),
            })?;
            Ok((d.consumer_arn().to_owned(), d.consumer_status().clone()))
        }
        Err(e) => Err(fan_out_error("RegisterStreamConsumer", &e)),
    }
}

type ConsumerKey = (Option<String>, String, String);

/// Consumer ARNs by (region, stream, consumer name), shared by the shard consumers of every queue
/// built from one [`ShardOptions`](crate::ShardOptions), so the consumer is registered (or looked
/// up) once.
#[derive(Clone, Default)]
pub(crate) struct ConsumerArns {
    cells: Arc<Mutex<HashMap<ConsumerKey, Arc<OnceCell<String>>>>>,
}

impl fmt::Debug for ConsumerArns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.cells.lock().map_or(0, |c| c.len());
        f.debug_struct("ConsumerArns")
            .field("cached", &cached)
            .finish()
    }
}

impl ConsumerArns {
    fn key(client: &Client, stream: &str, consumer_name: &str) -> ConsumerKey {
        (
            client.config().region().map(|r| r.as_ref().to_owned()),
            stream.to_owned(),
            consumer_name.to_owned(),
        )
    }

    /// The ARN of the active stream consumer, registering it on first use.
    pub(crate) async fn get(
        &self,
        client: &Client,
        stream: &str,
        consumer_name: &str,
    ) -> Result<String> {
        let cell = self
            .cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(Self::key(client, stream, consumer_name))
            .or_default()
            .clone();
        cell.get_or_try_init(|| {
            register_stream_consumer(client, stream, consumer_name, REGISTER_TIMEOUT)
        })
        .await
        .cloned()
    }

    /// Forgets `arn` (a consumer that was deleted); a newer ARN stays.
    pub(crate) fn forget(&self, client: &Client, stream: &str, consumer_name: &str, arn: &str) {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(client, stream, consumer_name);
        if cells
            .get(&key)
            .is_some_and(|c| c.get().is_some_and(|a| a == arn))
        {
            cells.remove(&key);
        }
    }
}
