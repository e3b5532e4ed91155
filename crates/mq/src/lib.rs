//! mq: message queues for background work across a fleet.
//!
//! Publish typed JSON messages to named queues; consumers claim them in batches under a lease and
//! run a [`Handler`] that says what happened to each message (ack, retry, fail, dead-letter).
//! Every backend implements [`MessageQueue`] and passes the same conformance suite, so code
//! written against the trait runs on any of them.
//!
//! This crate only re-exports: what applications use at the root, each backend as a module with
//! its main types also at the root, each behind its Cargo feature; what backend authors need is
//! in [`backend`].
//!
//! # Quickstart
//!
//! ```
//! use mq::prelude::*;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Welcome {
//!     to: String,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mq::Result<()> {
//! let queue = InMemoryQueue::default();
//! let emails = QueueName::new("emails")?;
//! queue.register(&emails).await?;
//! queue.publish_json(&emails, "welcome", &[Welcome { to: "a@b.c".into() }]).await?.into_result()?;
//!
//! let handler = handler_fn(|batch: Batch, _ctx: HandlerContext| async move {
//!     for m in batch.iter() {
//!         let welcome: Welcome = m.payload_as()?;
//!         println!("sending {} to {}", m.message_type, welcome.to);
//!     }
//!     Ok::<(), mq::Error>(())
//! });
//! let report = queue.consume_batch(&emails, Arc::new(handler), &ConsumerOptions::default()).await?;
//! assert_eq!(report.acked, 1);
//! queue.shutdown().await
//! # }
//! ```
//!
//! # Features
//!
//! | feature  | default | what it adds |
//! |----------|---------|--------------|
//! | `memory` | yes     | [`memory`]: [`InMemoryQueue`], [`ImmediateQueue`], [`MemoryDeadLetterStore`] |
//! | `sql-postgres` |   | [`sql`]: [`PgQueue`] (SKIP LOCKED, LISTEN/NOTIFY, publish inside your transaction) |
//! | `sql-mysql` |      | [`sql`]: [`MySqlQueue`] (MySQL ≥ 8.0.1, MariaDB ≥ 10.6) |
//! | `sql-sqlite` |     | [`sql`]: [`SqliteQueue`], the embedded default (bundled SQLite, a local file) |
//! | `mongo`  |         | [`mongo`]: [`MongoQueue`] (atomic lease-based claims, change-stream wake-up) |
//! | `kinesis` |        | [`kinesis`]: [`KinesisQueue`], producer, shard consumer, lease stores in Redis, a SQL or MongoDB lease table, a file or memory |
//! | `dlq`    |         | [`dlq`]: the idempotent, rate-limited [`Replayer`] of dead letters |
//! | `metrics`|         | `MetricsObserver`: lifecycle events as metrics on the `metrics` facade; `QueueGauges`: queue depth and oldest waiting age |
//! | `tls`    | yes     | TLS (rustls on ring) for PostgreSQL and MySQL (`sslmode=verify-full&sslrootcert=...`, `ssl-mode=VERIFY_IDENTITY&ssl-ca=...` in the URL) and Redis (`rediss://`, `?ca_file=...`); MongoDB and Kinesis always have TLS |
//! | `full`   |         | every backend (for CI and docs.rs) |
//!
//! Each backend module re-exports its driver (`mq::sql::sqlx`, `mq::mongo::mongodb`,
//! `mq::kinesis::aws_sdk_kinesis`, `mq::kinesis::fred`), so the pool or client you hand in is
//! always of the version mq was built with.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings), allow(dead_code))))]

pub use mq_core::{
    Batch, BatchReport, BoxError, CancellationToken, CommonOptions, ConsumerHandle, ConsumerInfo,
    ConsumerKind, ConsumerOptions, DeadLetter, DeadLetterEntry, DeadLetterFilter, DeadLetterOrigin,
    DeadLetterSink, DeadLetterStore, DisconnectReason, DispatchMode, EntryId, EnvSuffixResolver,
    Error, ErrorChain, Handler, HandlerContext, HandlerFn, IdGenerator, IdentityResolver,
    IntoOutcomes, LifecycleDispatcher, LifecycleDispatcherBuilder, LifecycleEvent,
    LifecycleObserver, Message, MessageId, MessageInfo, MessageQueue, MessageQueueExt, Metadata,
    NewMessage, ObserverError, ObserverFailure, Outcome, Outcomes, PublishFailure, PublishReport,
    QueueName, QueueNameResolver, QueueStats, ReplayMark, ReplayState, Result, RetryPolicy, Status,
    UlidGenerator, async_trait, handler_fn,
};

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use mq_core::MetricsObserver;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use mq_core::{QueueGauges, record_queue_stats};

