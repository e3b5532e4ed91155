//! [`KinesisDeadLetterSink`]: dead letters forwarded to a secondary Kinesis stream.

use async_trait::async_trait;
use chrono::Utc;
use mq_core::{BoxError, DeadLetter, DeadLetterSink, Message, QueueName};

use crate::producer::KinesisProducer;

/// The message type of a dead letter on a Kinesis dead-letter stream.
pub const DEAD_LETTER_MESSAGE_TYPE: &str = "mq.dead_letter";

/// Forwards dead letters to a secondary Kinesis stream.
///
/// A stream is append-only, so this is a [`DeadLetterSink`], not a
/// [`DeadLetterStore`](mq_core::DeadLetterStore): each dead letter becomes one mq message of type
/// [`DEAD_LETTER_MESSAGE_TYPE`] whose payload is the whole [`DeadLetter`] (message untouched,
/// origin, error chain, consumer, and the original bytes of a record in base64 under
/// `original_bytes`), with the original message id. Another service (or a
/// `KinesisQueue` consumer) reads the stream, turns records back into dead letters with
/// [`dead_letter_from_message`] and keeps, inspects or replays them through a store.
///
/// Delivery is at least once: when some records of a call are refused after the producer's
/// retries, the call fails and the caller (the backend) retries it, so the records that did land
/// may appear twice on the stream. A store built from the stream absorbs such repeats (one entry
/// per queue and message id).
///
/// # Examples
///
/// ```no_run
/// # async fn f(client: aws_sdk_kinesis::Client) -> mq_core::Result<()> {
/// use std::sync::Arc;
/// use mq_core::{CommonOptions, DeadLetterSink};
/// use mq_kinesis::{KinesisDeadLetterSink, KinesisProducer, ProducerOptions};
///
/// let producer = KinesisProducer::new(client, ProducerOptions::default());
/// let sink: Arc<dyn DeadLetterSink> = Arc::new(KinesisDeadLetterSink::new(producer, "orders-dlq")?);
/// let _options = CommonOptions::default().dead_letters(sink);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct KinesisDeadLetterSink {
    producer: KinesisProducer,
    stream: QueueName,
}

impl KinesisDeadLetterSink {
    /// A sink writing to `stream` through `producer`.
    ///
    /// # Errors
    ///
    /// [`mq_core::Error::InvalidName`] when `stream` is not a valid stream (queue) name.
    pub fn new(producer: KinesisProducer, stream: impl AsRef<str>) -> mq_core::Result<Self> {
        let stream = QueueName::new(stream.as_ref())
            .map_err(|e| mq_core::Error::invalid_name("stream", stream.as_ref(), e.to_string()))?;
        Ok(KinesisDeadLetterSink { producer, stream })
    }

    /// The stream.
    pub fn stream(&self) -> &str {
        self.stream.as_str()
    }
}

#[async_trait]
impl DeadLetterSink for KinesisDeadLetterSink {
    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), BoxError> {
        if letters.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let mut messages = Vec::with_capacity(letters.len());
        for letter in &letters {
            let payload = serde_json::to_value(letter).map_err(forward)?;
            let mut m = Message::new(
                letter.message.id.clone(),
                self.stream.clone(),
                DEAD_LETTER_MESSAGE_TYPE,
                payload,
                now,
            );
            m.partition_key = Some(format!("{}/{}", letter.message.queue, letter.message.id));
            messages.push(m);
        }
        let report = self
            .producer
            .put(self.stream.as_str(), &messages)
            .await
            .map_err(forward)?;
        if let Some(first) = report.failed.into_iter().next() {
            return Err(Box::new(forward(first.error)));
        }
        Ok(())
    }
}

/// A failed forward, as an [`mq_core::Error`] that keeps its cause.
fn forward(e: impl Into<BoxError>) -> mq_core::Error {
    mq_core::Error::backend("kinesis", "dead-letter forward", e)
}

/// The dead letter a [`KinesisDeadLetterSink`] wrote as `message`.
///
/// # Errors
///
/// [`mq_core::Error::CorruptDeadLetter`] when `message` is not such a record.
///
/// # Examples
///
/// ```
/// use mq_core::{DeadLetter, DeadLetterOrigin, ErrorChain, Message, MessageId, QueueName};
/// use mq_kinesis::{DEAD_LETTER_MESSAGE_TYPE, dead_letter_from_message};
///
/// let original = Message::new(MessageId::new("m1")?, QueueName::new("orders")?, "charge",
///     serde_json::json!({}), chrono::Utc::now());
/// let letter = DeadLetter::new(original, DeadLetterOrigin::backend("sql"), ErrorChain::msg("boom"), true, "w");
/// let record = Message::new(MessageId::new("m1")?, QueueName::new("orders-dlq")?,
///     DEAD_LETTER_MESSAGE_TYPE, serde_json::to_value(&letter)?, chrono::Utc::now());
/// assert_eq!(dead_letter_from_message(&record)?, letter);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn dead_letter_from_message(message: &Message) -> mq_core::Result<DeadLetter> {
    if message.message_type != DEAD_LETTER_MESSAGE_TYPE {
        return Err(mq_core::Error::corrupt_dead_letter(
            message.id.as_str(),
            format!(
                "message type {:?} is not {DEAD_LETTER_MESSAGE_TYPE:?}",
                message.message_type
            ),
        ));
    }
    serde_json::from_value(message.payload.clone()).map_err(|e| {
        mq_core::Error::corrupt_dead_letter(message.id.as_str(), format!("payload: {e}"))
    })
}
