//! A batch of records: decoding, the handler (run through `mq_core`'s `HandlerRunner`),
//! outcomes, retries in place, dead letters and poison pills: the `Processing` state.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use mq_core::backend::BatchResult;
use mq_core::{
    Batch, DeadLetter, DeadLetterOrigin, ErrorChain, LifecycleEvent, Message, MessageId,
    MessageInfo, Outcome, Status,
};

use super::deaggregate::UserRecord;
use super::{BACKEND, ShardConsumer, State};
use crate::record::{UNDECODABLE_MESSAGE_TYPE, decode_record};

impl ShardConsumer {
    pub(super) async fn process(
        &mut self,
        mut records: Vec<UserRecord>,
        mut reopen: bool,
        failures: u32,
    ) -> State {
        let threshold = self.env.shard_options.get_poison_threshold();
        if failures > 1 && records.len() > 1 {
            // an earlier start from this checkpoint never completed: isolate the first record
            records.truncate(1);
            reopen = true;
        }
        let Some(last) = records.last().map(UserRecord::checkpoint) else {
            return State::Opening;
        };
        let count = records.len() as u64;
        // every record by its label: its checkpoint, and its bytes for a dead letter
        let by_label: HashMap<String, &UserRecord> =
            records.iter().map(|r| (r.label(), r)).collect();
        let mut letters: Vec<DeadLetter> = Vec::new();
        let mut messages: Vec<(Message, String)> = Vec::new();
        for r in &records {
            let label = r.label();
            if let Some(why) = &r.broken {
                let m = self.placeholder(&label, r);
                let e = ErrorChain::msg(why.clone());
                letters.push(self.letter(m, &label, e, false, &by_label));
                continue;
            }
            match decode_record(&r.data, &self.env.queue, &self.shard, &label, r.arrival) {
                Ok(mut m) => {
                    if m.partition_key.is_none() {
                        m.partition_key = Some(r.partition_key.clone());
                    }
                    messages.push((m, label));
                }
                Err(e) => {
                    let m = self.placeholder(&label, r);
                    let e = ErrorChain::from_error(&e);
                    letters.push(self.letter(m, &label, e, false, &by_label));
                }
            }
        }
        if failures > threshold {
            // the record at the checkpoint kept failing (crashes and other instances included)
            let from = self.position.clone().unwrap_or_else(|| "start".into());
            for (m, seq) in messages.drain(..) {
                let e = ErrorChain::msg(format!(
                    "poison pill: processing from checkpoint {from} failed {} times",
                    failures - 1
                ));
                letters.push(self.letter(m, &seq, e, true, &by_label));
            }
            if !self.deliver_letters(letters).await {
                return self.interrupted();
            }
            let mut result = BatchResult::failure(records.len(), records.len());
            result.poison_pill = true;
            self.env.strategy.record(&self.key, &result);
            self.emit(|| LifecycleEvent::PoisonPill {
                consumer: self.info.clone(),
                checkpoint: from.clone(),
                failures: failures - 1,
                records: records.len(),
            });
            return State::Checkpointing {
                to: last,
                reopen,
                records: count,
            };
        }
        if !letters.is_empty() && !self.deliver_letters(std::mem::take(&mut letters)).await {
            return self.ended_early().await;
        }
        if !self.confirm_lease().await || !self.take_tokens(messages.len()).await {
            return self.ended_early().await;
        }
        match self.handle_in_place(messages, &by_label).await {
            Ok(()) => State::Checkpointing {
                to: last,
                reopen,
                records: count,
            },
            Err(Some(next)) => next,
            Err(None) => self.ended_early().await,
        }
    }

    /// The batch ended before it was handled to its end: stopped, the lease lost, the lease
    /// store unreachable. None of that is its records' fault, so its start does not count
    /// towards a poison pill (a crash never gets here, and a handler stuck past its limit still
    /// counts: see [`excuse_start`](Self::excuse_start)).
    async fn ended_early(&mut self) -> State {
        self.excuse_start().await;
        self.interrupted()
    }

