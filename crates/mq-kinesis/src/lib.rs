//! The AWS Kinesis backend of mq.
//!
//! - [`KinesisProducer`]: PutRecords in chunks of at most 500 records / 5 MiB, records checked
//!   before sending (1 MiB, 256-character partition keys), failed entries retried with backoff and
//!   a report naming exactly which messages were not published; a configurable
//!   [`PartitionKeyStrategy`].
//! - [`LeaseStore`] with three implementations: [`RedisLeaseStore`] (Lua scripts, server time,
//!   Redis Cluster safe), [`FileLeaseStore`] and [`InMemoryLeaseStore`]. Leases are fenced by an
//!   epoch; checkpoints only move forward. [`DurableLeaseStore`] pairs any of them with a durable
//!   [`mq_core::backend::CheckpointStore`] (SQL or MongoDB) so checkpoints and the fence survive a Redis
//!   that loses its data.
//! - Fleet coordination: every instance computes the same [`balanced_assignment`] from the live
//!   members, rebalances within about a second of a join or a departure, hands shards off
//!   gracefully, and reads children only after their parents ([`eligible_shards`]).
//! - [`KinesisQueue`]: the [`mq_core::MessageQueue`] over all of it. Each leased shard is read by
//!   a shard consumer, an explicit state machine (acquiring, initialising the iterator, fetching,
//!   processing, checkpointing, backoff, releasing, stopped) with lease renewal, throttling
//!   backoff, iterator re-creation, poison-pill detection counted in the lease store, and handler
//!   cancellation on timeout; see [`KinesisQueue`] for the guarantees. Shards are polled with
//!   `GetRecords` by default, or pushed over `SubscribeToShard` with enhanced fan-out
//!   ([`ShardOptions::enhanced_fan_out`], see [`fanout`]).
//! - Inspection: [`stream_status`] (or [`KinesisQueue::stream_status`]) reports a stream's shards
//!   with their lease (owner, epoch, expiry), checkpoint, failure counts and assignment, read
//!   through the [`LeaseStore`], for operators and dashboards.
//!
//! The drivers are re-exported ([`aws_sdk_kinesis`], [`fred`]), so a client you build and hand
//! in is always of the version this crate uses.
//!
//! # Quickstart
//!
//! ```no_run
//! use std::sync::Arc;
//! use mq_core::{handler_fn, Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName};
//! use mq_kinesis::{KinesisOptions, KinesisQueue, RedisLeaseStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let leases = RedisLeaseStore::connect("redis://127.0.0.1:6379", "mq").await?;
//! let queue = KinesisQueue::connect(KinesisOptions::new(Arc::new(leases)).region("eu-west-1")).await?;
//! let orders = QueueName::new("orders")?;
//! queue.register(&orders).await?;
//! queue.publish(&orders, vec![NewMessage::new("created", serde_json::json!({"id": 1}))]).await?.into_result()?;
//! let handler = Arc::new(handler_fn(|batch: Batch, _ctx: HandlerContext| async move {
//!     println!("{} records", batch.len());
//! }));
//! let consumer = queue.consume(&orders, handler, ConsumerOptions::default()).await?;
//! consumer.stop().await;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature   | what it adds |
//! |-----------|--------------|
//! | `tls`     | `rediss://` URLs for [`RedisLeaseStore::connect`] (rustls on ring; system roots or `?ca_file=`) |
//! | `testkit` | `mq_kinesis::testkit`: the lease-store conformance suite |

#![doc(test(attr(deny(warnings), allow(dead_code))))]

mod assignment;
mod consumer;
mod coordinator;
mod dead_letter_sink;
mod error;
pub mod fanout;
mod lease;
mod lease_durable;
mod lease_file;
mod lease_memory;
mod lease_redis;
mod lease_table;
mod position;
mod producer;
mod queue;
mod record;
mod redis_connect;
mod shards;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use assignment::{Assignment, ShardLineage, balanced_assignment, eligible_shards};
pub use consumer::ShardOptions;
pub use dead_letter_sink::{
    DEAD_LETTER_MESSAGE_TYPE, KinesisDeadLetterSink, dead_letter_from_message,
};
pub use error::{Error, Result};
pub use fanout::{FanOutBatch, FetchMode, Subscription, register_stream_consumer};
pub use lease::{CheckpointOutcome, Lease, LeaseState, LeaseStore, compare_sequence_numbers};
pub use lease_durable::DurableLeaseStore;
pub use lease_file::FileLeaseStore;
pub use lease_memory::InMemoryLeaseStore;
pub use lease_redis::RedisLeaseStore;
pub use lease_table::TableLeaseStore;
pub use position::StartPosition;
pub use producer::{
    KinesisProducer, MAX_PARTITION_KEY_CHARS, MAX_RECORD_BYTES, MAX_RECORDS_PER_REQUEST,
    MAX_REQUEST_BYTES, PartitionKeyStrategy, ProducerOptions, PutFailure, PutReport, PutSuccess,
};
pub use queue::{KinesisOptions, KinesisQueue};
pub use record::{UNDECODABLE_MESSAGE_TYPE, decode_record};
pub use shards::{ShardStatus, StreamStatus, stream_status};

/// The AWS SDK for Kinesis this crate is built on, for the [`Client`](aws_sdk_kinesis::Client)
/// handed to [`KinesisOptions::client`] and [`stream_status`].
pub use aws_sdk_kinesis;
/// The Redis client of [`RedisLeaseStore`].
pub use fred;
