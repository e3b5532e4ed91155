//! Opening the record source and reading from it: the `Opening` and `Fetching` states.

use mq_core::LifecycleEvent;

use super::source::{Fetched, Opened, SourceError};
use super::{ShardConsumer, ShardExit, State};

impl ShardConsumer {
    /// Positions the source after the checkpoint.
    pub(super) async fn open(&mut self) -> State {
        if self.stop.is_cancelled() {
            return State::Releasing(ShardExit::Stopped);
        }
        let lost = self.renewal.lost().clone();
        let opened = tokio::select! {
            opened = self.source.open(self.position.as_deref(), &self.initial) => opened,
            _ = lost.cancelled() => return self.lost_state(),
        };
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
        let fetched = match self.read().await {
            Ok(fetched) => fetched,
            Err(state) => return state,
        };
        self.fetch_errors = 0;
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
        self.idle_delay = self.env.options.get_poll_interval();
        let from = self.position.clone().unwrap_or_else(|| "start".into());
        let failures = match self
            .env
            .store
            .record_failure(self.stream(), &self.shard, &from)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: cannot count the batch start");
                1
            }
        };
        State::Processing {
            records,
            reopen: ended,
            failures,
        }
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