    /// Before a batch goes to the handler: the lease is confirmed after any lease-store
    /// trouble (see [`LeaseRenewal::confirm`](super::renewal::LeaseRenewal::confirm)).
    async fn confirm_lease(&mut self) -> bool {
        let Some(lease) = self.lease.clone() else {
            return true;
        };
        self.renewal.confirm(&lease, &self.stop).await
    }

    /// The message of a record that does not decode: type `undecodable`, the record's bytes in
    /// base64 under `data_base64`, and under `text` the same bytes as text when they are UTF-8.
    /// Its partition key is the record's, so that publishing it again (a replay) writes the
    /// same bytes under the same key.
    fn placeholder(&self, seq: &str, record: &UserRecord) -> Message {
        let (data, at) = (&record.data, record.arrival);
        let id = MessageId::new(format!("{}:{seq}", self.shard))
            .or_else(|_| MessageId::new(seq))
            .unwrap_or_else(|_| self.env.common.get_id_generator().next_id());
        let mut m = Message::new(
            id,
            self.env.queue.clone(),
            UNDECODABLE_MESSAGE_TYPE,
            DeadLetter::original_bytes_payload(data),
            at,
        );
        m.status = Status::Failed;
        m.partition_key = Some(record.partition_key.clone());
        m
    }

    /// The dead letter of `m`, read from the record labelled `seq`, whose bytes it keeps (for a
    /// user record of an aggregate, its own bytes; for a broken aggregate, the whole record's).
    fn letter(
        &self,
        m: Message,
        seq: &str,
        error: ErrorChain,
        exhausted: bool,
        records: &HashMap<String, &UserRecord>,
    ) -> DeadLetter {
        let letter = DeadLetter::new(
            m,
            DeadLetterOrigin::shard(BACKEND, self.shard.clone(), seq),
            error,
            exhausted,
            self.consumer_id.clone(),
        );
        match records.get(seq) {
            Some(r) => letter.original_bytes(r.data.clone()),
            None => letter,
        }
    }

