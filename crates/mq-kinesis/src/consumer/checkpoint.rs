//! Moving the checkpoint after a handled batch: the `Checkpointing` state.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use mq_core::LifecycleEvent;

use super::deadline::within;
use super::{ShardConsumer, ShardExit, State};
use crate::lease::{CheckpointOutcome, Lease};
use crate::position::Checkpoint;

impl ShardConsumer {
    /// Checkpoints `to` (see [`save`](Self::save)) and reads on, or opens the source again at the
    /// new checkpoint when `reopen`.
    pub(super) async fn checkpoint(&mut self, to: Checkpoint, reopen: bool, records: u64) -> State {
        if let Err(next) = self.save(&to, records).await {
            return next;
        }
        self.batches += 1;
        if reopen {
            State::Opening
        } else {
            State::Fetching
        }
    }

    /// Saves `to` as the shard's checkpoint (retried with backoff, each call within the store's
    /// deadline; in the long form when inside an aggregated record or when the shard's checkpoint
    /// is in the long form already, see [`Checkpoint`]) and clears the shard's failure counts.
    /// Err with the next state: the fence refused it (the lease was lost), or it kept failing
    /// (the lease is released; the handled records are delivered again by whoever reads next,
    /// and their batch start does not count towards a poison pill).
    pub(super) async fn save(&mut self, to: &Checkpoint, records: u64) -> Result<(), State> {
        let Some(lease) = self.lease.clone() else {
            return Err(State::Stopped(ShardExit::Stopped));
        };
        let long = self.position.as_deref().is_some_and(Checkpoint::is_long);
        let Some(sequence) = to.encode(long) else {
            // a sequence number longer than any Kinesis writes: the checkpoint stays where it
            // is, and the records are delivered again after a restart
            tracing::warn!(shard = %self.shard, sequence = %to.sequence, "mq-kinesis: cannot checkpoint inside this aggregated record");
            return Ok(());
        };
        // not written again when saved already (the last message of a batch handled one at a
        // time): only the failure counts are cleared
        if self.position.as_deref() != Some(sequence.as_str()) {
            self.write(&lease, &sequence).await?;
        }
        self.position = Some(sequence.clone());
        self.env.excused.forget(&self.shard);
        let cleared = within(
            "clear failures",
            self.renewal.limit(),
            None,
            self.env.store.clear_failures(self.stream(), &self.shard),
        )
        .await;
        if let Err(e) = cleared {
            tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: cannot clear failure counts");
        }
        self.emit(|| LifecycleEvent::Checkpoint {
            consumer: self.info.clone(),
            checkpoint: sequence.clone(),
            records_since_last: records,
        });
        Ok(())
    }

    /// Writes `sequence` under `lease`, retried with backoff.
    async fn write(&mut self, lease: &Lease, sequence: &str) -> Result<(), State> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(5)
            .build();
        loop {
            let saved = within(
                "checkpoint",
                self.renewal.limit(),
                Some(&self.abort),
                self.env.store.checkpoint(lease, sequence),
            )
            .await;
            match saved {
                Ok(CheckpointOutcome::Fenced) => {
                    return Err(State::LeaseLost("checkpoint refused by the fence".into()));
                }
                Ok(_) => return Ok(()),
                Err(e) => match delays.next().filter(|_| !self.abort.is_cancelled()) {
                    Some(d) => {
                        tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: checkpoint failed, retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = self.abort.cancelled() => {}
                        }
                    }
                    None => {
                        // the records were handled: a store that cannot save the checkpoint is
                        // not their fault
                        self.excuse_start().await;
                        return Err(State::Releasing(ShardExit::Failed(format!(
                            "checkpoint failed: {e}"
                        ))));
                    }
                },
            }
        }
    }
}
