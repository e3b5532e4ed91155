//! Records on the wire: messages as JSON, and decoding of the TypeScript original's relaxed
//! extended JSON.

use chrono::{DateTime, TimeZone, Utc};
use mq_core::{DeadLetter, Message, QueueName, Status};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The message type of a dead letter made of a record that does not decode: its payload holds
/// the record's bytes in base64 under `data_base64`, and the same bytes as text under `text` when
/// they are UTF-8; its partition key is the record's. It is
/// [`DeadLetter::ORIGINAL_BYTES_TYPE`].
///
/// Publishing such a message to a Kinesis queue writes the bytes it holds, unchanged, instead of
/// the message as JSON: that is how a replay puts a dead-lettered record (decoded or not) back
/// on its stream exactly as it was read.
pub const UNDECODABLE_MESSAGE_TYPE: &str = DeadLetter::ORIGINAL_BYTES_TYPE;

/// Encodes a message as the record data: JSON of [`Message`], or for a message of type
/// [`UNDECODABLE_MESSAGE_TYPE`] the original bytes it holds.
pub(crate) fn encode(message: &Message) -> Vec<u8> {
    if let Some(bytes) = DeadLetter::original_bytes_in(message) {
        return bytes;
    }
    // A Message always serializes: every field is a plain value.
    serde_json::to_vec(message).unwrap_or_default()
}

/// Decodes record data into a message of `queue`.
///
/// Accepts what [`KinesisProducer`](crate::KinesisProducer) writes and what the TypeScript
/// original wrote: relaxed extended JSON (`{"$date": ...}`, `{"$oid": ...}`, `{"$numberLong": ...}`),
/// `_id` for `id`, `retry_after` (ms) for `retry_delay_ms`. A record without an id gets
/// `<shard>:<sequence number>`; missing timestamps become `arrival`.
///
/// # Examples
///
/// ```
/// let data = br#"{"_id":{"$oid":"65f1c0ffee"},"type":"welcome","payload":{"to":"a"},
///   "execute_at":{"$date":"2024-03-01T10:00:00.000Z"},"created_at":{"$date":1709287200000},
///   "updated_at":{"$date":{"$numberLong":"1709287200000"}},"queue_id":"emails","retries":3}"#;
/// let queue = mq_core::QueueName::new("emails")?;
/// let m = mq_kinesis::decode_record(data, &queue, "shardId-000000000000", "1", chrono::Utc::now())?;
/// assert_eq!(m.id.as_str(), "65f1c0ffee");
/// assert_eq!(m.created_at.timestamp_millis(), 1709287200000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode_record(
    data: &[u8],
    queue: &QueueName,
    shard: &str,
    sequence_number: &str,
    arrival: DateTime<Utc>,
) -> Result<Message> {
    let decode_err = |source| Error::Decode {
        sequence_number: sequence_number.to_owned(),
        source,
    };
    // fast path: a record written by this crate
    if let Ok(mut m) = serde_json::from_slice::<Message>(data) {
        m.queue = queue.clone();
        return Ok(m);
    }
    let mut value: Value = serde_json::from_slice(data).map_err(decode_err)?;
    relax(&mut value);
    let Value::Object(obj) = &mut value else {
        return Err(decode_err(serde::de::Error::custom(
            "record is not a JSON object",
        )));
    };
    normalise(obj, queue, shard, sequence_number, arrival);
    let mut m: Message = serde_json::from_value(value).map_err(decode_err)?;
    m.queue = queue.clone();
    Ok(m)
}

