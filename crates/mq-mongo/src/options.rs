//! [`MongoOptions`]: where messages live and how the backend talks to the server.

use std::time::Duration;

use mq_core::{CommonOptions, Error, Result};

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

/// Settings of the MongoDB backend: where [`MongoQueue`](crate::MongoQueue),
/// [`MongoDeadLetterStore`](crate::MongoDeadLetterStore),
/// [`MongoCheckpointStore`](crate::MongoCheckpointStore) and
/// [`MongoLeaseTable`](crate::MongoLeaseTable) keep their data and how they talk to the server.
/// One value can configure all four: each reads its own collection.
///
/// Defaults: database `mq`; collections `mq_messages` (messages), `mq_dead_letters`,
/// `mq_checkpoints` and `mq_leases`; server selection and connect timeouts of 10 s; collections and indexes
/// created when missing; finished messages kept forever (no TTL index); change-stream wake-up on;
/// batch claiming ([`ClaimStrategy::Batch`]); a sweep for expired messages and leases every 1 s;
/// default [`CommonOptions`].
///
/// # Names
///
/// Names follow MongoDB's rules, checked before any call to the server, and are refused with
/// [`mq_core::Error::InvalidName`]: a database name has 1 to 63 bytes and none of
/// `/ \ . " $ * < > : | ?`; a collection name starts with a letter or `_`, has no `$`, does not
/// start with `system.`, and `<database>.<collection>` fits in 255 bytes. On top of that, names
/// are printable ASCII without spaces: control characters and look-alike Unicode letters could
/// otherwise point an operator at the wrong collection.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mq_core::CommonOptions;
/// use mq_mongo::MongoOptions;
///
/// let opts = MongoOptions::default()
///     .database("jobs")
///     .collection("messages")
///     .server_selection_timeout(Duration::from_secs(2))
///     .retention(Some(Duration::from_secs(7 * 24 * 3600)))
///     .change_stream(false)
///     .common(CommonOptions::default().max_message_bytes(64 * 1024));
/// opts.validate()?;
/// assert_eq!(opts.get_database(), "jobs");
/// assert!(MongoOptions::default().collection("a$b").validate().is_err());
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MongoOptions {
    database: String,
    collection: String,
    dead_letter_collection: String,
    checkpoint_collection: String,
    lease_collection: String,
    control_collection: String,
    server_selection_timeout: Duration,
    connect_timeout: Duration,
    create_schema: bool,
    retention: Option<Duration>,
    idempotency_window: Option<Duration>,
    change_stream: bool,
    claim_strategy: ClaimStrategy,
    sweep_interval: Duration,
    common: CommonOptions,
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            database: "mq".into(),
            collection: "mq_messages".into(),
            dead_letter_collection: "mq_dead_letters".into(),
            checkpoint_collection: "mq_checkpoints".into(),
            lease_collection: "mq_leases".into(),
            control_collection: "mq_queue_controls".into(),
            server_selection_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            create_schema: true,
            retention: None,
            idempotency_window: None,
            change_stream: true,
            claim_strategy: ClaimStrategy::Batch,
            sweep_interval: Duration::from_secs(1),
            common: CommonOptions::default(),
        }
    }
}

