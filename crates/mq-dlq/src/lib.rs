//! Replay dead letters of mq, and watch how many wait.
//!
//! Every mq backend hands the messages that failed for good (attempts exhausted, an explicit
//! dead-letter outcome, a Kinesis poison pill) to a [`mq_core::DeadLetterStore`]: the memory
//! store of `mq-memory`, the SQL stores of `mq-sql`, the MongoDB store of `mq-mongo`. This crate
//! works on any of them:
//!
//! - [`Replayer`] publishes entries again through any [`mq_core::MessageQueue`], to their own
//!   queue or another, chosen by a [`mq_core::DeadLetterFilter`], with a dry run, a rate limit
//!   and progress reports; a replay killed half-way and run again publishes every entry exactly
//!   once (see [`Replayer`] for why);
//! - [`DepthReporter`] (feature `metrics`) publishes how many dead letters wait for a replay as a
//!   gauge;
//! - `mq_dlq::testkit` (feature `testkit`) checks that a store supports replays, with
//!   [`replay_conformance_tests!`].
//!
//! # Quickstart
//!
//! ```
//! use std::sync::Arc;
//! use mq_core::{CommonOptions, DeadLetterFilter, DeadLetterSink, DeadLetterStore, MessageQueue};
//! use mq_dlq::{ReplayOptions, Replayer};
//! use mq_memory::{InMemoryOptions, InMemoryQueue, MemoryDeadLetterStore};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
//! let store = Arc::new(MemoryDeadLetterStore::new());
//! let sink: Arc<dyn DeadLetterSink> = store.clone();
//! let queue: Arc<dyn MessageQueue> = Arc::new(InMemoryQueue::new(
//!     InMemoryOptions::default().common(CommonOptions::default().dead_letters(sink)),
//! ));
//! // ... later, once the cause of the failures is fixed:
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
//! | feature   | what it adds |
//! |-----------|--------------|
//! | `metrics` | [`DepthReporter`]: the dead-letter depth as the `mq_dead_letter_depth` gauge |
//! | `testkit` | `mq_dlq::testkit`: the replay conformance suite for dead-letter stores |
//!
//! No feature is on by default; the replayer is always there. Every fallible function returns
//! [`mq_core::Result`].

#![doc(test(attr(deny(warnings), allow(dead_code))))]

#[cfg(feature = "metrics")]
mod depth;
mod replay;
#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(feature = "metrics")]
pub use depth::DepthReporter;
pub use replay::{
    REPLAY_ENTRY_KEY, REPLAY_ORIGINAL_ID_KEY, ReplayFailure, ReplayOptions, ReplayReport, Replayer,
};
