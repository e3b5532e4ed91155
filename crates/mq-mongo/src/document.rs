//! The stored layout of a message and its conversions.
//!
//! One document per message:
//!
//! ```text
//! { _id: "<queue>/<message id>",   // unique per queue
//!   queue, type, payload (BSON from JSON), status,
//!   execute_at, expires_at?, created_at, updated_at, processing_started_at?, finished_at?,
//!   attempts, max_attempts?, retry_delay_ms?, partition_key?, metadata?,
//!   priority, unique_key?, unique_window_ms?,
//!   lease_owner?, lease_expires_at?, last_error?, claim_token?, op_token? }
//! ```
//!
//! `unique_key` stays on the document after it finished: a unique partial index on
//! `{queue, unique_key}` refuses a second holder, and a publish that finds the key on a message
//! finished longer than its `unique_window_ms` ago (or without a window) removes it from that
//! message first.
//!
//! Queue names cannot contain `/`, so the key splits at its first `/` without ambiguity
//! whatever the id holds. (A compound `{q, id}` key works too, but some MongoDB-compatible
//! servers cannot use the `_id` index for `$in` over embedded documents, which every claim and
//! completion does.)
//!
//! Times are BSON dates (millisecond precision) on the server's clock (see
//! [`ServerClock`]); `execute_at` is rounded up to the next millisecond so a message is never
//! delivered before the time it was given.

use chrono::{DateTime, Utc};
use mongodb::bson::{self, Bson, Document, doc};
use mq_core::backend::{Claim, Undecodable};
use mq_core::{Message, MessageId, QueueName, Status};
use serde::{Deserialize, Serialize};

use crate::clock::ServerClock;
use crate::error::Error;

/// The `_id` of a message: `<queue>/<id>`.
pub(crate) struct Key;

impl Key {
    pub(crate) fn string(queue: &QueueName, id: &MessageId) -> String {
        format!("{}/{}", queue.as_str(), id.as_str())
    }

    pub(crate) fn bson(queue: &QueueName, id: &MessageId) -> Bson {
        Bson::String(Key::string(queue, id))
    }

    /// `(queue, id)` of a key.
    pub(crate) fn split(key: &str) -> Option<(&str, &str)> {
        key.split_once('/')
    }
}

/// A message document as read from and written to the collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Doc {
    #[serde(rename = "_id")]
    pub(crate) key: String,
    pub(crate) queue: String,
    #[serde(rename = "type")]
    pub(crate) message_type: String,
    #[serde(default)]
    pub(crate) payload: Bson,
    pub(crate) status: String,
    pub(crate) execute_at: bson::DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<bson::DateTime>,
    #[serde(default)]
    pub(crate) attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_delay_ms: Option<i64>,
    pub(crate) created_at: bson::DateTime,
    pub(crate) updated_at: bson::DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) processing_started_at: Option<bson::DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) partition_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) metadata: Option<Bson>,
    /// Claim order, higher first. Always written, so the claim index orders every document.
    #[serde(default)]
    pub(crate) priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique_window_ms: Option<i64>,
}

/// A BSON date at `t`, truncated to the millisecond.
pub(crate) fn date(t: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(t.timestamp_millis())
}

/// A BSON date at `t`, rounded up to the next millisecond.
pub(crate) fn date_ceil(t: DateTime<Utc>) -> bson::DateTime {
    let ms = t.timestamp_millis();
    let exact = i64::from(t.timestamp_subsec_nanos().is_multiple_of(1_000_000));
    bson::DateTime::from_millis(ms.saturating_add(1 - exact))
}

