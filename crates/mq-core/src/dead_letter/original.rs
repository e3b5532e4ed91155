//! The original bytes of a dead letter: how they are written in JSON, and the message that
//! stands for them when they are published again.

use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde_json::{Map, Value};

use crate::dead_letter::DeadLetter;
use crate::message::Message;

/// The payload key of an [`ORIGINAL_BYTES_TYPE`](DeadLetter::ORIGINAL_BYTES_TYPE) message that
/// holds the bytes in standard base64.
const DATA_KEY: &str = "data_base64";
/// The payload key that holds the same bytes as text, when they are UTF-8.
const TEXT_KEY: &str = "text";

impl DeadLetter {
    /// The message type of a message that stands for a record's original bytes: its payload
    /// holds the bytes in standard base64 under `data_base64`, and the same bytes as text under
    /// `text` when they are UTF-8 (see [`original_bytes_payload`](Self::original_bytes_payload)).
    ///
    /// A backend whose records are bytes (Kinesis) writes such a message as those bytes, unchanged,
    /// under the message's partition key: that is how a replay puts a record back on its stream
    /// exactly as it was read. Other backends store it like any message. The Kinesis consumer
    /// also gives this type to a record that does not decode, which is where the name comes from.
    pub const ORIGINAL_BYTES_TYPE: &'static str = "undecodable";

    /// The payload of an [`ORIGINAL_BYTES_TYPE`](Self::ORIGINAL_BYTES_TYPE) message for `bytes`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mq_core::{DeadLetter, Message, MessageId, QueueName};
    ///
    /// let bytes = [0xff, 0x00, b'x'];
    /// let payload = DeadLetter::original_bytes_payload(&bytes);
    /// assert_eq!(payload["data_base64"], "/wB4");
    /// assert!(payload.get("text").is_none(), "not UTF-8");
    ///
    /// let m = Message::new(MessageId::new("m1")?, QueueName::new("events")?,
    ///     DeadLetter::ORIGINAL_BYTES_TYPE, payload, chrono::Utc::now());
    /// assert_eq!(DeadLetter::original_bytes_in(&m).as_deref(), Some(&bytes[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn original_bytes_payload(bytes: &[u8]) -> Value {
        let mut payload = Map::new();
        payload.insert(DATA_KEY.into(), BASE64_STANDARD.encode(bytes).into());
        if let Ok(text) = std::str::from_utf8(bytes) {
            payload.insert(TEXT_KEY.into(), text.into());
        }
        Value::Object(payload)
    }

    /// The bytes `message` stands for: `Some` only for a message of type
    /// [`ORIGINAL_BYTES_TYPE`](Self::ORIGINAL_BYTES_TYPE) whose `data_base64` is valid base64.
    pub fn original_bytes_in(message: &Message) -> Option<Vec<u8>> {
        if message.message_type != Self::ORIGINAL_BYTES_TYPE {
            return None;
        }
        decode(message.payload.get(DATA_KEY)?.as_str()?)
    }
}

/// Standard base64 with padding.
pub(crate) fn encode(bytes: &[u8]) -> String {
    BASE64_STANDARD.encode(bytes)
}

/// Standard base64 with padding; `None` when `text` is not.
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    BASE64_STANDARD.decode(text).ok()
}

/// `Option<Vec<u8>>` as a standard base64 string (or null) in serde formats.
pub(crate) mod base64_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => serializer.serialize_str(&super::encode(b)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(text) => super::decode(&text)
                .map(Some)
                .ok_or_else(|| D::Error::custom("original_bytes is not standard base64")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::{DeadLetterOrigin, ErrorChain};
    use crate::message::MessageId;
    use crate::queue_name::QueueName;

    fn letter() -> DeadLetter {
        let m = Message::new(
            MessageId::new("m1").unwrap(),
            QueueName::new("q").unwrap(),
            "t",
            serde_json::json!({}),
            chrono::Utc::now(),
        );
        DeadLetter::new(
            m,
            DeadLetterOrigin::backend("kinesis"),
            ErrorChain::msg("e"),
            true,
            "c",
        )
    }

    #[test]
    fn original_bytes_travel_as_base64_in_json() {
        for bytes in [vec![], vec![0xff, 0x00, 0xfe], b"{ \"a\" : 1 }\n".to_vec()] {
            let l = letter().original_bytes(bytes.clone());
            let json = serde_json::to_value(&l).unwrap();
            assert_eq!(json["original_bytes"], encode(&bytes));
            let back: DeadLetter = serde_json::from_value(json).unwrap();
            assert_eq!(back.original_bytes, Some(bytes));
        }
        let json = serde_json::to_value(letter()).unwrap();
        assert!(json.get("original_bytes").is_none(), "left out when None");
        let back: DeadLetter = serde_json::from_value(json).unwrap();
        assert_eq!(
            back.original_bytes, None,
            "letters written before read as None"
        );
        let mut bad = serde_json::to_value(letter()).unwrap();
        bad["original_bytes"] = "not base64!".into();
        assert!(serde_json::from_value::<DeadLetter>(bad).is_err());
    }

    #[test]
    fn only_original_bytes_messages_stand_for_bytes() {
        let mut m = letter().message;
        m.payload = DeadLetter::original_bytes_payload(b"hi");
        assert_eq!(m.payload["text"], "hi");
        assert_eq!(DeadLetter::original_bytes_in(&m), None, "wrong type");
        m.message_type = DeadLetter::ORIGINAL_BYTES_TYPE.into();
        assert_eq!(DeadLetter::original_bytes_in(&m), Some(b"hi".to_vec()));
        m.payload["data_base64"] = "%%".into();
        assert_eq!(DeadLetter::original_bytes_in(&m), None, "bad base64");
    }
}