impl MongoOptions {
    mq_core::__option_setters! {
        /// The database holding the collections.
        database(name: impl Into<String>) name.into();
        /// The collection holding the messages of every queue (one document per message).
        collection(name: impl Into<String>) name.into();
        /// The collection of [`MongoDeadLetterStore`](crate::MongoDeadLetterStore).
        dead_letter_collection(name: impl Into<String>) name.into();
        /// The collection of [`MongoCheckpointStore`](crate::MongoCheckpointStore).
        checkpoint_collection(name: impl Into<String>) name.into();
        /// The collection of [`MongoLeaseTable`](crate::MongoLeaseTable) (default `mq_leases`).
        ///
        /// ```
        /// let opts = mq_mongo::MongoOptions::default().lease_collection("kinesis_leases");
        /// assert_eq!(opts.get_lease_collection(), "kinesis_leases");
        /// ```
        lease_collection(name: impl Into<String>) name.into();
        /// The collection holding one small document per paused queue (default
        /// `mq_queue_controls`), read by every claim so a pause stops all consumers at once.
        control_collection(name: impl Into<String>) name.into();
        /// How long an operation waits for a usable server before failing; also bounds `connect`.
        server_selection_timeout(d: Duration) d;
        /// How long opening one TCP connection may take.
        connect_timeout(d: Duration) d;
        /// Create the collection and indexes a queue or store needs when they are missing (the
        /// default). When false, nothing is ever created: connecting checks that they exist and
        /// fails naming the first one missing, for read-only tools and least-privilege users.
        create_schema(on: bool) on;
        /// Keep executed, failed, expired, cancelled and dead-lettered messages this long after
        /// they finished, through a TTL index on `finished_at` (`None`, the default: keep them).
        /// The server's TTL monitor deletes them, typically within a minute after the age is
        /// reached. A different age than the one the index was built with replaces the index
        /// when the queue connects; `None` leaves an existing index as it is. A message's
        /// unique-key window cannot outlast its retention: the key is free once the message is
        /// deleted.
        retention(age: Option<Duration>) age;
        /// With a [`retention`](MongoOptions::retention): how long a finished message's id is
        /// still refused as a duplicate after the retention removed the message (`None`, the
        /// default: the id is free once the message is deleted). The message is then kept as a
        /// small document without its payload, metadata and last error until this window
        /// passes, so a publish that replays an id (an at-least-once producer, a dead-letter
        /// replay) is refused with [`mq_core::Error::DuplicateId`] instead of running the work
        /// twice. The messages' numbers in queue statistics include these documents until they
        /// are deleted.
        ///
        /// ```
        /// use std::time::Duration;
        /// use mq_mongo::MongoOptions;
        ///
        /// let day = Duration::from_secs(24 * 3600);
        /// let opts = MongoOptions::default().retention(Some(day)).idempotency_window(Some(7 * day));
        /// opts.validate()?;
        /// # Ok::<(), mq_core::Error>(())
        /// ```
        idempotency_window(window: Option<Duration>) window;
        /// Wake idle consumers through a change stream when the server supports one (a replica
        /// set); otherwise they poll. On by default.
        change_stream(on: bool) on;
        /// How a batch is claimed.
        claim_strategy(strategy: ClaimStrategy) strategy;
        /// How often (at most, per queue) a claim also looks for scheduled messages past
        /// `expires_at` (marked expired) and for leases that expired (crash recovery). Expired
        /// messages are never delivered in between; this only bounds how late they are reported and
        /// how soon a crashed consumer's messages come back after their lease. Default 1 s.
        sweep_interval(d: Duration) d;
        /// Settings shared by every backend (observers, dead letters, ids, names, size limit); the
        /// stores ignore them.
        common(common: CommonOptions) common;
    }

