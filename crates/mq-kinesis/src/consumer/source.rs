//! Where a shard consumer's records come from: a [`RecordSource`], polling `GetRecords`
//! ([`PollingSource`]) or pushed over `SubscribeToShard` ([`FanOutSource`]).
//!
//! The consumer opens the source after the checkpoint and reads batches from it; everything
//! after the read (outcomes, retries, dead letters, poison pills, checkpoints, the end of a
//! closed shard) is the consumer's, the same for both.

mod fan_out;
mod polling;

use std::fmt;

use async_trait::async_trait;
use aws_sdk_kinesis::types::Record;
use tokio_util::sync::CancellationToken;

use super::ShardEnv;
use crate::fanout::FetchMode;
use crate::position::StartPosition;
use fan_out::FanOutSource;
use polling::PollingSource;

/// What one read of a shard returned.
#[derive(Debug, Default)]
pub(super) struct Fetched {
    /// The records, in shard order.
    pub(super) records: Vec<Record>,
    /// How far behind the tip of the shard the reader is.
    pub(super) millis_behind_latest: Option<u64>,
    /// No record follows these: the shard is closed and read to its end.
    pub(super) ended: bool,
    /// A sign of life without records (an enhanced fan-out heartbeat): read again at once.
    pub(super) heartbeat: bool,
}

/// Why a source could not be opened or read.
#[derive(Debug)]
pub(super) enum SourceError {
    /// The consumer was stopped while waiting.
    Stopped,
    /// The position is no longer valid (an expired iterator): open again at the checkpoint,
    /// without counting an error.
    Reopen,
    /// A failed call; `reopen` when the source must be opened again before the next read.
    Failed {
        code: Option<String>,
        text: String,
        reopen: bool,
    },
}

/// Whether an opened source has anything to read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Opened {
    /// Read with [`RecordSource::next`].
    Reading,
    /// The shard is closed and was read to its end.
    Ended,
}

/// One shard's records, in order, from the position it was opened at.
#[async_trait]
pub(super) trait RecordSource: Send + Sync + fmt::Debug {
    /// The call a read waits on, for the stall check ("GetRecords", "SubscribeToShard").
    fn operation(&self) -> &'static str;

    /// The call an open waits on, for the stall check.
    fn open_operation(&self) -> &'static str {
        "GetShardIterator"
    }

    /// Positions the source right after `checkpoint`, or at `initial` when the shard has none.
    /// A source already positioned there may stay as it is.
    async fn open(
        &mut self,
        checkpoint: Option<&str>,
        initial: &StartPosition,
    ) -> Result<Opened, SourceError>;

    /// The next batch of at most `limit` records. Cancel safe.
    async fn next(&mut self, limit: usize) -> Result<Fetched, SourceError>;

    /// Starts the next read of `limit` records now, so it overlaps the handling of the batch
    /// just read. Sources that push their records need not do anything.
    fn read_ahead(&mut self, _limit: usize) {}
}

/// The source the shard options ask for.
pub(super) fn for_mode(
    env: &ShardEnv,
    shard: &str,
    stop: &CancellationToken,
) -> Box<dyn RecordSource> {
    match env.shard_options.get_fetch_mode() {
        FetchMode::EnhancedFanOut { consumer_name } => Box::new(FanOutSource::new(
            env,
            shard,
            consumer_name.clone(),
            stop.clone(),
        )),
        _ => polling(env, shard),
    }
}

/// A polling source.
pub(super) fn polling(env: &ShardEnv, shard: &str) -> Box<dyn RecordSource> {
    Box::new(PollingSource::new(env, shard))
}
