//! SQL backend of the mq message queues, on [`sqlx`]: PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! Messages live in one table (name configurable, created at connect unless
//! [`SqlOptions::create_schema`] is off). Consumers claim batches
//! atomically under a lease: PostgreSQL and MariaDB/MySQL with `FOR UPDATE SKIP LOCKED`, SQLite
//! inside one write transaction. A consumer that crashes stops renewing its lease and its
//! messages are claimed again once the lease expires; completions are fenced by the claim
//! (owner + attempt + unexpired lease), so a consumer whose lease lapsed cannot ack. Ack, retry
//! and fail are written in one statement per batch. The consumer runtime (retries, timeouts,
//! dead letters, shutdown) is [`mq_core::backend::PollingQueue`].
//!
//! Also: `LISTEN/NOTIFY` wake-up on PostgreSQL (polling elsewhere, and as the fallback),
//! retention of finished rows in bounded batches ([`SqlOptions::retention`],
//! `purge_finished`), publishing inside the caller's transaction on PostgreSQL
//! (`PgQueue::publish_in_tx`, the outbox pattern), and completing a message inside the
//! handler's own transaction on every database ([`SqlQueue::complete_in_tx`]: the handler's
//! writes and the acknowledgement commit together, so its effects apply exactly once).
//!
//! [`SqlCheckpointStore`] ([`PgCheckpointStore`], [`MySqlCheckpointStore`],
//! [`SqliteCheckpointStore`]) keeps durable Kinesis checkpoints fenced by lease epochs, for
//! mq-kinesis setups whose lease store (Redis) may lose its data.
//!
//! [`SqlLeaseTable`] ([`PgLeaseTable`], [`MySqlLeaseTable`], [`SqliteLeaseTable`]) is the
//! [`LeaseTable`](mq_core::backend::LeaseTable) mq-kinesis keeps shard leases and instance
//! sessions in, so a fleet can share them through the database it already runs instead of Redis.
//!
//! # Quickstart
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use mq_core::{handler_fn, Batch, CommonOptions, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName};
//! use mq_sql::{SqlOptions, SqliteQueue};
//!
//! let options = SqlOptions::default().table("jobs").common(CommonOptions::default());
//! let queue = SqliteQueue::connect("sqlite://mq.db?mode=rwc", options).await?;
//! let emails = QueueName::new("emails")?;
//! queue.register(&emails).await?;
//! queue.publish(&emails, vec![NewMessage::new("welcome", serde_json::json!({"to": "a@b.c"}))]).await?.into_result()?;
//! let handler = Arc::new(handler_fn(|batch: Batch, _ctx: HandlerContext| async move {
//!     println!("{} messages", batch.len());
//! }));
//! let consumer = queue.consume(&emails, handler, ConsumerOptions::default()).await?;
//! consumer.stop().await;
//! queue.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Schema
//!
//! The migrations in `migrations/<database>/` are SQL templates: the validated table name
//! (`[A-Za-z_][A-Za-z0-9_]{0,62}`) and names derived from it replace placeholders in braces,
//! so they cannot be static `sqlx::migrate!` migrations. Every statement is idempotent
//! (`IF NOT EXISTS`) and runs at each connect; on PostgreSQL under an advisory lock. With
//! [`SqlOptions::create_schema`]`(false)` nothing is created: connecting checks that the table
//! exists and fails with an error naming it otherwise.
//!
//! One code path serves every database: the queue, checkpoint and dead-letter stores and the
//! lease table are written once; what differs (SQL fragments, time encoding, the claim and batch-write steps)
//! lives in one crate-private dialect per database.
//!
//! Every public function returns [`mq_core::Result`]; this crate's [`Error`] is kept as the
//! source of a backend error, so it can be downcast.
//!
//! # Features
//!
//! | feature    | what it adds |
//! |------------|--------------|
//! | `postgres` | [`PgQueue`]: SKIP LOCKED claims, LISTEN/NOTIFY, `publish_in_tx` |
//! | `mysql`    | [`MySqlQueue`]: MySQL ≥ 8.0.1 or MariaDB ≥ 10.6 (checked at connect) |
//! | `sqlite`   | [`SqliteQueue`]: bundled SQLite, the embedded default |
//! | `tls`      | TLS to PostgreSQL and MySQL (rustls on ring, the system's root certificates) |
//!
//! No feature is on by default (the `mq-rs` facade turns `tls` on by default).
//!
//! # TLS
//!
//! With the `tls` feature the URL says how to connect, as `sqlx` reads it:
//! `postgres://app@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem`
//! (also `sslcert`/`sslkey` for a client certificate) and
//! `mysql://app@db.example.com/app?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ssl/db-ca.pem`.
//! `verify-full` / `VERIFY_IDENTITY` check both the CA and the server's name; without
//! `sslrootcert` / `ssl-ca` the system's root certificates are used.

#![doc(test(attr(deny(warnings), allow(dead_code))))]

mod checkpoint;
mod controls;
mod dead_letter;
mod dialect;
mod error;
mod in_tx;
mod lease_table;
mod migrate;
mod options;
mod queue;
mod remembered;
mod retention;
mod rows;
mod stats;
mod store;

pub use checkpoint::{DEFAULT_CHECKPOINT_TABLE, SqlCheckpointStore};
pub use dead_letter::{DEFAULT_DEAD_LETTER_TABLE, SqlDeadLetterStore};
#[cfg(feature = "mysql")]
pub use dialect::mysql::{MySqlCheckpointStore, MySqlDeadLetterStore, MySqlLeaseTable, MySqlQueue};
#[cfg(feature = "postgres")]
pub use dialect::postgres::{PgCheckpointStore, PgDeadLetterStore, PgLeaseTable, PgQueue};
#[cfg(feature = "sqlite")]
pub use dialect::sqlite::{
    SqliteCheckpointStore, SqliteDeadLetterStore, SqliteLeaseTable, SqliteQueue,
};
pub use error::{Error, Result};
pub use lease_table::{DEFAULT_LEASE_TABLE, SqlLeaseTable};
pub use migrate::Migration;
pub use options::SqlOptions;
pub use queue::SqlQueue;
/// The sqlx version this crate is built on, so applications that hand in their own pool need not
/// match versions by hand.
pub use sqlx;
pub use store::SqlStore;
