//! The producer: PutRecords in chunks, records checked before sending, failed entries retried.

use std::fmt;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use backon::{BackoffBuilder, ExponentialBuilder};
use mq_core::Message;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::record::encode;

/// Largest record Kinesis accepts: data plus partition key.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Most records in one PutRecords request.
pub const MAX_RECORDS_PER_REQUEST: usize = 500;
/// Largest PutRecords request: data plus partition keys of every record.
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;
/// Longest partition key, in characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// How long one PutRecords request may go unanswered by default.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How a message without its own `partition_key` gets one.
///
/// A message's own key always wins. Records with equal keys land on one shard in order.
///
/// # Examples
///
/// ```
/// use mq_kinesis::PartitionKeyStrategy;
///
/// // all messages of one customer in order, customers spread over shards
/// let by_customer = PartitionKeyStrategy::payload_field("customer_id");
/// # let _ = by_customer;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PartitionKeyStrategy {
    /// The message id: spreads evenly, no ordering between messages (the default).
    #[default]
    MessageId,
    /// A hash of a payload field (a JSON pointer such as `/customer/id`, or a top-level field
    /// name): one entity's messages stay in order. Falls back to the message id when the field is
    /// missing.
    PayloadField(String),
    /// A random key per message.
    Random,
    /// The message type: the original's default, and the cause of hot shards.
    MessageType,
}

impl PartitionKeyStrategy {
    /// Hash of payload field `field` (a JSON pointer or a top-level name).
    pub fn payload_field(field: impl Into<String>) -> Self {
        PartitionKeyStrategy::PayloadField(field.into())
    }

    /// The key of `message`.
    pub fn key_for(&self, message: &Message) -> String {
        if let Some(k) = &message.partition_key {
            return k.clone();
        }
        match self {
            PartitionKeyStrategy::MessageId => message.id.to_string(),
            PartitionKeyStrategy::PayloadField(field) => {
                let v = if field.starts_with('/') {
                    message.payload.pointer(field)
                } else {
                    message.payload.get(field)
                };
                match v {
                    Some(Value::String(s)) => format!("{:016x}", fnv1a(s.as_bytes())),
                    Some(v) if !v.is_null() => format!("{:016x}", fnv1a(v.to_string().as_bytes())),
                    _ => message.id.to_string(),
                }
            }
            PartitionKeyStrategy::Random => format!("{:032x}", rand::random::<u128>()),
            PartitionKeyStrategy::MessageType => message.message_type.clone(),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Producer settings.
///
/// Defaults: [`PartitionKeyStrategy::MessageId`], 5 attempts per record, backoff from 100 ms to
/// 5 s with jitter, chunks of 500 records / 5 MiB, 10 s for one `PutRecords` request.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mq_kinesis::{PartitionKeyStrategy, ProducerOptions};
///
/// let opts = ProducerOptions::default()
///     .partition_key(PartitionKeyStrategy::payload_field("order_id"))
///     .max_attempts(8)
///     .base_delay(Duration::from_millis(50));
/// assert_eq!(opts.get_max_attempts(), 8);
/// ```
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    partition_key: PartitionKeyStrategy,
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    max_records_per_request: usize,
    request_timeout: Duration,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            partition_key: PartitionKeyStrategy::default(),
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_records_per_request: MAX_RECORDS_PER_REQUEST,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

impl ProducerOptions {
    mq_core::__option_setters! {
        /// The partition key strategy.
        partition_key(s: PartitionKeyStrategy) s;
        /// Attempts per record, the first included.
        max_attempts(n: u32) n.max(1);
        /// First retry delay.
        base_delay(d: Duration) d;
        /// Longest retry delay.
        max_delay(d: Duration) d;
        /// Records per request (1 to 500).
        max_records_per_request(n: usize) n.clamp(1, MAX_RECORDS_PER_REQUEST);
        /// How long one `PutRecords` request may go unanswered. Past it the request is abandoned
        /// and counts as a failed attempt (code `RequestTimeout`), retried like a network error:
        /// a publish never hangs on a call that does not answer. An abandoned request may still
        /// have been written, so its records can be written twice.
        request_timeout(d: Duration) d.max(Duration::from_millis(1));
    }
    /// How long one `PutRecords` request may go unanswered.
    pub fn get_request_timeout(&self) -> Duration {
        self.request_timeout
    }
    /// Attempts per record.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }
    /// The partition key strategy.
    pub fn get_partition_key(&self) -> &PartitionKeyStrategy {
        &self.partition_key
    }
}

/// One record ready to send.
#[derive(Debug, Clone)]
pub(crate) struct PreparedRecord {
    pub(crate) data: Vec<u8>,
    pub(crate) key: String,
}

impl PreparedRecord {
    fn size(&self) -> usize {
        self.data.len() + self.key.len()
    }
}

/// A record Kinesis stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutSuccess {
    /// Position in the call's input.
    pub index: usize,
    /// The shard.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: String,
}

/// A record not stored after every retry.
#[derive(Debug)]
#[non_exhaustive]
pub struct PutFailure {
    /// Position in the call's input.
    pub index: usize,
    /// Why ([`Error::RecordRejected`]).
    pub error: Error,
}

/// What a put stored and what it did not; every input index is in exactly one of the lists.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct PutReport {
    /// Stored records, by input index.
    pub published: Vec<PutSuccess>,
    /// Records not stored.
    pub failed: Vec<PutFailure>,
    /// PutRecords requests sent (retries included).
    pub requests: usize,
}

impl PutReport {
    /// True when every record was stored.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Writes messages to a stream with PutRecords.
///
/// Records are checked before anything is sent: a record above 1 MiB (data plus key) or a
/// partition key outside 1 to 256 characters fails the whole call with nothing sent. Then records
/// go in chunks of at most 500 records / 5 MiB, chunk after chunk (so the records of one key keep
/// their order); entries a response marks failed are resent with exponential backoff, and the
/// [`PutReport`] names each record that still failed. A failed entry that is resent can land after
/// later records of the same key, as with every Kinesis producer.
///
/// # Examples
///
/// ```no_run
/// # async fn f(client: aws_sdk_kinesis::Client, messages: Vec<mq_core::Message>) -> mq_kinesis::Result<()> {
/// let producer = mq_kinesis::KinesisProducer::new(client, mq_kinesis::ProducerOptions::default());
/// let report = producer.put("orders", &messages).await?;
/// for f in &report.failed {
///     eprintln!("message {} not published: {}", messages[f.index].id, f.error);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KinesisProducer {
    client: Client,
    options: ProducerOptions,
}

impl fmt::Debug for KinesisProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisProducer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Whether a PutRecords error code may succeed on a later attempt: throttling, the service's
/// own failures and requests that got no answer. Anything else (no such stream, no permission,
/// a KMS key that is disabled or missing, an invalid argument) is reported at once.
fn may_succeed_later(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "LimitExceededException"
            | "KMSThrottlingException"
            | "InternalFailure"
            | "InternalFailureException"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "InternalServerError"
            | "RequestFailed"
            | "RequestTimeout"
            | "MissingResult"
    )
}

