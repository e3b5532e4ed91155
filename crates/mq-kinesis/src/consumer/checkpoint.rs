//! Moving the checkpoint after a handled batch: the `Checkpointing` state.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use mq_core::LifecycleEvent;

use super::{ShardConsumer, ShardExit, State};
use crate::lease::CheckpointOutcome;
use crate::position::Checkpoint;

impl ShardConsumer {
    /// Checkpoints `to` (retried with backoff; in the long form when inside an aggregated record
    /// or when the shard's checkpoint is in the long form already, see [`Checkpoint`]), clears the shard's failure counts and
    /// reads on, or opens the source again at the new checkpoint when `reopen`. A checkpoint the
    /// fence refuses means the lease was lost; one that keeps failing releases the lease (the
    /// handled records are delivered again by whoever reads next).
    pub(super) async fn checkpoint(&mut self, to: Checkpoint, reopen: bool, records: u64) -> State {
        let Some(lease) = self.lease.clone() else {
            return State::Stopped(ShardExit::Stopped);
        };
        let long = self.position.as_deref().is_some_and(Checkpoint::is_long);
        let Some(sequence) = to.encode(long) else {
            // a sequence number longer than any Kinesis writes: the checkpoint stays where it
            // is, and the records are delivered again after a restart
            tracing::warn!(shard = %self.shard, sequence = %to.sequence, "mq-kinesis: cannot checkpoint inside this aggregated record");
            self.batches += 1;
            return if reopen {
                State::Opening
            } else {
                State::Fetching
            };
        };
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(5)
            .build();
        loop {
            match self.env.store.checkpoint(&lease, &sequence).await {
                Ok(CheckpointOutcome::Fenced) => {
                    return State::LeaseLost("checkpoint refused by the fence".into());
                }
                Ok(_) => break,
                Err(e) => match delays.next() {
                    Some(d) => {
                        tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: checkpoint failed, retrying");
                        tokio::time::sleep(d).await;
                    }
                    None => {
                        // the records were handled: a store that cannot save the checkpoint is
                        // not their fault, so their batch start does not count towards a
                        // poison pill (they are delivered again from the old checkpoint)
                        if let Err(e) = self
                            .env
                            .store
                            .clear_failures(self.stream(), &self.shard)
                            .await
                        {
                            tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: cannot clear failure counts");
                        }
                        return State::Releasing(ShardExit::Failed(format!(
                            "checkpoint failed: {e}"
                        )));
                    }
                },
            }
        }
        self.position = Some(sequence.clone());
        self.batches += 1;
        if let Err(e) = self
            .env
            .store
            .clear_failures(self.stream(), &self.shard)
            .await
        {
            tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: cannot clear failure counts");
        }
        self.emit(|| LifecycleEvent::Checkpoint {
            consumer: self.info.clone(),
            checkpoint: sequence.clone(),
            records_since_last: records,
        });
        if reopen {
            State::Opening
        } else {
            State::Fetching
        }
    }
}
