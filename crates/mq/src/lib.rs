//! mq: message queues for background work across a fleet.
//!
//! Publish typed JSON messages to named queues; consumers claim them in batches under a lease and
//! run a [`Handler`] that says what happened to each message (ack, retry, fail, dead-letter).
//! Every backend implements [`MessageQueue`] and passes the same conformance suite, so code
//! written against the trait runs on any of them.
//!
//! This crate only re-exports: the contract from `mq-core` at the root, each backend as a module
//! with its main types also at the root, each behind its Cargo feature.
//!
//! # Quickstart
//!
//! ```
//! use std::sync::Arc;
//! use mq::{handler_fn, Batch, ConsumerOptions, HandlerContext, InMemoryQueue, MessageQueue, NewMessage, QueueName};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mq::Result<()> {
//! let queue = InMemoryQueue::default();
//! let emails = QueueName::new("emails")?;
//! queue.register(&emails).await?;
//! queue.publish(&emails, vec![NewMessage::new("welcome", serde_json::json!({"to": "a@b.c"}))]).await?;
//!
//! let handler = Arc::new(handler_fn(|batch: Batch, _ctx: HandlerContext| async move {
//!     for m in batch.iter() {
//!         println!("sending {} to {}", m.message_type, m.payload["to"]);
//!     }
//!     Ok::<(), std::io::Error>(())
//! }));
//! let report = queue.consume_batch(&emails, handler, &ConsumerOptions::default()).await?;
//! assert_eq!(report.acked, 1);
//! queue.shutdown().await
//! # }
//! ```
//!
//! # Features
//!
//! | feature  | default | what it adds |
//! |----------|---------|--------------|
//! | `memory` | yes     | [`memory`]: [`InMemoryQueue`] and [`ImmediateQueue`] |
//! | `sql-postgres` |   | [`sql`]: [`PgQueue`] (SKIP LOCKED, LISTEN/NOTIFY, publish inside your transaction) |
//! | `sql-mysql` |      | [`sql`]: [`MySqlQueue`] (MySQL ≥ 8.0.1, MariaDB ≥ 10.6) |
//! | `sql-sqlite` |     | [`sql`]: [`SqliteQueue`], the embedded default (bundled SQLite, a local file) |
//! | `mongo`  |         | [`mongo`]: [`MongoQueue`] (atomic lease-based claims, change-stream wake-up) |
//! | `kinesis` |        | [`kinesis`]: [`KinesisQueue`], producer, shard consumer, Redis/file/memory lease stores |
//! | `dlq`    |         | [`dlq`]: dead-letter stores (memory; SQL and MongoDB with their backend features) and the idempotent, rate-limited [`Replayer`] |
//! | `metrics`|         | `MetricsObserver`: lifecycle events as metrics on the `metrics` facade |
//! | `full`   |         | every backend (for CI and docs.rs) |

#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings), allow(dead_code))))]

pub use mq_core::*;

/// In-process queues (crate `mq-memory`).
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory {
    pub use mq_memory::*;
}

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use mq_memory::{ImmediateQueue, InMemoryOptions, InMemoryQueue};

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
pub use mq_sql::{SqlOptions, SqlQueue};

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
pub use mq_kinesis::{KinesisOptions, KinesisQueue, RedisLeaseStore};

/// MongoDB queues (crate `mq-mongo`).
#[cfg(feature = "mongo")]
#[cfg_attr(docsrs, doc(cfg(feature = "mongo")))]
pub mod mongo {
    pub use mq_mongo::*;
}

#[cfg(feature = "mongo")]
#[cfg_attr(docsrs, doc(cfg(feature = "mongo")))]
pub use mq_mongo::{MongoOptions, MongoQueue};

/// Dead-letter stores and replay (crate `mq-dlq`).
#[cfg(feature = "dlq")]
#[cfg_attr(docsrs, doc(cfg(feature = "dlq")))]
pub mod dlq {
    pub use mq_dlq::*;
}

#[cfg(feature = "dlq")]
#[cfg_attr(docsrs, doc(cfg(feature = "dlq")))]
pub use mq_dlq::{DeadLetterFilter, DeadLetterStore, Replayer};