impl KinesisProducer {
    /// A producer on `client`.
    pub fn new(client: Client, options: ProducerOptions) -> Self {
        KinesisProducer { client, options }
    }

    /// The options.
    pub fn options(&self) -> &ProducerOptions {
        &self.options
    }

    /// Encodes `message` into a record, or says why it cannot be sent (`index` names it).
    pub(crate) fn prepare(&self, index: usize, message: &Message) -> Result<PreparedRecord> {
        let key = self.options.partition_key.key_for(message);
        let chars = key.chars().count();
        if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
            return Err(Error::InvalidPartitionKey { index, len: chars });
        }
        let rec = PreparedRecord {
            data: encode(message),
            key,
        };
        if rec.size() > MAX_RECORD_BYTES {
            return Err(Error::RecordTooLarge {
                index,
                size: rec.size(),
                limit: MAX_RECORD_BYTES,
            });
        }
        Ok(rec)
    }

    /// Publishes `messages` to `stream`. Fails with nothing sent when a record is invalid;
    /// otherwise reports per record.
    pub async fn put(&self, stream: &str, messages: &[Message]) -> Result<PutReport> {
        let records = messages
            .iter()
            .enumerate()
            .map(|(i, m)| self.prepare(i, m))
            .collect::<Result<Vec<_>>>()?;
        Ok(self
            .put_prepared(stream, records.into_iter().enumerate().collect())
            .await)
    }

    /// Sends already checked records, each tagged with its input index.
    pub(crate) async fn put_prepared(
        &self,
        stream: &str,
        records: Vec<(usize, PreparedRecord)>,
    ) -> PutReport {
        let mut report = PutReport::default();
        let mut chunk: Vec<(usize, PreparedRecord)> = Vec::new();
        let mut chunk_bytes = 0;
        for (i, rec) in records {
            if !chunk.is_empty()
                && (chunk.len() >= self.options.max_records_per_request
                    || chunk_bytes + rec.size() > MAX_REQUEST_BYTES)
            {
                self.send_chunk(stream, std::mem::take(&mut chunk), &mut report)
                    .await;
                chunk_bytes = 0;
            }
            chunk_bytes += rec.size();
            chunk.push((i, rec));
        }
        if !chunk.is_empty() {
            self.send_chunk(stream, chunk, &mut report).await;
        }
        report.published.sort_by_key(|p| p.index);
        report.failed.sort_by_key(|f| f.index);
        report
    }

    async fn send_chunk(
        &self,
        stream: &str,
        mut pending: Vec<(usize, PreparedRecord)>,
        report: &mut PutReport,
    ) {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.options.base_delay)
            .with_max_delay(self.options.max_delay)
            .with_max_times(self.options.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let entries = pending
                .iter()
                .map(|(_, r)| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(r.data.clone()))
                        .partition_key(r.key.clone())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>();
            report.requests += 1;
            let limit = self.options.request_timeout;
            let sent = match entries {
                Ok(entries) => match tokio::time::timeout(
                    limit,
                    self.client
                        .put_records()
                        .stream_name(stream)
                        .set_records(Some(entries))
                        .send(),
                )
                .await
                {
                    Ok(sent) => sent.map_err(|e| {
                        (
                            e.code().map(str::to_owned),
                            crate::error::error_text(&e),
                            true,
                        )
                    }),
                    Err(_) => Err((
                        Some("RequestTimeout".to_owned()),
                        Error::Deadline {
                            operation: "PutRecords",
                            after: limit,
                        }
                        .to_string(),
                        true,
                    )),
                },
                // an entry the SDK cannot build is not sent, now or later
                Err(e) => Err((None, e.to_string(), false)),
            };
            let mut failed: Vec<(usize, PreparedRecord, String, String)> = Vec::new();
            match sent {
                Ok(out) => {
                    let results = out.records();
                    for (pos, (i, rec)) in pending.into_iter().enumerate() {
                        match results.get(pos) {
                            Some(r) if r.error_code().is_none() => {
                                report.published.push(PutSuccess {
                                    index: i,
                                    shard_id: r.shard_id().unwrap_or_default().to_owned(),
                                    sequence_number: r
                                        .sequence_number()
                                        .unwrap_or_default()
                                        .to_owned(),
                                });
                            }
                            Some(r) => failed.push((
                                i,
                                rec,
                                r.error_code().unwrap_or_default().to_owned(),
                                r.error_message().unwrap_or_default().to_owned(),
                            )),
                            None => failed.push((
                                i,
                                rec,
                                "MissingResult".into(),
                                "no result entry for the record".into(),
                            )),
                        }
                    }
                }
                Err((code, msg, sent)) => {
                    // a request the service refused says why; one without a code (a network
                    // error, a timeout) may succeed later
                    let code = match code {
                        Some(c) => c,
                        None if sent => "RequestFailed".into(),
                        None => "InvalidRecord".into(),
                    };
                    for (i, rec) in pending {
                        failed.push((i, rec, code.clone(), msg.clone()));
                    }
                }
            }
            // errors that can never succeed are not retried
            let (failed, final_): (Vec<_>, Vec<_>) = failed
                .into_iter()
                .partition(|(_, _, code, _)| may_succeed_later(code));
            for (index, _, code, message) in final_ {
                report.failed.push(PutFailure {
                    index,
                    error: Error::RecordRejected {
                        code,
                        message,
                        attempts: attempt,
                    },
                });
            }
            if failed.is_empty() {
                return;
            }
            match delays.next() {
                Some(d) => {
                    tracing::debug!(
                        stream,
                        failed = failed.len(),
                        attempt,
                        "mq-kinesis: retrying failed PutRecords entries"
                    );
                    tokio::time::sleep(d).await;
                    pending = failed.into_iter().map(|(i, r, _, _)| (i, r)).collect();
                }
                None => {
                    for (index, _, code, message) in failed {
                        report.failed.push(PutFailure {
                            index,
                            error: Error::RecordRejected {
                                code,
                                message,
                                attempts: attempt,
                            },
                        });
                    }
                    return;
                }
            }
        }
    }
}
