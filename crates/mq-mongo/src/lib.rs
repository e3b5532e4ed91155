//! MongoDB backend for mq, safe with many consumers on many hosts.
//!
//! [`MongoQueue`] keeps every queue's messages in one collection (one document per message,
//! keyed `"<queue>/<message id>"`; queue names cannot contain `/`) and runs the shared mq
//! consumer runtime over [`MongoStore`]:
//!
//! - **atomic, lease-based claiming**: a message is taken only by an update whose filter still
//!   sees it ready, and held under a lease (owner + expiry) that the consumer renews while the
//!   handler runs; an expired lease (a crashed consumer) makes it claimable again, and ack,
//!   retry and fail are accepted only from the current holder;
//! - **unordered batch publish** that reports exactly which messages were refused (duplicate
//!   ids) and stores the rest;
//! - **indexes** created when the queue connects (claiming and expiry), plus an optional TTL
//!   index that deletes finished messages after [`MongoOptions::retention`]; with
//!   [`MongoOptions::create_schema`]`(false)` nothing is created and missing indexes are an
//!   error, for read-only tools and least-privilege users;
//! - **queue controls**: priorities (higher first, publication order within a priority, still
//!   read from the claim index), unique keys (one lock document per key in
//!   [`MongoOptions::control_collection`]; a second message with a key that is held is refused
//!   with the holder's id), cancel by id or unique key, pause and resume per queue for every
//!   process at once;
//! - **the server's clock** for leases, delivery times and expiry, whatever the clocks of the
//!   hosts say;
//! - **change-stream wake-up** of idle consumers on replica sets, polling otherwise;
//! - **queue statistics** ([`MongoQueue::queue_stats`]): messages per status, the oldest ready
//!   message, expired leases, in one read-only aggregation.
//!
//! Three stores live beside the queue, built the same way (`connect(uri, options)` or
//! `from_client(client, options)`) from the same [`MongoOptions`]:
//!
//! - [`MongoDeadLetterStore`] keeps the messages that failed for good; hand it to any queue
//!   through [`CommonOptions::dead_letters`](mq_core::CommonOptions::dead_letters), replay its
//!   entries with the `mq-dlq` crate;
//! - [`MongoCheckpointStore`] keeps durable Kinesis checkpoints fenced by lease epochs, for
//!   mq-kinesis setups whose lease store (Redis) may lose its data;
//! - [`MongoLeaseTable`] keeps versioned records written by compare-and-set, with the server's
//!   clock: the [`LeaseTable`](mq_core::backend::LeaseTable) that lets mq-kinesis keep its
//!   shard leases in MongoDB instead of Redis.
//!
//! Every fallible function returns [`mq_core::Result`]. The driver is re-exported as
//! [`mongodb`], so `mq_mongo::mongodb::Client` is the version this crate was built with.
//!
//! # Quickstart
//!
//! ```no_run
//! use std::sync::Arc;
//! use mq_core::{handler_fn, Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName};
//! use mq_mongo::{MongoOptions, MongoQueue};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = MongoQueue::connect(
//!     "mongodb://127.0.0.1:27017/?directConnection=true",
//!     MongoOptions::default().database("jobs"),
//! )
//! .await?;
//! let emails = QueueName::new("emails")?;
//! queue.register(&emails).await?;
//! queue.publish(&emails, vec![NewMessage::new("welcome", serde_json::json!({"to": "a@b.c"}))]).await?.into_result()?;
//!
//! let handler = Arc::new(handler_fn(|batch: Batch, _ctx: HandlerContext| async move {
//!     assert_eq!(batch[0].message_type, "welcome");
//! }));
//! let report = queue.consume_batch(&emails, handler, &ConsumerOptions::default()).await?;
//! assert_eq!(report.acked, 1);
//! queue.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! None: the crate uses the `mongodb` driver with its default features (rustls TLS, SRV
//! lookups).

#![doc(test(attr(deny(warnings), allow(dead_code))))]

mod checkpoint;
mod clock;
mod connect;
mod dead_letters;
mod document;
mod error;
mod lease_table;
mod options;
mod queue;
mod stats;
mod store;
mod wake;

pub use checkpoint::MongoCheckpointStore;
pub use dead_letters::MongoDeadLetterStore;
pub use error::Error;
pub use lease_table::MongoLeaseTable;
pub use mongodb;
pub use options::{ClaimStrategy, MongoOptions};
pub use queue::MongoQueue;
pub use store::MongoStore;
