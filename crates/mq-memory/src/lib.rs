//! In-process mq queues.
//!
//! - [`InMemoryQueue`]: messages in process memory, with the same claim, lease, retry, expiry and
//!   shutdown rules as the durable backends. For tests, development and work that may be lost
//!   when the process exits.
//! - [`ImmediateQueue`]: no storage; publishing runs the consumer's handler on the spot and
//!   reports what it did not acknowledge.
//! - [`MemoryDeadLetterStore`]: dead letters in process memory, listable and replayable like the
//!   durable stores.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use mq_core::{handler_fn, Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName};
//! use mq_memory::{InMemoryOptions, InMemoryQueue};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mq_core::Result<()> {
//! let queue = InMemoryQueue::new(InMemoryOptions::default());
//! let emails = QueueName::new("emails")?;
//! queue.register(&emails).await?;
//! queue.publish(&emails, vec![NewMessage::new("welcome", serde_json::json!({"to": "a@b.c"}))]).await?.into_result()?;
//!
//! let handler = Arc::new(handler_fn(|batch: Batch, _ctx: HandlerContext| async move {
//!     assert_eq!(batch[0].message_type, "welcome");
//! }));
//! let report = queue.consume_batch(&emails, handler, &ConsumerOptions::default()).await?;
//! assert_eq!(report.acked, 1);
//! queue.shutdown().await
//! # }
//! ```

#![doc(test(attr(deny(warnings), allow(dead_code))))]

mod dead_letters;
mod immediate;
mod memory;
mod store;

pub use dead_letters::MemoryDeadLetterStore;
pub use immediate::ImmediateQueue;
pub use memory::{InMemoryOptions, InMemoryQueue};
pub use store::MemoryStore;