    /// Hands letters to the dead-letter hook, retrying until it accepts them; false when stopped
    /// or the lease was lost meanwhile (nothing is checkpointed then).
    async fn deliver_letters(&mut self, letters: Vec<DeadLetter>) -> bool {
        if letters.is_empty() {
            return true;
        }
        let infos: Vec<(MessageInfo, ErrorChain, bool)> = letters
            .iter()
            .map(|l| {
                (
                    MessageInfo::of(&l.message, BACKEND),
                    l.error.clone(),
                    l.exhausted,
                )
            })
            .collect();
        let Some(sink) = self.env.common.get_dead_letters().cloned() else {
            for (info, error, exhausted) in infos {
                tracing::error!(message_id = %info.message_id, error = %error, "mq-kinesis: message failed for good and no dead-letter hook is configured");
                self.emit(|| LifecycleEvent::Failed {
                    message: info.clone(),
                    consumer_id: self.consumer_id.clone(),
                    error: error.clone(),
                    exhausted,
                });
            }
            self.report.failed += letters.len();
            return true;
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match sink.dead_letter(letters.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "mq-kinesis: dead-letter hook failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.abort.cancelled() => return false,
                        _ = self.renewal.lost().cancelled() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.report.dead_lettered += infos.len();
        for (info, error, exhausted) in infos {
            self.emit(|| LifecycleEvent::Failed {
                message: info.clone(),
                consumer_id: self.consumer_id.clone(),
                error: error.clone(),
                exhausted,
            });
            self.emit(|| LifecycleEvent::DeadLettered {
                message: info.clone(),
                consumer_id: self.consumer_id.clone(),
                error: error.clone(),
            });
        }
        true
    }

    /// Runs the handler until every message is acked or dead-lettered; Err when stopped or the
    /// lease was lost (the batch is then left for the next owner), with the next state when a
    /// checkpoint failed. `records` are the batch's records by their labels (for the
    /// checkpoint after each message, and the bytes of its dead letter).
    ///
    /// - The handler's per-message outcomes are kept as they are, with one exception for order:
    ///   when it retries a message, the later messages of the batch with the same partition key
    ///   that it acked are delivered again after it, so a key's messages are last handled in
    ///   their order. Messages of other keys keep their outcomes.
    /// - A batch of several messages that fails as a whole (every message retried: an error
    ///   returned for the batch, a panic, a timeout) is not retried as a batch: its messages go
    ///   to the handler one at a time, in order, each retried alone until it succeeds or its
    ///   attempts are exhausted. So only a message that fails alone reaches the dead letters, and
    ///   a good message of such a batch is handled twice at most. Each message done alone (acked
    ///   or dead-lettered) is checkpointed before the next one starts, and a stop takes effect
    ///   between two of them: a restart resumes after the last message done.
    async fn handle_in_place(
        &mut self,
        messages: Vec<(Message, String)>,
        records: &HashMap<String, &UserRecord>,
    ) -> Result<(), Option<State>> {
        let retry = self.env.options.get_retry().clone();
        let mut pending = messages;
        let mut types: Vec<String> = Vec::new();
        for (m, _) in &pending {
            if !types.contains(&m.message_type) {
                types.push(m.message_type.clone());
            }
        }
        let total = pending.len();
        let mut failed_types: Vec<String> = Vec::new();
        let started = tokio::time::Instant::now();
        let mut failures = 0;
        // one message at a time, after the batch failed as a whole
        let mut alone = false;
        while !pending.is_empty() {
            if alone && self.stop.is_cancelled() {
                // the messages done alone so far are checkpointed
                return Err(None);
            }
            let rest = pending.split_off(if alone { 1 } else { pending.len() });
            let now = Utc::now();
            for (m, _) in pending.iter_mut() {
                m.attempts += 1;
                m.status = Status::Processing;
                m.processing_started_at = Some(now);
            }
            let (messages, seqs): (Vec<Message>, Vec<String>) = pending.into_iter().unzip();
            let alone_label = seqs.first().cloned().filter(|_| alone);
            let batch = Batch::from(messages);
            self.report.delivered += batch.len();
            if self.env.common.get_lifecycle().is_active() {
                for m in batch.iter() {
                    let age = (now - m.created_at).to_std().unwrap_or_default();
                    self.emit(|| LifecycleEvent::Consumed {
                        message: MessageInfo::of(m, BACKEND),
                        consumer_id: self.consumer_id.clone(),
                        age,
                    });
                }
            }
            let run_started = tokio::time::Instant::now();
            let busy = self.renewal.busy().clone();
            busy.enter(
                "the handler",
                self.env.options.get_handler_timeout() + self.env.shard_options.get_stall_timeout(),
            );
            let run = self
                .runner
                .run(batch.clone(), &self.abort, Some(self.renewal.lost()))
                .await;
            busy.leave();
            let (outcomes, timed_out) = (run.outcomes, run.timed_out);
            let handler_duration = run_started.elapsed();
            if self.renewal.lost().is_cancelled() {
                return Err(None);
            }
            if timed_out {
                self.report.cancelled = true;
            }
            let outcomes: Vec<Outcome> = batch
                .iter()
                .map(|m| {
                    if timed_out {
                        return Outcome::Retry {
                            after: None,
                            error: Some(ErrorChain::msg(format!(
                                "handler timed out after {:?}",
                                self.env.options.get_handler_timeout()
                            ))),
                        };
                    }
                    match outcomes.get(&m.id) {
                        o @ (Outcome::Ack
                        | Outcome::Retry { .. }
                        | Outcome::Fail { .. }
                        | Outcome::DeadLetter { .. }) => o.clone(),
                        // an outcome this version does not know: deliver again
                        _ => Outcome::retry(),
                    }
                })
                .collect();
            if !alone
                && batch.len() > 1
                && outcomes.iter().all(|o| matches!(o, Outcome::Retry { .. }))
            {
                // nobody knows which message failed it: find out one message at a time
                tracing::warn!(shard = %self.shard, messages = batch.len(), "mq-kinesis: the batch failed as a whole; handing its messages to the handler one at a time");
                for (m, o) in batch.iter().zip(&outcomes) {
                    failures += 1;
                    if !failed_types.contains(&m.message_type) {
                        failed_types.push(m.message_type.clone());
                    }
                    self.report.retried += 1;
                    let error = match o {
                        Outcome::Retry { error, .. } => error.clone(),
                        _ => None,
                    };
                    self.emit(|| LifecycleEvent::Retried {
                        message: MessageInfo::of(m, BACKEND),
                        consumer_id: self.consumer_id.clone(),
                        delay: Duration::ZERO,
                        error,
                    });
                }
                alone = true;
                pending = batch.iter().cloned().zip(seqs).collect();
                pending.extend(rest);
                continue;
            }
            // a retried message holds back the later messages of its key
            let mut retried_keys: Vec<Option<String>> = Vec::new();
            let held: Vec<bool> = batch
                .iter()
                .zip(&outcomes)
                .map(|(m, o)| match o {
                    Outcome::Retry { .. } => {
                        retried_keys.push(m.partition_key.clone());
                        false
                    }
                    Outcome::Ack => retried_keys.contains(&m.partition_key),
                    _ => false,
                })
                .collect();
            let mut still: Vec<(Message, String)> = Vec::new();
            let mut letters = Vec::new();
            let mut wait = Duration::ZERO;
            for (((m, seq), outcome), held) in batch.iter().zip(seqs).zip(outcomes).zip(held) {
                match outcome {
                    // behind a retried message of its key: delivered again after it
                    Outcome::Ack if held => still.push((m.clone(), seq)),
                    Outcome::Ack => {
                        self.report.acked += 1;
                        self.emit(|| LifecycleEvent::Acked {
                            message: MessageInfo::of(m, BACKEND),
                            consumer_id: self.consumer_id.clone(),
                            handler_duration,
                        });
                    }
                    Outcome::Retry { after, error } => {
                        failures += 1;
                        if !failed_types.contains(&m.message_type) {
                            failed_types.push(m.message_type.clone());
                        }
                        if retry.is_exhausted(m) {
                            let e = error.unwrap_or_else(|| ErrorChain::msg("attempts exhausted"));
                            letters.push(self.letter(m.clone(), &seq, e, true, records));
                        } else {
                            let delay = after.unwrap_or_else(|| retry.delay_for(m));
                            wait = wait.max(delay);
                            self.report.retried += 1;
                            self.emit(|| LifecycleEvent::Retried {
                                message: MessageInfo::of(m, BACKEND),
                                consumer_id: self.consumer_id.clone(),
                                delay,
                                error: error.clone(),
                            });
                            still.push((m.clone(), seq));
                        }
                    }
                    Outcome::DeadLetter { error } | Outcome::Fail { error } => {
                        failures += 1;
                        if !failed_types.contains(&m.message_type) {
                            failed_types.push(m.message_type.clone());
                        }
                        letters.push(self.letter(m.clone(), &seq, error, false, records));
                    }
                    // unknown outcomes were turned into retries above
                    _ => still.push((m.clone(), seq)),
                }
            }
            if !self.deliver_letters(letters).await {
                return Err(None);
            }
            let again = !still.is_empty();
            if !again
                && !rest.is_empty()
                && let Some(mark) = alone_label
                    .and_then(|l| records.get(&l))
                    .map(|r| r.checkpoint())
            {
                // done alone: checkpointed, and the rest starts from there
                self.save(&mark, 1).await.map_err(Some)?;
                let from = self.position.clone().unwrap_or_else(|| "start".into());
                if let Err(e) = self.count_start(&from).await {
                    tracing::warn!(shard = %self.shard, error = %e, "mq-kinesis: cannot count the batch start");
                }
            }
            pending = still;
            pending.extend(rest);
            if again {
                // stopping abandons the retries: the batch is delivered again from the checkpoint
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.stop.cancelled() => return Err(None),
                    _ = self.abort.cancelled() => return Err(None),
                    _ = self.renewal.lost().cancelled() => return Err(None),
                }
            }
        }
        let result = if failures == 0 {
            BatchResult::success(total, started.elapsed())
        } else {
            BatchResult::failure(total, failures.min(total))
        };
        self.env
            .strategy
            .record(&self.key, &result.with_types(types, failed_types));
        Ok(())
    }
}
