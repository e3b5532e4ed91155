//! The contract of the mq message queues.
//!
//! mq runs background work across a fleet: publishers put typed JSON messages on named queues,
//! consumers claim them in batches and run a [`Handler`] that says what happened to each message.
//! This crate holds what every backend shares:
//!
//! - [`Message`], [`NewMessage`], [`MessageId`], [`Status`], [`QueueName`] and the opt-in
//!   [`EnvSuffixResolver`] that reproduces the original library's `<name>-<env>` naming;
//! - the [`MessageQueue`] trait (register, publish, consume, consume one batch, shutdown);
//! - [`Handler`], [`HandlerContext`] (with a cancellation token) and per-message [`Outcome`]s;
//! - [`RetryPolicy`], [`IdGenerator`], [`ConsumerOptions`] and [`CommonOptions`];
//! - lifecycle events, [`LifecycleObserver`] and [`LifecycleDispatcher`];
//! - dead letters: the [`DeadLetterSink`] hook and the [`DeadLetterStore`] that keeps, lists,
//!   replays and purges them, with [`DeadLetterEntry`] and [`DeadLetterFilter`];
//! - [`QueueStats`], what a store reports of a queue's depth;
//! - [`backend`]: what a backend author needs ([`backend::QueueStore`] and
//!   [`backend::PollingQueue`], so a backend that can claim atomically with a lease gets the
//!   whole consumer runtime for free; [`backend::HandlerRunner`] for backends with their own
//!   delivery loop; adaptive batch sizing, durable shard checkpoints and the table shard leases can
//!   live in);
//! - with feature `testkit`, the conformance suite every backend runs.
//!
//! # Quickstart
//!
//! Backends live in their own crates; the facade `mq-rs` (`use mq::...`) re-exports them. With
//! the in-memory backend:
//!
//! ```text
//! let queue = mq::InMemoryQueue::new(mq::InMemoryOptions::default());
//! queue.register(&emails).await?;
//! queue.publish(&emails, vec![mq::NewMessage::new("welcome", json!({"to": "a@b.c"}))]).await?.into_result()?;
//! let consumer = queue.consume(&emails, handler, mq::ConsumerOptions::default()).await?;
//! ```
//!
//! # Delivery guarantees
//!
//! At least once. A claim holds a message under a lease that the consumer renews while the
//! handler runs; a consumer that crashes stops renewing, its lease expires and the message is
//! claimed again (its attempt counted). Completions are fenced by the claim, so a consumer whose
//! lease lapsed cannot ack, retry or fail a message another consumer now holds. Messages that run
//! out of attempts go to the dead-letter hook with their error chain.
//!
//! # Features
//!
//! | feature   | what it adds |
//! |-----------|--------------|
//! | `testkit` | `mq_core::testkit`: the backend, checkpoint-store and lease-table conformance suites and test helpers |
//! | `metrics` | [`MetricsObserver`]: lifecycle events as metrics on the `metrics` facade |

#![doc(test(attr(deny(warnings), allow(dead_code))))]

/// The conversions of a validated string newtype (`struct Name(Arc<str>)` with a `new` that
/// checks its input): shown as the plain string, built from a string only through `new`.
macro_rules! validated_string_impls {
    ($name:ident) => {
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::Error;
            fn try_from(value: String) -> $crate::Result<Self> {
                $name::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = $crate::Error;
            fn try_from(value: &str) -> $crate::Result<Self> {
                $name::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<Self> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0.to_string()
            }
        }
    };
}

mod adaptive;
pub mod backend;
mod checkpoint;
mod control;
mod dead_letter;
mod delegate;
mod error;
mod handler;
mod id;
mod lease_table;
mod lifecycle;
mod message;
#[cfg(feature = "metrics")]
mod metrics_observer;
mod options;
mod polling;
mod queue;
#[cfg(feature = "metrics")]
mod queue_gauges;
mod queue_name;
mod redact;
mod registered;
mod retry;
mod runner;
mod stats;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use async_trait::async_trait;
pub use control::{CancelOutcome, CancelTarget};
pub use dead_letter::{
    DeadLetter, DeadLetterEntry, DeadLetterFields, DeadLetterFilter, DeadLetterOrigin,
    DeadLetterSink, DeadLetterStore, EntryId, ErrorChain, ReplayMark, ReplayState,
};
pub use error::{BoxError, Error, Result};
pub use handler::{
    Batch, Handler, HandlerContext, HandlerFn, IntoOutcomes, Outcome, Outcomes, handler_fn,
};
pub use id::{IdGenerator, UlidGenerator};
pub use lifecycle::{
    ConsumerInfo, ConsumerKind, DisconnectReason, DispatchMode, LifecycleDispatcher,
    LifecycleDispatcherBuilder, LifecycleEvent, LifecycleObserver, MessageInfo, ObserverError,
    ObserverFailure,
};
pub use message::{
    MAX_MESSAGE_ID_LEN, MAX_MESSAGE_TYPE_LEN, MAX_PARTITION_KEY_CHARS, MAX_PAYLOAD_DEPTH,
    MAX_UNIQUE_KEY_CHARS, Message, MessageId, Metadata, NewMessage, Status, later_by, latest_time,
};
#[cfg(feature = "metrics")]
pub use metrics_observer::MetricsObserver;
pub use options::{CommonOptions, ConsumerOptions};
pub use queue::{
    BatchReport, ConsumerHandle, MessageQueue, MessageQueueExt, PublishFailure, PublishReport,
};
#[cfg(feature = "metrics")]
pub use queue_gauges::{QueueGauges, record_queue_stats};
pub use queue_name::{
    EnvSuffixResolver, IdentityResolver, MAX_QUEUE_NAME_LEN, QueueName, QueueNameResolver,
};
pub use retry::RetryPolicy;
pub use stats::QueueStats;
pub use tokio_util::sync::CancellationToken;
