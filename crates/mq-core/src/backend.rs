//! What a backend author needs, apart from what applications use.
//!
//! A backend that can claim messages atomically under a lease implements [`QueueStore`] and gets
//! the whole [`MessageQueue`](crate::MessageQueue) behaviour from [`PollingQueue`]. A backend
//! with its own delivery loop (Kinesis, the immediate queue) runs its handler through a
//! [`HandlerRunner`], so every backend treats handlers, outcomes and events alike. The adaptive
//! batch sizing, the durable shard checkpoints and the lease table of the Kinesis backend live here
//! too, because other backends implement [`CheckpointStore`] and [`LeaseTable`].

pub use crate::adaptive::{
    AdaptiveSnapshot, AdaptiveStrategy, AimdOptions, AimdStrategy, BatchResult, ShardKey,
};
pub use crate::checkpoint::{
    CheckpointOutcome, CheckpointStore, MAX_SEQUENCE_NUMBER_DIGITS, MemoryCheckpointStore,
    StoredCheckpoint, compare_sequence_numbers, normalize_sequence_number,
};
pub use crate::lease_table::{
    LeaseTable, MAX_LEASE_TABLE_KEY_BYTES, MemoryLeaseTable, TableRecord,
};
pub use crate::polling::{PollingQueue, prepare_messages};
pub use crate::queue::ConsumerStopper;
pub use crate::redact::redact_url;
pub use crate::registered::RegisteredQueues;
pub use crate::runner::{HandlerRun, HandlerRunner, Settlement};
pub use crate::store::{
    Claim, Claimed, Completion, CompletionAction, Holder, QueueStore, Undecodable, duplicate_id,
};
