//! Dead letters for mq: keep them, look at them, replay them, purge them.
//!
//! Every mq backend hands messages that failed for good (attempts exhausted, an explicit
//! dead-letter outcome, a Kinesis poison pill) to a [`mq_core::DeadLetterSink`]. The stores of
//! this crate are such sinks that also list, count, replay and purge what they hold:
//!
//! - [`DeadLetterStore`], the trait, with [`DeadLetterEntry`] (the message untouched, its origin
//!   — queue, and shard and sequence number for Kinesis —, the error chain, attempts, first and
//!   last failure time, the consumer that gave up, the replay state) and [`DeadLetterFilter`]
//!   (queue, type, time range, ids, error text, replay state);
//! - implementations in memory ([`MemoryDeadLetterStore`]), in SQL on PostgreSQL, MySQL/MariaDB
//!   and SQLite (`SqlDeadLetterStore`, features `postgres`, `mysql`, `sqlite`) and in MongoDB
//!   (`MongoDeadLetterStore`, feature `mongo`); and a sink that forwards them to a secondary
//!   Kinesis stream (`KinesisDeadLetterSink`, feature `kinesis`);
//! - [`Replayer`]: publishes entries again through any [`mq_core::MessageQueue`], to their own
//!   queue or another, with a dry run and a rate limit, idempotently: a replay killed half-way
//!   and run again publishes every entry exactly once (see [`Replayer`] for why).
//!
//! # Quickstart
//!
//! ```
//! use std::sync::Arc;
//! use mq_core::{CommonOptions, DeadLetterSink, MessageQueue};
//! use mq_dlq::{ReplayOptions, Replayer};
//! use mq_core::{DeadLetterFilter, DeadLetterStore};
//! use mq_memory::MemoryDeadLetterStore;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
//! let store = Arc::new(MemoryDeadLetterStore::new());
//! let sink: Arc<dyn DeadLetterSink> = store.clone();
//! let _options = CommonOptions::default().dead_letters(sink); // give these to any queue
//! # let queue: Arc<dyn MessageQueue> = Arc::new(mq_memory::InMemoryQueue::new(Default::default()));
//! let failed = store.count(&DeadLetterFilter::default()).await?;
//! let report = Replayer::new(store, queue).run(&ReplayOptions::default()).await?;
//! assert_eq!(report.selected, failed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! | feature    | what it adds |
//! |------------|--------------|
//! | `postgres` | `PgDeadLetterStore` |
//! | `mysql`    | `MySqlDeadLetterStore` (MySQL ≥ 8, MariaDB ≥ 10.6) |
//! | `sqlite`   | `SqliteDeadLetterStore` (bundled SQLite) |
//! | `mongo`    | `MongoDeadLetterStore` (MongoDB, or a compatible server) |
//! | `kinesis`  | `KinesisDeadLetterSink`: dead letters forwarded to a secondary stream |
//! | `metrics`  | `DepthReporter`: the dead-letter depth as the `mq_dead_letter_depth` gauge |
//! | `testkit`  | `mq_dlq::testkit`: the store conformance suite |
//!
//! No feature is on by default; the memory store and the replayer are always there.

#![doc(test(attr(deny(warnings), allow(dead_code))))]
// Shared helpers serve a subset of the databases; with fewer features some go unused.
#![cfg_attr(
    not(all(
        feature = "postgres",
        feature = "mysql",
        feature = "sqlite",
        feature = "mongo"
    )),
    allow(dead_code)
)]

#[cfg(feature = "metrics")]
mod depth;
mod error;
#[cfg(feature = "kinesis")]
mod kinesis;
#[cfg(feature = "mongo")]
mod mongo;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
mod replay;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(feature = "metrics")]
pub use depth::DepthReporter;
pub use error::{Error, Result};
#[cfg(feature = "kinesis")]
pub use kinesis::{DEAD_LETTER_MESSAGE_TYPE, KinesisDeadLetterSink, dead_letter_from_message};
#[cfg(feature = "mongo")]
pub use mongo::MongoDeadLetterStore;
#[cfg(feature = "mysql")]
pub use mysql::MySqlDeadLetterStore;
#[cfg(feature = "postgres")]
pub use postgres::PgDeadLetterStore;
pub use replay::{
    REPLAY_ENTRY_KEY, REPLAY_ORIGINAL_ID_KEY, ReplayFailure, ReplayOptions, ReplayReport, Replayer,
};
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub use sql::{DEFAULT_TABLE, SqlDeadLetterStore};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteDeadLetterStore;