    /// The database name.
    pub fn get_database(&self) -> &str {
        &self.database
    }
    /// The collection of the messages.
    pub fn get_collection(&self) -> &str {
        &self.collection
    }
    /// The collection of the dead letters.
    pub fn get_dead_letter_collection(&self) -> &str {
        &self.dead_letter_collection
    }
    /// The collection of the checkpoints.
    pub fn get_checkpoint_collection(&self) -> &str {
        &self.checkpoint_collection
    }
    /// The collection of the lease table.
    ///
    /// ```
    /// assert_eq!(mq_mongo::MongoOptions::default().get_lease_collection(), "mq_leases");
    /// ```
    pub fn get_lease_collection(&self) -> &str {
        &self.lease_collection
    }
    /// The collection of the queue controls (pause and resume).
    pub fn get_control_collection(&self) -> &str {
        &self.control_collection
    }
    /// The server selection timeout.
    pub fn get_server_selection_timeout(&self) -> Duration {
        self.server_selection_timeout
    }
    /// The connect timeout.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// Whether missing collections and indexes are created.
    pub fn get_create_schema(&self) -> bool {
        self.create_schema
    }
    /// The retention of finished messages, if any.
    pub fn get_retention(&self) -> Option<Duration> {
        self.retention
    }
    /// How long ids stay refused after the retention removed their message, if at all.
    pub fn get_idempotency_window(&self) -> Option<Duration> {
        self.idempotency_window
    }
    /// How long a finished message's document stays: its retention plus the idempotency
    /// window; `None` without a retention.
    pub(crate) fn get_document_lifetime(&self) -> Option<Duration> {
        let age = self.retention?;
        Some(age.saturating_add(self.idempotency_window.unwrap_or_default()))
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
    /// The shared settings.
    pub fn get_common(&self) -> &CommonOptions {
        &self.common
    }

    /// Checks every field: names with [`Error::InvalidName`], the rest with
    /// [`Error::InvalidOption`] naming the field. Every constructor calls it first.
    pub fn validate(&self) -> Result<()> {
        database_name(&self.database)?;
        let collections = [
            ("collection", &self.collection),
            ("dead_letter_collection", &self.dead_letter_collection),
            ("checkpoint_collection", &self.checkpoint_collection),
            ("lease_collection", &self.lease_collection),
            ("control_collection", &self.control_collection),
        ];
        for (i, (field, name)) in collections.iter().enumerate() {
            collection_name(&self.database, name)?;
            if let Some((other, _)) = collections[..i].iter().find(|(_, n)| n == name) {
                return Err(Error::invalid_option(
                    field,
                    format!("{name:?} is already the {other}; give each its own collection"),
                ));
            }
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
        if let Some(window) = self.idempotency_window {
            let total = self.retention.unwrap_or_default().saturating_add(window);
            if total.as_secs() > i32::MAX as u64 {
                return Err(Error::invalid_option(
                    "idempotency_window",
                    format!(
                        "with the retention it must stay within {} s, got {window:?}",
                        i32::MAX
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// MongoDB's limit on a database name, in bytes.
const MAX_DATABASE_BYTES: usize = 63;
/// MongoDB's limit on `<database>.<collection>`, in bytes.
const MAX_NAMESPACE_BYTES: usize = 255;

/// The rules both kinds of names share: not empty, within `max` bytes, printable ASCII without
/// spaces, none of `forbidden`.
fn common_rules(kind: &'static str, name: &str, max: usize, forbidden: &[char]) -> Result<()> {
    let refuse = |reason: String| Err(Error::invalid_name(kind, name, reason));
    if name.is_empty() {
        return refuse("must not be empty".into());
    }
    if name.len() > max {
        return refuse(format!(
            "is {} bytes long; MongoDB allows at most {max} here",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii()) {
        return refuse(format!(
            "contains the non-ASCII character {c:?} (U+{:04X}); use ASCII so that a look-alike \
             letter cannot name another {kind}",
            u32::from(c)
        ));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return refuse(format!(
            "contains {c:?}; use letters, digits and punctuation, no spaces or control characters"
        ));
    }
    if let Some(c) = name.chars().find(|c| forbidden.contains(c)) {
        return refuse(format!(
            "contains {c:?}, which MongoDB refuses in a {kind} name"
        ));
    }
    Ok(())
}

fn database_name(name: &str) -> Result<()> {
    const FORBIDDEN: [char; 11] = ['/', '\\', '.', '"', '$', '*', '<', '>', ':', '|', '?'];
    common_rules("database", name, MAX_DATABASE_BYTES, &FORBIDDEN)
}

fn collection_name(database: &str, name: &str) -> Result<()> {
    let max = MAX_NAMESPACE_BYTES.saturating_sub(database.len() + 1);
    common_rules("collection", name, max, &['$'])?;
    if name.starts_with("system.") {
        return Err(Error::invalid_name(
            "collection",
            name,
            "names starting with system. are reserved by MongoDB",
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return Err(Error::invalid_name(
            "collection",
            name,
            "must start with a letter or an underscore",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(opts: MongoOptions) -> Error {
        opts.validate().expect_err("must be refused")
    }

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_field() {
        assert!(MongoOptions::default().validate().is_ok());
        let e = refused(MongoOptions::default().server_selection_timeout(Duration::ZERO));
        assert!(e.to_string().contains("server_selection_timeout"), "{e}");
        let e = refused(MongoOptions::default().retention(Some(Duration::from_millis(10))));
        assert!(e.to_string().contains("retention"), "{e}");
        let e = refused(
            MongoOptions::default()
                .retention(Some(Duration::from_secs(i32::MAX as u64)))
                .idempotency_window(Some(Duration::from_secs(1))),
        );
        assert!(e.to_string().contains("idempotency_window"), "{e}");
        let e = refused(
            MongoOptions::default().idempotency_window(Some(Duration::from_secs(u64::MAX))),
        );
        assert!(e.to_string().contains("idempotency_window"), "{e}");
        let opts = MongoOptions::default()
            .retention(Some(Duration::from_secs(60)))
            .idempotency_window(Some(Duration::from_secs(3600)));
        assert_eq!(
            opts.get_document_lifetime(),
            Some(Duration::from_secs(3660))
        );
        let e = refused(MongoOptions::default().lease_collection("mq_checkpoints"));
        assert!(
            matches!(
                e,
                Error::InvalidOption {
                    field: "lease_collection",
                    ..
                }
            ),
            "{e}"
        );
        let e = refused(MongoOptions::default().dead_letter_collection("mq_messages"));
        assert!(
            matches!(
                e,
                Error::InvalidOption {
                    field: "dead_letter_collection",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        let long = "a".repeat(10 * 1024);
        let databases = [
            "",
            "a.b",
            "a$b",
            "a\0b",
            "a\nb",
            "a b",
            "a/b",
            "a\\b",
            "a\"b",
            "a*b",
            "a:b",
            "a?b",
            "a|b",
            "jobs\u{0430}",
            "\u{202e}bo",
            &long,
            &"d".repeat(64),
        ];
        for bad in databases {
            let e = refused(MongoOptions::default().database(bad));
            assert!(
                matches!(
                    &e,
                    Error::InvalidName {
                        kind: "database",
                        ..
                    }
                ),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().len() < 600, "the message stays short: {e}");
        }
        let collections = [
            "",
            "a$b",
            "a\0b",
            "a\nb",
            "a\tb",
            "a b",
            "system.users",
            "1abc",
            ".a",
            "m\u{0435}ssages",
            "\u{ff41}",
            &long,
        ];
        for bad in collections {
            for opts in [
                MongoOptions::default().collection(bad),
                MongoOptions::default().dead_letter_collection(bad),
                MongoOptions::default().checkpoint_collection(bad),
                MongoOptions::default().lease_collection(bad),
            ] {
                let e = refused(opts);
                assert!(
                    matches!(
                        &e,
                        Error::InvalidName {
                            kind: "collection",
                            ..
                        }
                    ),
                    "{bad:?}: {e}"
                );
            }
        }
        // The namespace `<database>.<collection>` must fit in 255 bytes.
        let db = "d".repeat(63);
        let collection_of = |len: usize| {
            MongoOptions::default()
                .database(&db)
                .collection("c".repeat(len))
                .validate()
        };
        assert!(collection_of(191).is_ok());
        assert!(collection_of(192).is_err());
        for good in ["jobs", "Jobs-2", "a_b"] {
            assert!(MongoOptions::default().database(good).validate().is_ok());
        }
        for good in ["mq.messages", "_x", "Q-1"] {
            assert!(MongoOptions::default().collection(good).validate().is_ok());
        }
    }
}
