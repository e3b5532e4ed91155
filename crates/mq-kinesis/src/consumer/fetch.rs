//! Opening the record source and reading from it: the `Opening` and `Fetching` states.

use mq_core::LifecycleEvent;

use super::deadline::within;
use super::deaggregate::expand;
use super::source::{Fetched, Opened, SourceError};
use super::{ShardConsumer, ShardExit, State};
use crate::position::Checkpoint;

impl ShardConsumer {
    /// Positions the source after the checkpoint.
    pub(super) async fn open(&mut self) -> State {
        if self.stop.is_cancelled() {
            return State::Releasing(ShardExit::Stopped);
        }
        let (busy, lost) = (self.renewal.busy().clone(), self.renewal.lost().clone());
        // records read from the old position are read again from the new one
        self.pending.clear();
        // a call that never answers must not keep the lease, nor keep a stop waiting
        busy.enter(
            self.source.open_operation(),
            self.env.shard_options.get_stall_timeout(),
        );
        let opened = tokio::select! {
            opened = self.source.open(self.position.as_deref(), &self.initial) => opened,
            _ = lost.cancelled() => {
                busy.leave();
                return self.lost_state();
            }
            _ = self.stop.cancelled() => {
                busy.leave();
                return State::Releasing(ShardExit::Stopped);
            }
        };
        busy.leave();
        match opened {
            Ok(Opened::Reading) => State::Fetching,
            Ok(Opened::Ended) => State::Finishing,
            Err(e) => self.source_error(e, State::Opening),
        }
    }

    /// Reads the next batch and counts its start in the lease store.
    pub(super) async fn fetch(&mut self) -> State {
        if self.stop.is_cancelled() || self.max_batches.is_some_and(|m| self.batches >= m) {
            return State::Releasing(ShardExit::Stopped);
        }
        if let Some(wait) = self.pace() {
            return wait;
        }
        if !self.pending.is_empty() {
            return self.start_batch().await;
        }
        let fetched = match self.read().await {
            Ok(fetched) => fetched,
            Err(state) => return state,
        };
        self.fetch_errors = 0;
        self.throttle_delay = std::time::Duration::ZERO;
        let Fetched {
            records,
            millis_behind_latest,
            ended,
            ..
        } = fetched;
        self.emit(|| LifecycleEvent::RecordsFetched {
            consumer: self.info.clone(),
            records: records.len(),
            millis_behind_latest,
        });
        if !ended
            && !records.is_empty()
            && let Some(limit) = self.read_ahead_limit()
        {
            self.source.read_ahead(limit);
        }
        if records.is_empty() {
            return self.idle(ended);
        }
        let position = self.position.as_deref().map(Checkpoint::parse);
        let records = expand(records, position.as_ref());
        if records.is_empty() {
            // only user records already done (of the aggregate the checkpoint is inside)
            return if ended {
                State::Finishing
            } else {
                State::Fetching
            };
        }
        self.idle_delay = self.env.options.get_poll_interval();
        self.pending = records;
        self.pending_ended = ended;
        self.start_batch().await
    }

    /// Takes the next batch of the pending records (at most a batch's worth: an aggregated
    /// record may hold many) and counts its start in the lease store.
    async fn start_batch(&mut self) -> State {
        let limit = self.fetch_limit().max(1);
        let rest = if self.pending.len() > limit {
            self.pending.split_off(limit)
        } else {
            Vec::new()
        };
        let records = std::mem::replace(&mut self.pending, rest);
        let from = self.position.clone().unwrap_or_else(|| "start".into());
        let failures = match self.count_start(&from).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: cannot count the batch start");
                1
            }
        };
        State::Processing {
            records,
            reopen: self.pending.is_empty() && self.pending_ended,
            failures,
        }
    }

    /// Counts the start of a batch after `from` in the lease store and returns the failed
    /// starts from there (this one included), without those that were not their records' fault.
    pub(super) async fn count_start(&self, from: &str) -> crate::Result<u32> {
        let stored = within(
            "record failure",
            self.renewal.limit(),
            None,
            self.env
                .store
                .record_failure(self.stream(), &self.shard, from),
        )
        .await?;
        Ok(self.counted_failures(from, stored))
    }

    /// One read, waiting past heartbeats; a hung call must not keep the lease, so the read is
    /// watched by the renewal task's stall check. Err with the next state.
    async fn read(&mut self) -> Result<Fetched, State> {
        let limit = self.fetch_limit();
        let (busy, lost) = (self.renewal.busy().clone(), self.renewal.lost().clone());
        let stall = self.env.shard_options.get_stall_timeout();
        let read = loop {
            // an empty event is a sign of life: only a source silent for the whole stall
            // timeout counts as stuck
            busy.enter(self.source.operation(), stall);
            let read = tokio::select! {
                read = self.source.next(limit) => read,
                _ = lost.cancelled() => {
                    busy.leave();
                    return Err(self.lost_state());
                }
                // the read is cancel safe: nothing was handed out
                _ = self.stop.cancelled() => {
                    busy.leave();
                    return Err(State::Releasing(ShardExit::Stopped));
                }
            };
            match read {
                Ok(f) if f.heartbeat => {
                    self.fetch_errors = 0;
                    self.emit(|| LifecycleEvent::RecordsFetched {
                        consumer: self.info.clone(),
                        records: 0,
                        millis_behind_latest: f.millis_behind_latest,
                    });
                }
                read => break read,
            }
        };
        busy.leave();
        read.map_err(|e| self.source_error(e, State::Fetching))
    }

    /// Nothing was read: the end of a closed shard, or a wait that doubles up to the maximum
    /// poll interval.
    fn idle(&mut self, ended: bool) -> State {
        if self.max_batches.is_some() {
            self.batches += 1;
        }
        if ended {
            return State::Finishing;
        }
        let delay = self.idle_delay;
        self.idle_delay = (delay * 2).min(self.env.options.get_max_poll_interval());
        State::Backoff {
            delay,
            then: Box::new(State::Fetching),
        }
    }

    /// The state after a failed open or read; `retry` is where a plain failure goes again.
    fn source_error(&mut self, e: SourceError, retry: State) -> State {
        match e {
            SourceError::Stopped => State::Releasing(ShardExit::Stopped),
            SourceError::Reopen => State::Opening,
            SourceError::Failed { code, text, reopen } => {
                let then = if reopen { State::Opening } else { retry };
                self.fetch_error(code.as_deref(), text, then)
            }
        }
    }
}