pub(crate) fn chrono(d: bson::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(d.timestamp_millis()).unwrap_or(if d.timestamp_millis() < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

impl Doc {
    /// The document for a new message, its times moved to the server's clock; `Err` when the
    /// payload or metadata have no BSON form.
    pub(crate) fn from_message(m: &Message, clock: &ServerClock) -> Result<Doc, bson::ser::Error> {
        let at = |t| clock.to_server(t);
        let payload = bson::to_bson(&m.payload)?;
        let metadata = if m.metadata.is_empty() {
            None
        } else {
            Some(bson::to_bson(&m.metadata)?)
        };
        Ok(Doc {
            key: Key::string(&m.queue, &m.id),
            queue: m.queue.as_str().to_owned(),
            message_type: m.message_type.clone(),
            payload,
            status: m.status.as_str().to_owned(),
            execute_at: date_ceil(at(m.execute_at)),
            expires_at: m.expires_at.map(|t| date(at(t))),
            attempts: i64::from(m.attempts),
            max_attempts: m.max_attempts.map(i64::from),
            retry_delay_ms: m
                .retry_delay
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            created_at: date(at(m.created_at)),
            updated_at: date(at(m.updated_at)),
            processing_started_at: m.processing_started_at.map(|t| date(at(t))),
            partition_key: m.partition_key.clone(),
            metadata,
            priority: i32::from(m.priority),
            unique_key: m.unique_key.clone(),
            unique_window_ms: m
                .unique_window
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        })
    }

    /// The message this document holds.
    pub(crate) fn into_message(self) -> mq_core::Result<Message> {
        let malformed = |reason: String| {
            let e = Error::Malformed {
                queue: self.queue.clone(),
                id: self.key.clone(),
                reason,
            };
            mq_core::Error::backend("mongo", "decode", e)
        };
        let Some((_, raw_id)) = Key::split(&self.key) else {
            return Err(malformed("_id is not <queue>/<id>".into()));
        };
        let id = MessageId::new(raw_id).map_err(|e| malformed(e.to_string()))?;
        let queue = QueueName::new(&self.queue).map_err(|e| malformed(e.to_string()))?;
        let status: Status = self
            .status
            .parse()
            .map_err(|e: mq_core::Error| malformed(e.to_string()))?;
        let payload: serde_json::Value = match self.payload {
            Bson::Null | Bson::Undefined => serde_json::Value::Null,
            other => bson::from_bson(other).map_err(|e| malformed(format!("payload: {e}")))?,
        };
        let mut m = Message::new(
            id,
            queue,
            self.message_type.clone(),
            payload,
            chrono(self.created_at),
        );
        m.status = status;
        m.execute_at = chrono(self.execute_at);
        m.expires_at = self.expires_at.map(chrono);
        m.attempts = u32::try_from(self.attempts.max(0)).unwrap_or(u32::MAX);
        m.max_attempts = self
            .max_attempts
            .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX));
        m.retry_delay = self
            .retry_delay_ms
            .map(|ms| std::time::Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0)));
        m.updated_at = chrono(self.updated_at);
        m.processing_started_at = self.processing_started_at.map(chrono);
        m.partition_key = self.partition_key.clone();
        m.priority = i16::try_from(self.priority).unwrap_or(if self.priority < 0 {
            i16::MIN
        } else {
            i16::MAX
        });
        m.unique_key = self.unique_key.clone();
        m.unique_window = self
            .unique_window_ms
            .map(|ms| std::time::Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0)));
        if let Some(meta) = self.metadata.clone() {
            m.metadata = bson::from_bson(meta).map_err(|e| malformed(format!("metadata: {e}")))?;
        }
        Ok(m)
    }
}