/// What a backend author needs: the polling runtime over a [`QueueStore`](backend::QueueStore),
/// the handler runner, adaptive batch sizing and durable shard checkpoints.
pub mod backend {
    pub use mq_core::backend::*;
}

/// Everything a queue consumer or publisher names: `use mq::prelude::*;`.
///
/// The queue traits (so their methods are in scope), the types every consumer writes down
/// (names, messages, handlers, outcomes, options, errors), `Arc`, and each enabled backend's
/// queue type.
///
/// # Examples
///
/// ```
/// use mq::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> mq::Result<()> {
/// let queue = InMemoryQueue::default();
/// let jobs = QueueName::new("jobs")?;
/// queue.register(&jobs).await?;
/// let id = queue.publish_one(&jobs, NewMessage::new("ping", serde_json::Value::Null)).await?;
/// let handler = Arc::new(handler_fn(|batch: Batch, _ctx: HandlerContext| async move {
///     Outcomes::ack_all().set(batch[0].id.clone(), Outcome::Ack)
/// }));
/// let consumer = queue.consume(&jobs, handler, ConsumerOptions::default()).await?;
/// consumer.stop().await;
/// # let _ = id;
/// queue.shutdown().await
/// # }
/// ```
pub mod prelude {
    pub use std::sync::Arc;

    pub use mq_core::{
        Batch, ConsumerHandle, ConsumerOptions, Error, Handler, HandlerContext, IntoOutcomes,
        Message, MessageId, MessageQueue, MessageQueueExt, NewMessage, Outcome, Outcomes,
        PublishReport, QueueName, Result, RetryPolicy, handler_fn,
    };

    #[cfg(feature = "memory")]
    pub use mq_memory::{ImmediateQueue, InMemoryQueue};

    #[cfg(feature = "sql-mysql")]
    pub use mq_sql::MySqlQueue;
    #[cfg(feature = "sql-postgres")]
    pub use mq_sql::PgQueue;
    #[cfg(feature = "sql-sqlite")]
    pub use mq_sql::SqliteQueue;

    #[cfg(feature = "mongo")]
    pub use mq_mongo::MongoQueue;

    #[cfg(feature = "kinesis")]
    pub use mq_kinesis::KinesisQueue;
}

/// In-process queues (crate `mq-memory`).
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory {
    pub use mq_memory::*;
}

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use mq_memory::{ImmediateQueue, InMemoryOptions, InMemoryQueue, MemoryDeadLetterStore};

/// SQL queues on PostgreSQL, MySQL/MariaDB and SQLite (crate `mq-sql`).
#[cfg(any(
    feature = "sql-postgres",
    feature = "sql-mysql",
    feature = "sql-sqlite"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(
        feature = "sql-postgres",
        feature = "sql-mysql",
        feature = "sql-sqlite"
    )))
)]
pub mod sql {
    pub use mq_sql::*;
}

#[cfg(any(
    feature = "sql-postgres",
    feature = "sql-mysql",
    feature = "sql-sqlite"
))]
pub use mq_sql::SqlOptions;

#[cfg(feature = "sql-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "sql-postgres")))]
pub use mq_sql::PgQueue;

#[cfg(feature = "sql-mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "sql-mysql")))]
pub use mq_sql::MySqlQueue;

#[cfg(feature = "sql-sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sql-sqlite")))]
pub use mq_sql::SqliteQueue;

/// AWS Kinesis: producer, shard consumer, fenced shard leases (crate `mq-kinesis`).
#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
pub mod kinesis {
    pub use mq_kinesis::*;
}

#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
pub use mq_kinesis::{KinesisOptions, KinesisQueue, RedisLeaseStore, TableLeaseStore};

/// MongoDB queues (crate `mq-mongo`).
#[cfg(feature = "mongo")]
#[cfg_attr(docsrs, doc(cfg(feature = "mongo")))]
pub mod mongo {
    pub use mq_mongo::*;
}

#[cfg(feature = "mongo")]
#[cfg_attr(docsrs, doc(cfg(feature = "mongo")))]
pub use mq_mongo::{MongoOptions, MongoQueue};

/// Dead-letter replay (crate `mq-dlq`).
#[cfg(feature = "dlq")]
#[cfg_attr(docsrs, doc(cfg(feature = "dlq")))]
pub mod dlq {
    pub use mq_dlq::*;
}

#[cfg(feature = "dlq")]
#[cfg_attr(docsrs, doc(cfg(feature = "dlq")))]
pub use mq_dlq::Replayer;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