fn normalise(
    obj: &mut Map<String, Value>,
    queue: &QueueName,
    shard: &str,
    sequence_number: &str,
    arrival: DateTime<Utc>,
) {
    if !obj.contains_key("id") {
        let id = obj
            .remove("_id")
            .and_then(|v| match v {
                Value::String(s) => Some(s),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| format!("{shard}:{sequence_number}"));
        obj.insert("id".into(), Value::String(id));
    }
    obj.insert("queue_id".into(), Value::String(queue.to_string()));
    let status_ok = obj
        .get("status")
        .and_then(Value::as_str)
        .is_some_and(|s| s.parse::<Status>().is_ok());
    if !status_ok {
        obj.insert("status".into(), Value::String("scheduled".into()));
    }
    if !obj.contains_key("retry_delay_ms")
        && let Some(ms) = obj.get("retry_after").and_then(Value::as_u64)
        && ms > 0
    {
        obj.insert("retry_delay_ms".into(), Value::from(ms));
    }
    let arrival = Value::String(arrival.to_rfc3339());
    for field in ["created_at", "updated_at", "execute_at"] {
        if !obj.get(field).is_some_and(Value::is_string) {
            obj.insert(field.into(), arrival.clone());
        }
    }
    for field in ["expires_at", "processing_started_at"] {
        if obj.get(field).is_some_and(|v| !v.is_string()) {
            obj.remove(field);
        }
    }
    if obj.get("payload").is_none() {
        obj.insert("payload".into(), Value::Null);
    }
}

/// Replaces extended-JSON wrappers by plain values, recursively.
fn relax(v: &mut Value) {
    let replacement = match v {
        Value::Object(obj) if obj.len() == 1 => obj
            .iter_mut()
            .next()
            .and_then(|(k, inner)| unwrap_ejson(k, inner)),
        _ => None,
    };
    if let Some(r) = replacement {
        *v = r;
        return;
    }
    match v {
        Value::Array(items) => items.iter_mut().for_each(relax),
        Value::Object(obj) => obj.values_mut().for_each(relax),
        _ => {}
    }
}

fn unwrap_ejson(key: &str, inner: &mut Value) -> Option<Value> {
    match key {
        "$oid" | "$numberDecimal" | "$symbol" => inner.as_str().map(|s| Value::String(s.into())),
        "$numberLong" | "$numberInt" => {
            let s = inner.as_str()?;
            s.parse::<i64>().ok().map(Value::from)
        }
        "$numberDouble" => {
            let s = inner.as_str()?;
            s.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
        }
        "$date" => {
            relax(inner);
            match inner {
                Value::String(s) => DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|d| Value::String(d.with_timezone(&Utc).to_rfc3339())),
                Value::Number(n) => n
                    .as_i64()
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                    .map(|d| Value::String(d.to_rfc3339())),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_ejson() {
        let q = QueueName::new("q").unwrap();
        let m = mq_core::NewMessage::new("t", serde_json::json!({"a": 1}))
            .partition_key("k")
            .into_message(&mq_core::UlidGenerator, q.clone(), Utc::now());
        let back = decode_record(&encode(&m), &q, "s", "1", Utc::now()).unwrap();
        assert_eq!(back, m);

        let ts = br#"{"type":"t","payload":{"at":{"$date":"2024-01-01T00:00:00Z"},"n":{"$numberLong":"7"}}}"#;
        let m = decode_record(ts, &q, "shard-1", "99", Utc::now()).unwrap();
        assert_eq!(m.id.as_str(), "shard-1:99");
        assert_eq!(m.payload["n"], 7);
        assert!(
            m.payload["at"]
                .as_str()
                .unwrap()
                .starts_with("2024-01-01T00:00:00")
        );
        assert!(decode_record(b"not json", &q, "s", "1", Utc::now()).is_err());
    }

    /// Extended JSON is relaxed only in records the TypeScript original wrote (it serialised
    /// the whole message, payload included, that way); a record mq wrote keeps a payload that
    /// happens to look like extended JSON exactly as published.
    #[test]
    fn an_mq_record_keeps_its_payload_as_published() {
        let q = QueueName::new("q").unwrap();
        let payload =
            serde_json::json!({"when": {"$date": "not a date"}, "n": {"$numberLong": "7"}});
        let m = mq_core::NewMessage::new("t", payload.clone()).into_message(
            &mq_core::UlidGenerator,
            q.clone(),
            Utc::now(),
        );
        let back = decode_record(&encode(&m), &q, "s", "1", Utc::now()).unwrap();
        assert_eq!(back.payload, payload);
    }
}