/// MongoDB's largest document, in bytes.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// Checks that MongoDB can store `m` as this crate writes it: its payload and metadata have a
/// BSON form (no NUL in a field name) and its document fits in [`MAX_DOCUMENT_BYTES`]. (How
/// deep a payload may nest is checked by the publish path for every backend, below MongoDB's
/// own limit.) The refusal names the field and the rule.
pub(crate) fn check(m: &Message) -> mq_core::Result<()> {
    let refuse = |field: &'static str, reason: String| mq_core::Error::InvalidMessage {
        id: m.id.clone(),
        field,
        reason,
    };
    let doc = Doc::from_message(m, &ServerClock::default())
        .map_err(|e| refuse("payload", format!("has no BSON form: {e}")))?;
    let bytes =
        bson::to_vec(&doc).map_err(|e| refuse("payload", format!("has no BSON form: {e}")))?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(refuse(
            "payload",
            format!(
                "makes a document of {} bytes; MongoDB stores at most {MAX_DOCUMENT_BYTES}",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// A claimed document, read back.
pub(crate) enum Decoded {
    /// A message.
    Message(Box<Message>),
    /// A document that does not decode into a message, with what the runtime needs to
    /// dead-letter it alone.
    Undecodable(Undecodable),
    /// A document whose key does not even name a message (written by another program); the
    /// reason.
    Unnamed(String),
}

/// Decodes a claimed document. One that does not have the layout this crate writes (another
/// program wrote it, a field has the wrong type) comes back as [`Decoded::Undecodable`], with
/// its payload as extended JSON text, so that it fails alone instead of failing its batch.
pub(crate) fn decode(raw: Document) -> Decoded {
    let error = match bson::from_document::<Doc>(raw.clone()) {
        Ok(d) => match d.into_message() {
            Ok(m) => return Decoded::Message(Box::new(m)),
            Err(e) => mq_core::ErrorChain::from_error(&e).to_string(),
        },
        Err(e) => format!("not a message document: {e}"),
    };
    let key = raw.get_str("_id").unwrap_or_default();
    let Some(id) = Key::split(key).and_then(|(_, id)| MessageId::new(id).ok()) else {
        return Decoded::Unnamed(format!("document {:?}: {error}", raw.get("_id")));
    };
    let attempts = u32::try_from(as_u64(raw.get("attempts"))).unwrap_or(u32::MAX);
    let payload = raw
        .get("payload")
        .cloned()
        .map(|b| b.into_relaxed_extjson().to_string())
        .unwrap_or_default();
    Decoded::Undecodable(Undecodable::new(
        Claim::new(id, attempts),
        raw.get_str("type").unwrap_or_default(),
        payload,
        error,
    ))
}

/// A non-negative integer field (32- or 64-bit, or a double written by another tool); 0 when
/// missing, negative or of another type.
pub(crate) fn as_u64(b: Option<&Bson>) -> u64 {
    match b {
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(n)) if *n > 0.0 => *n as u64,
        _ => 0,
    }
}

/// The projection that reads a [`Doc`] without the bookkeeping fields.
pub(crate) fn doc_projection() -> Document {
    doc! {
        "lease_owner": 0, "lease_expires_at": 0, "last_error": 0, "claim_token": 0,
        "op_token": 0, "finished_at": 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_keeps_every_field() {
        let now = Utc::now();
        let mut m = Message::new(
            MessageId::new("a/b c").unwrap(),
            QueueName::new("q1").unwrap(),
            "t",
            json!({"n": 1, "f": 1.5, "s": "x", "l": [1, 2], "big": 9_007_199_254_740_993_i64, "o": {"k": null}}),
            now,
        );
        m.expires_at = Some(now + chrono::Duration::seconds(5));
        m.max_attempts = Some(4);
        m.retry_delay = Some(std::time::Duration::from_millis(1500));
        m.partition_key = Some("pk".into());
        m.metadata.log_context.insert("r".into(), "1".into());
        m.priority = -7;
        m.unique_key = Some("k".into());
        m.unique_window = Some(std::time::Duration::from_secs(9));
        let d = Doc::from_message(&m, &ServerClock::default()).unwrap();
        let bytes = bson::to_document(&d).unwrap();
        let back: Doc = bson::from_document(bytes).unwrap();
        let got = back.into_message().unwrap();
        assert_eq!(got.payload, m.payload);
        assert_eq!(got.id, m.id);
        assert_eq!(got.max_attempts, Some(4));
        assert_eq!(got.retry_delay, m.retry_delay);
        assert_eq!(got.metadata, m.metadata);
        assert_eq!(got.priority, -7);
        assert_eq!(got.unique_key.as_deref(), Some("k"));
        assert_eq!(got.unique_window, m.unique_window);
        assert!(got.execute_at >= m.execute_at);
        assert!(got.execute_at - m.execute_at < chrono::Duration::milliseconds(1));
    }

    #[test]
    fn check_refuses_what_bson_cannot_hold() {
        let id = MessageId::new("m").unwrap();
        let m = |payload| {
            Message::new(
                id.clone(),
                QueueName::new("q").unwrap(),
                "t",
                payload,
                Utc::now(),
            )
        };
        assert!(check(&m(json!({ "ok": [1, 2] }))).is_ok());
        let e = check(&m(json!({ "a\u{0}b": 1 }))).unwrap_err().to_string();
        assert!(e.contains("payload has no BSON form"), "{e}");
        let big = "x".repeat(MAX_DOCUMENT_BYTES);
        let e = check(&m(json!({ "big": big }))).unwrap_err().to_string();
        assert!(e.contains("MongoDB stores at most"), "{e}");
    }

    #[test]
    fn ceil_rounds_up_only_fractions() {
        let t = DateTime::from_timestamp_millis(1_000).unwrap();
        assert_eq!(date_ceil(t).timestamp_millis(), 1_000);
        let t2 = t + chrono::Duration::microseconds(1);
        assert_eq!(date_ceil(t2).timestamp_millis(), 1_001);
    }
}
