//! [`MongoOptions`]: where messages live and how the backend talks to the server.

use std::time::Duration;

use crate::error::{Error, Result};

/// How [`MongoStore`](crate::MongoStore) claims a batch.
///
/// Both are atomic: a document is only taken by an update whose filter still sees it ready, so
/// two consumers never hold one message at once.
///
/// # Examples
///
/// ```
/// use mq_mongo::{ClaimStrategy, MongoOptions};
///
/// let opts = MongoOptions::default().claim_strategy(ClaimStrategy::FindOneAndUpdate);
/// assert_eq!(opts.get_claim_strategy(), ClaimStrategy::FindOneAndUpdate);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClaimStrategy {
    /// Find up to `limit` ready ids, take them with one conditional `update_many` that writes a
    /// unique claim token, then read back what carries the token: three round trips per batch,
    /// whatever its size. Under heavy contention a consumer may get fewer than `limit` messages
    /// (others took some first); it tries again a few times before returning. The default.
    #[default]
    Batch,
    /// One `find_one_and_update` per message: one round trip per message, never loses a race.
    FindOneAndUpdate,
}

/// Settings of the MongoDB backend.
///
/// Defaults: database `mq`, collection `mq_messages`, server selection and connect timeouts of
/// 10 s, finished messages kept forever (no TTL index), change-stream wake-up on, batch claiming
/// ([`ClaimStrategy::Batch`]), sweep for expired messages and leases every 1 s.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mq_mongo::MongoOptions;
///
/// let opts = MongoOptions::default()
///     .database("jobs")
///     .collection("messages")
///     .server_selection_timeout(Duration::from_secs(2))
///     .retention(Some(Duration::from_secs(7 * 24 * 3600)))
///     .change_stream(false);
/// opts.validate()?;
/// assert_eq!(opts.get_database(), "jobs");
/// assert!(MongoOptions::default().collection("").validate().is_err());
/// # Ok::<(), mq_mongo::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoOptions {
    database: String,
    collection: String,
    server_selection_timeout: Duration,
    connect_timeout: Duration,
    retention: Option<Duration>,
    change_stream: bool,
    claim_strategy: ClaimStrategy,
    sweep_interval: Duration,
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            database: "mq".into(),
            collection: "mq_messages".into(),
            server_selection_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            retention: None,
            change_stream: true,
            claim_strategy: ClaimStrategy::Batch,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

impl MongoOptions {
    /// The database holding the collection.
    pub fn database(mut self, name: impl Into<String>) -> Self {
        self.database = name.into();
        self
    }
    /// The collection holding the messages of every queue (one document per message).
    pub fn collection(mut self, name: impl Into<String>) -> Self {
        self.collection = name.into();
        self
    }
    /// How long an operation waits for a usable server before failing; also bounds
    /// [`MongoQueue::connect`](crate::MongoQueue::connect).
    pub fn server_selection_timeout(mut self, d: Duration) -> Self {
        self.server_selection_timeout = d;
        self
    }
    /// How long opening one TCP connection may take.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Keep executed, failed, expired and dead-lettered messages this long after they finished,
    /// through a TTL index on `finished_at` (`None`, the default: keep them). The server's TTL
    /// monitor deletes them, typically within a minute after the age is reached.
    pub fn retention(mut self, age: Option<Duration>) -> Self {
        self.retention = age;
        self
    }
    /// Wake idle consumers through a change stream when the server supports one (a replica set);
    /// otherwise they poll. On by default.
    pub fn change_stream(mut self, on: bool) -> Self {
        self.change_stream = on;
        self
    }
    /// How a batch is claimed.
    pub fn claim_strategy(mut self, strategy: ClaimStrategy) -> Self {
        self.claim_strategy = strategy;
        self
    }

    /// How often (at most, per queue) a claim also looks for scheduled messages past
    /// `expires_at` (marked expired) and for leases that expired (crash recovery). Expired
    /// messages are never delivered in between; this only bounds how late they are reported and
    /// how soon a crashed consumer's messages come back after their lease. Default 1 s.
    pub fn sweep_interval(mut self, d: Duration) -> Self {
        self.sweep_interval = d;
        self
    }

    /// The database name.
    pub fn get_database(&self) -> &str {
        &self.database
    }
    /// The collection name.
    pub fn get_collection(&self) -> &str {
        &self.collection
    }
    /// The server selection timeout.
    pub fn get_server_selection_timeout(&self) -> Duration {
        self.server_selection_timeout
    }
    /// The connect timeout.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// The retention of finished messages, if any.
    pub fn get_retention(&self) -> Option<Duration> {
        self.retention
    }
    /// Whether change-stream wake-up is on.
    pub fn get_change_stream(&self) -> bool {
        self.change_stream
    }
    /// The claim strategy.
    pub fn get_claim_strategy(&self) -> ClaimStrategy {
        self.claim_strategy
    }

    /// The sweep interval.
    pub fn get_sweep_interval(&self) -> Duration {
        self.sweep_interval
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.database.is_empty()
            || self.database.len() > 63
            || self
                .database
                .chars()
                .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'))
        {
            return Err(Error::invalid_option(
                "database",
                format!(
                    "{:?} is not a valid MongoDB database name (1 to 63 characters, none of /\\. \"$)",
                    self.database
                ),
            ));
        }
        if self.collection.is_empty()
            || self.collection.starts_with("system.")
            || self.collection.contains('$')
            || self.collection.contains('\0')
        {
            return Err(Error::invalid_option(
                "collection",
                format!(
                    "{:?} is not a valid collection name (non-empty, no $, not system.*)",
                    self.collection
                ),
            ));
        }
        for (field, d) in [
            ("server_selection_timeout", self.server_selection_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(Error::invalid_option(
                    field,
                    format!("must be between 1 ms and 1 h, got {d:?}"),
                ));
            }
        }
        if self.sweep_interval > Duration::from_secs(3600) {
            return Err(Error::invalid_option(
                "sweep_interval",
                format!("must be at most 1 h, got {:?}", self.sweep_interval),
            ));
        }
        if let Some(age) = self.retention
            && (age < Duration::from_secs(1) || age.as_secs() > i32::MAX as u64)
        {
            return Err(Error::invalid_option(
                "retention",
                format!(
                    "must be at least 1 s and at most {} s, got {age:?}",
                    i32::MAX
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_field() {
        assert!(MongoOptions::default().validate().is_ok());
        let e = MongoOptions::default()
            .database("a.b")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("database"), "{e}");
        let e = MongoOptions::default()
            .server_selection_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("server_selection_timeout"), "{e}");
        let e = MongoOptions::default()
            .retention(Some(Duration::from_millis(10)))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("retention"), "{e}");
        assert!(MongoOptions::default().collection("").validate().is_err());
    }
}
