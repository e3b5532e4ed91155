//! What every backend needs to store a message and read it back: [`Message::check_storable`]
//! and its limits.

use serde_json::Value;

use super::Message;
use crate::error::{Error, Result};

/// The deepest nesting of arrays and objects accepted in a payload or in metadata: every backend
/// can store and read back this much (JSON readers and BSON stop a little above it), so a message
/// that is accepted can always be delivered.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// The longest partition key accepted, in characters (the Kinesis limit, and the SQL column).
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// How deeply `value` nests arrays and objects (a scalar is 0), counting at most to `limit + 1`
/// so a hostile value costs no more than the limit. Iterative: no recursion on deep input.
pub(super) fn json_depth(value: &Value, limit: usize) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        let depth = depth + 1;
        deepest = deepest.max(depth);
        if deepest > limit {
            return deepest;
        }
        stack.extend(children.map(|c| (c, depth)));
    }
    deepest
}

/// The longest unique key accepted, in characters.
pub const MAX_UNIQUE_KEY_CHARS: usize = 255;

impl Message {
    /// Checks what every backend needs to store this message and read it back: payload and
    /// metadata nested at most [`MAX_PAYLOAD_DEPTH`] levels, a partition key of 1 to
    /// [`MAX_PARTITION_KEY_CHARS`] characters without NUL, log-context entries without NUL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidMessage`] naming the field.
    ///
    /// # Examples
    ///
    /// ```
    /// use mq_core::{Message, MessageId, QueueName};
    ///
    /// let mut deep = serde_json::json!(1);
    /// for _ in 0..200 {
    ///     deep = serde_json::json!([deep]);
    /// }
    /// let m = Message::new(MessageId::new("m1")?, QueueName::new("q")?, "t", deep, chrono::Utc::now());
    /// assert!(m.check_storable().unwrap_err().to_string().contains("nested"));
    /// # Ok::<(), mq_core::Error>(())
    /// ```
    pub fn check_storable(&self) -> Result<()> {
        let refuse = |field: &'static str, reason: String| {
            Err(Error::InvalidMessage {
                id: self.id.clone(),
                field,
                reason,
            })
        };
        let depth = json_depth(&self.payload, MAX_PAYLOAD_DEPTH);
        if depth > MAX_PAYLOAD_DEPTH {
            return refuse(
                "payload",
                format!(
                    "is nested more than {MAX_PAYLOAD_DEPTH} levels deep; flatten it or store it elsewhere"
                ),
            );
        }
        if !self.metadata.extra.is_empty() {
            let extra = Value::Object(self.metadata.extra.clone());
            if json_depth(&extra, MAX_PAYLOAD_DEPTH) > MAX_PAYLOAD_DEPTH {
                return refuse(
                    "metadata",
                    format!("is nested more than {MAX_PAYLOAD_DEPTH} levels deep"),
                );
            }
        }
        if let Some(key) = &self.partition_key {
            let chars = key.chars().count();
            if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
                return refuse(
                    "partition_key",
                    format!("has {chars} characters; use 1 to {MAX_PARTITION_KEY_CHARS}"),
                );
            }
            if key.contains('\0') {
                return refuse("partition_key", "contains a NUL character".to_owned());
            }
        }
        if let Some(key) = &self.unique_key {
            let chars = key.chars().count();
            if chars == 0 || chars > MAX_UNIQUE_KEY_CHARS {
                return refuse(
                    "unique_key",
                    format!("has {chars} characters; use 1 to {MAX_UNIQUE_KEY_CHARS}"),
                );
            }
            if key.contains('\0') {
                return refuse("unique_key", "contains a NUL character".to_owned());
            }
        }
        if self
            .metadata
            .log_context
            .iter()
            .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return refuse("log_context", "contains a NUL character".to_owned());
        }
        Ok(())
    }
}
