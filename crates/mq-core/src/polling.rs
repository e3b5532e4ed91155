//! [`PollingQueue`]: the whole [`MessageQueue`] behaviour on top of any [`QueueStore`].

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::{CancelOutcome, CancelTarget};
use crate::dead_letter::{DeadLetter, DeadLetterSink, ErrorChain};
use crate::error::{Error, Result};
use crate::handler::{Handler, Outcome};
use crate::lifecycle::{ConsumerInfo, LifecycleEvent, MessageInfo};
use crate::message::{Message, MessageId, NewMessage, Status, later_by};
use crate::options::{CommonOptions, ConsumerOptions};
use crate::queue::{
    BatchReport, ConsumerHandle, ConsumerStopper, MessageQueue, PublishFailure, PublishReport,
};
use crate::queue_name::QueueName;
use crate::registered::RegisteredQueues;
use crate::runner::{HandlerRunner, Settlement};
use crate::stats::QueueStats;
use crate::store::{Claim, Completion, CompletionAction, Holder, QueueStore, Undecodable};

mod prepare;
mod renewal;
mod trouble;

pub use prepare::prepare_messages;
use prepare::prepare_split;
use trouble::Trouble;

/// A [`MessageQueue`] made of a [`QueueStore`] and the shared consumer runtime.
///
/// Consumers run `concurrency` worker loops; each claims a batch, runs the handler with a timeout
/// (renewing the lease every third of its duration while the handler runs), then writes all
/// outcomes in one call. Polls of one worker never overlap; idle workers back off from
/// `poll_interval` to `max_poll_interval` and wake early when the store signals new work.
///
/// Backends wrap it in their own type (`InMemoryQueue` in `mq-memory` is the smallest example).
pub struct PollingQueue<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for PollingQueue<S> {
    fn clone(&self) -> Self {
        PollingQueue {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S> {
    store: Arc<S>,
    common: CommonOptions,
    registered: RegisteredQueues,
    stop: CancellationToken,
    abort: CancellationToken,
    consumers: Mutex<Vec<ConsumerStopper>>,
    /// `consume_batch` calls in flight, so shutdown waits for them too.
    batches: TaskTracker,
    shut_down: AtomicBool,
    /// Cancelled when the first shutdown has finished; later callers wait on it.
    shutdown_done: CancellationToken,
    instance: String,
    next_consumer: AtomicU64,
}

impl<S: QueueStore> fmt::Debug for PollingQueue<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollingQueue")
            .field("store", &self.inner.store)
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

impl<S: QueueStore> PollingQueue<S> {
    /// A queue over `store` with `common` settings.
    pub fn new(store: S, common: CommonOptions) -> Self {
        let instance = format!(
            "{}-{}-{:06x}",
            store.backend(),
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        );
        PollingQueue {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                common,
                registered: RegisteredQueues::default(),
                stop: CancellationToken::new(),
                abort: CancellationToken::new(),
                consumers: Mutex::default(),
                batches: TaskTracker::new(),
                shut_down: AtomicBool::new(false),
                shutdown_done: CancellationToken::new(),
                instance,
                next_consumer: AtomicU64::new(0),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The store, shared.
    pub fn shared_store(&self) -> Arc<S> {
        self.inner.store.clone()
    }

    /// The numbers of `queue`, or of every queue in the store when `None` (read-only; see
    /// [`QueueStore::queue_stats`]). The queue name goes through the queue's resolver.
    pub async fn queue_stats(&self, queue: Option<&QueueName>) -> Result<Vec<QueueStats>> {
        let resolved = queue
            .map(|q| self.inner.common.resolver.resolve(q))
            .transpose()?;
        self.inner.store.queue_stats(resolved.as_ref()).await
    }

    /// The waiting and running messages of `queue`, or of every queue when `None` (read-only;
    /// see [`QueueStore::queue_depth`]). The queue name goes through the queue's resolver.
    pub async fn queue_depth(&self, queue: Option<&QueueName>) -> Result<Vec<QueueStats>> {
        let resolved = queue
            .map(|q| self.inner.common.resolver.resolve(q))
            .transpose()?;
        self.inner.store.queue_depth(resolved.as_ref()).await
    }

    /// Cancelled when the queue starts shutting down.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    /// The shared settings.
    pub fn common(&self) -> &CommonOptions {
        &self.inner.common
    }

    /// Resolves `queue` and checks it is registered and the queue is running.
    pub fn resolve_registered(&self, queue: &QueueName) -> Result<QueueName> {
        self.check_running()?;
        self.inner.registered.resolve(&self.inner.common, queue)
    }

    fn check_running(&self) -> Result<()> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            Err(Error::ShutDown {
                backend: self.inner.store.backend(),
            })
        } else {
            Ok(())
        }
    }

    /// Validates `messages` and turns them into stored messages of `queue`; refusals go to
    /// `failed` with their batch index. Shared with backends that publish through their own path
    /// (for example inside a caller's transaction).
    pub fn prepare(
        &self,
        queue: &QueueName,
        messages: Vec<NewMessage>,
        failed: &mut Vec<PublishFailure>,
    ) -> Vec<(usize, Message)> {
        let (indexes, msgs) = prepare_split(&self.inner.common, queue, messages, failed);
        let (indexes, msgs) = self.checked(indexes, msgs, failed);
        indexes.into_iter().zip(msgs).collect()
    }

    /// Keeps the messages the store accepts ([`QueueStore::check`]); the others go to `failed`.
    fn checked(
        &self,
        indexes: Vec<usize>,
        messages: Vec<Message>,
        failed: &mut Vec<PublishFailure>,
    ) -> (Vec<usize>, Vec<Message>) {
        let store = &self.inner.store;
        let mut keep_idx = Vec::with_capacity(indexes.len());
        let mut keep = Vec::with_capacity(messages.len());
        for (index, m) in indexes.into_iter().zip(messages) {
            match store.check(&m) {
                Ok(()) => {
                    keep_idx.push(index);
                    keep.push(m);
                }
                Err(error) => failed.push(PublishFailure {
                    index,
                    id: Some(m.id),
                    error,
                }),
            }
        }
        (keep_idx, keep)
    }

    /// Emits `published` for stored messages.
    pub fn emit_published(&self, messages: &[Message]) {
        let lc = &self.inner.common.lifecycle;
        if lc.is_active() {
            let backend = self.inner.store.backend();
            for m in messages {
                lc.emit(LifecycleEvent::Published {
                    message: MessageInfo::of(m, backend),
                    size_bytes: m.encoded_len(),
                });
            }
        }
    }

    fn new_consumer_id(&self) -> String {
        let n = self.inner.next_consumer.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.instance)
    }
}

#[async_trait]
impl<S: QueueStore> MessageQueue for PollingQueue<S> {
    fn backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    async fn register(&self, queue: &QueueName) -> Result<()> {
        self.check_running()?;
        let resolved = self.inner.common.resolver.resolve(queue)?;
        self.inner.store.register(&resolved).await?;
        self.inner.registered.insert(resolved);
        Ok(())
    }

    async fn publish(&self, queue: &QueueName, messages: Vec<NewMessage>) -> Result<PublishReport> {
        let queue = self.resolve_registered(queue)?;
        let mut report = PublishReport::default();
        if messages.is_empty() {
            return Ok(report);
        }
        let (indexes, msgs) =
            prepare_split(&self.inner.common, &queue, messages, &mut report.failed);
        let (indexes, msgs) = self.checked(indexes, msgs, &mut report.failed);
        if msgs.is_empty() {
            return Ok(report);
        }
        let keep = if self.inner.common.lifecycle.is_active() {
            Some(msgs.clone())
        } else {
            None
        };
        let ids: Vec<_> = msgs.iter().map(|m| m.id.clone()).collect();
        let results = self.inner.store.insert(&queue, msgs).await?;
        let mut stored = Vec::new();
        for (k, (res, id)) in results.into_iter().zip(ids).enumerate() {
            match res {
                Ok(()) => {
                    report.published.push(id);
                    stored.push(k);
                }
                Err(error) => report.failed.push(PublishFailure {
                    index: indexes[k],
                    id: Some(id),
                    error,
                }),
            }
        }
        if let Some(msgs) = keep {
            let stored_msgs: Vec<Message> = stored.into_iter().map(|k| msgs[k].clone()).collect();
            self.emit_published(&stored_msgs);
        }
        report.failed.sort_by_key(|f| f.index);
        Ok(report)
    }

    async fn consume(
        &self,
        queue: &QueueName,
        handler: Arc<dyn Handler>,
        options: ConsumerOptions,
    ) -> Result<ConsumerHandle> {
        let queue = self.resolve_registered(queue)?;
        options.validate()?;
        let stopper = ConsumerStopper::new(
            &self.inner.stop,
            &self.inner.abort,
            options.get_shutdown_grace(),
        );
        let consumer_id = self.new_consumer_id();
        {
            // Checked under the same lock shutdown takes, so a consumer is either refused or
            // stopped by shutdown, never missed.
            let mut consumers = self
                .inner
                .consumers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.check_running()?;
            consumers.retain(|c| !c.is_finished());
            consumers.push(stopper.clone());
        }
        let worker = Arc::new(Worker::new(
            self.inner.store.clone(),
            &self.inner.common,
            queue.clone(),
            consumer_id.clone(),
            handler,
            options,
            stopper.abort_token().clone(),
        ));
        let info = ConsumerInfo::worker(consumer_id.clone(), queue, self.inner.store.backend());
        stopper.announce(&self.inner.common.lifecycle, info, &self.inner.stop, || {
            let loops: Vec<_> = (0..worker.options.get_concurrency())
                .map(|_| {
                    let w = worker.clone();
                    let stop = stopper.stop_token().clone();
                    stopper.tracker().spawn(async move { w.run(stop).await })
                })
                .collect();
            async move {
                for l in loops {
                    if let Err(e) = l.await {
                        tracing::error!(error = %e, "mq: consumer worker ended abnormally");
                    }
                }
            }
        });
        Ok(ConsumerHandle::new(consumer_id, stopper))
    }

    async fn consume_batch(
        &self,
        queue: &QueueName,
        handler: Arc<dyn Handler>,
        options: &ConsumerOptions,
    ) -> Result<BatchReport> {
        let queue = self.resolve_registered(queue)?;
        options.validate()?;
        let _in_flight = self.inner.batches.token();
        self.check_running()?;
        let worker = Worker::new(
            self.inner.store.clone(),
            &self.inner.common,
            queue,
            self.new_consumer_id(),
            handler,
            options.clone(),
            self.inner.abort.child_token(),
        );
        worker.run_once().await
    }

    async fn cancel(&self, queue: &QueueName, target: CancelTarget) -> Result<CancelOutcome> {
        let queue = self.resolve_registered(queue)?;
        self.inner.store.cancel(&queue, target).await
    }

    async fn pause(&self, queue: &QueueName) -> Result<()> {
        let queue = self.resolve_registered(queue)?;
        self.inner.store.set_paused(&queue, true).await
    }

    async fn resume(&self, queue: &QueueName) -> Result<()> {
        let queue = self.resolve_registered(queue)?;
        self.inner.store.set_paused(&queue, false).await?;
        // Idle consumers of this process may sleep up to their poll interval: let them look now.
        self.inner.store.wake(&queue);
        Ok(())
    }

    async fn is_paused(&self, queue: &QueueName) -> Result<bool> {
        let queue = self.resolve_registered(queue)?;
        self.inner.store.is_paused(&queue).await
    }

    async fn shutdown(&self) -> Result<()> {
        let first = {
            let _guard = self
                .inner
                .consumers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            !self.inner.shut_down.swap(true, Ordering::AcqRel)
        };
        if !first {
            self.inner.shutdown_done.cancelled().await;
            return Ok(());
        }
        self.inner.stop.cancel();
        let consumers: Vec<ConsumerStopper> = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let grace = consumers
            .iter()
            .map(ConsumerStopper::grace)
            .max()
            .unwrap_or(DEFAULT_BATCH_GRACE);
        futures::future::join_all(consumers.iter().map(ConsumerStopper::stop)).await;
        self.inner.batches.close();
        if tokio::time::timeout(grace, self.inner.batches.wait())
            .await
            .is_err()
        {
            self.inner.abort.cancel();
            self.inner.batches.wait().await;
        }
        self.inner.common.lifecycle.flush().await;
        self.inner.store.close().await;
        self.inner.shutdown_done.cancel();
        Ok(())
    }
}

/// How long shutdown waits for `consume_batch` calls when no consumer says otherwise.
const DEFAULT_BATCH_GRACE: Duration = Duration::from_secs(30);

struct Worker<S> {
    store: Arc<S>,
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    queue: QueueName,
    consumer_id: String,
    runner: HandlerRunner,
    options: ConsumerOptions,
    abort: CancellationToken,
}

impl<S: QueueStore> Worker<S> {
    fn new(
        store: Arc<S>,
        common: &CommonOptions,
        queue: QueueName,
        consumer_id: String,
        handler: Arc<dyn Handler>,
        options: ConsumerOptions,
        abort: CancellationToken,
    ) -> Self {
        let runner = HandlerRunner::for_consumer(
            handler,
            store.backend(),
            queue.clone(),
            consumer_id.clone(),
            &options,
            common,
        );
        Worker {
            store,
            dead_letters: common.get_dead_letters().cloned(),
            queue,
            consumer_id,
            runner,
            options,
            abort,
        }
    }

    /// This worker as the holder of its claims.
    fn holder(&self) -> Holder<'_> {
        Holder::new(&self.consumer_id, self.options.get_lease_duration())
    }

    async fn run(&self, stop: CancellationToken) {
        let mut idle = self.options.get_poll_interval();
        let mut trouble = Trouble::default();
        while !stop.is_cancelled() {
            match self.run_once().await {
                Ok(report) if report.delivered > 0 || report.expired > 0 => {
                    trouble.recovered(&self.queue, &self.consumer_id);
                    idle = self.options.get_poll_interval();
                    continue;
                }
                Ok(_) => trouble.recovered(&self.queue, &self.consumer_id),
                Err(e) => {
                    trouble.failed(&self.queue, &self.consumer_id, &e);
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.store.wait_for_work(&self.queue, idle) => {}
            }
            idle = (idle * 2).min(self.options.get_max_poll_interval());
        }
    }

    async fn run_once(&self) -> Result<BatchReport> {
        let claimed = self
            .store
            .claim(&self.queue, self.holder(), self.options.get_batch_size())
            .await?;
        let backend = self.store.backend();
        let lc = self.runner.lifecycle();
        let mut report = BatchReport {
            expired: claimed.expired.len(),
            ..BatchReport::default()
        };
        for m in &claimed.expired {
            lc.emit_with(|| LifecycleEvent::Expired {
                message: MessageInfo::of(m, backend),
            });
        }
        if !claimed.undecodable.is_empty() {
            self.settle_undecodable(claimed.undecodable, &mut report)
                .await?;
        }
        if claimed.messages.is_empty() {
            return Ok(report);
        }
        let policy = self.options.get_retry();
        // Messages whose earlier claims all ended without a completion (crashes, lost leases)
        // may have used up their attempts already: they fail without another run.
        let mut runnable = claimed.messages;
        let over: Vec<Message> = if runnable
            .iter()
            .any(|m| m.attempts > policy.attempts_allowed(m))
        {
            runnable
                .extract_if(.., |m| m.attempts > policy.attempts_allowed(m))
                .collect()
        } else {
            Vec::new()
        };
        report.delivered = runnable.len();
        self.runner.emit_consumed(&runnable);
        if !over.is_empty() {
            // Settled before the handler runs, while their leases are fresh.
            let exhausted = |m: &Message| {
                let allowed = policy.attempts_allowed(m);
                Outcome::Fail {
                    error: ErrorChain::msg(format!(
                        "attempts exhausted: {allowed} deliveries allowed, earlier deliveries ended without a result (crash or lost lease)"
                    )),
                }
            };
            let none = HashSet::new();
            self.complete(&over, &exhausted, Duration::ZERO, false, &none, &mut report)
                .await?;
        }
        if !runnable.is_empty() {
            let (runnable, run) = self.run_handler(runnable).await;
            report.cancelled = run.cancelled();
            let outcome_of = |m: &Message| run.outcome_of(&m.id);
            let done = &run.completed_by_handler;
            self.complete(
                &runnable,
                &outcome_of,
                run.took,
                run.aborted,
                done,
                &mut report,
            )
            .await?;
        }
        Ok(report)
    }

    /// Dead-letters rows that do not decode, each alone with its raw text, and finishes them
    /// (dead-lettered, or failed when the dead-letter hook refuses them: retrying cannot help).
    async fn settle_undecodable(
        &self,
        rows: Vec<Undecodable>,
        report: &mut BatchReport,
    ) -> Result<()> {
        let placeholders: Vec<(Message, ErrorChain)> = rows
            .into_iter()
            .map(|row| {
                let mut m = Message::new(
                    row.claim.id.clone(),
                    self.queue.clone(),
                    row.message_type,
                    serde_json::Value::String(row.raw),
                    Utc::now(),
                );
                m.attempts = row.claim.attempt;
                m.status = Status::DeadLettered;
                let error =
                    ErrorChain::msg(format!("stored message cannot be read back: {}", row.error));
                (m, error)
            })
            .collect();
        tracing::error!(queue = %self.queue, consumer = %self.consumer_id, count = placeholders.len(),
            ids = %placeholders.iter().map(|(m, _)| m.id.as_str()).collect::<Vec<_>>().join(","),
            "mq: claimed rows do not decode; dead-lettering them with their raw text");
        let mut status = Status::DeadLettered;
        let mut dead_lettered = false;
        if let Some(sink) = &self.dead_letters {
            let letters = placeholders
                .iter()
                .map(|(m, e)| self.runner.dead_letter(m.clone(), e.clone(), false, None))
                .collect();
            match sink.dead_letter(letters).await {
                Ok(()) => dead_lettered = true,
                Err(source) => {
                    let err = Error::DeadLetter {
                        count: placeholders.len(),
                        source,
                    };
                    tracing::error!(queue = %self.queue, error = %ErrorChain::from_error(&err),
                        "mq: dead-letter store failed; the undecodable rows stay in the queue as failed");
                    status = Status::Failed;
                }
            }
        }
        let completions = placeholders
            .iter()
            .map(|(m, error)| {
                Completion::new(
                    Claim::of(m),
                    CompletionAction::Finish {
                        status,
                        error: error.clone(),
                    },
                )
            })
            .collect();
        let rejected = self.complete_with_retries(completions).await?;
        report.lease_lost += rejected.len();
        for (m, error) in &placeholders {
            if rejected.contains(&Claim::of(m)) {
                continue;
            }
            report.failed += 1;
            if dead_lettered {
                report.dead_lettered += 1;
            }
            let settled = Settlement::Finish {
                status,
                error: error.clone(),
                exhausted: false,
            };
            self.runner
                .emit_settled(m, &settled, Duration::ZERO, dead_lettered);
        }
        Ok(())
    }

    /// Writes the outcomes of `messages`. A refused completion of a message in `by_handler`
    /// counts as acknowledged when the store confirms the handler's own transaction completed
    /// it.
    async fn complete(
        &self,
        messages: &[Message],
        outcome_of: &(dyn Fn(&Message) -> Outcome + Sync),
        handler_duration: Duration,
        aborted: bool,
        by_handler: &HashSet<MessageId>,
        report: &mut BatchReport,
    ) -> Result<()> {
        let now = Utc::now();
        let policy = self.options.get_retry();
        // What a handler stopped by shutdown did not finish comes back at once for the next
        // consumer, and that delivery does not count: the message did not fail, so even on its
        // last attempt it is released rather than dead-lettered.
        let mut released = vec![false; messages.len()];
        let mut plan: Vec<Settlement> = messages
            .iter()
            .zip(&mut released)
            .map(|(m, released)| match outcome_of(m) {
                Outcome::Retry { error, .. } if aborted => {
                    *released = true;
                    Settlement::Retry {
                        delay: Duration::ZERO,
                        error,
                    }
                }
                outcome => self.runner.settle(m, &outcome, policy),
            })
            .collect();
        // Dead letters are stored before the terminal status is written: if the sink fails, the
        // message is retried instead, so it never ends terminal without its dead letter.
        let terminal: Vec<usize> = plan
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Settlement::Finish { .. }))
            .map(|(i, _)| i)
            .collect();
        let mut dead_lettered = false;
        if let (false, Some(sink)) = (terminal.is_empty(), &self.dead_letters) {
            // A message whose lease is gone is another consumer's now: its dead letter would
            // leave it both dead-lettered and live. Renewing first proves the lease is still
            // ours and gives the sink a whole lease to write in.
            let claims: Vec<Claim> = terminal.iter().map(|&i| Claim::of(&messages[i])).collect();
            let lease = self.options.get_lease_duration();
            let renewed = tokio::time::timeout(
                lease / 3,
                self.store.renew(&self.queue, self.holder(), &claims),
            )
            .await;
            let held_since = Instant::now();
            let gone: HashSet<Claim> = match renewed {
                Ok(Ok(gone)) => gone.into_iter().collect(),
                // Unknown: the completion below is fenced by the store either way.
                _ => HashSet::new(),
            };
            let letters: Vec<DeadLetter> = terminal
                .iter()
                .filter(|&&i| !gone.contains(&Claim::of(&messages[i])))
                .filter_map(|&i| match &plan[i] {
                    Settlement::Finish {
                        error, exhausted, ..
                    } => Some(self.runner.dead_letter(
                        messages[i].clone(),
                        error.clone(),
                        *exhausted,
                        None,
                    )),
                    _ => None,
                })
                .collect();
            let count = letters.len();
            // The sink must finish while the lease still holds; a sink still writing then is
            // given up on, and the messages retried (their completion then still applies).
            let budget = (lease * 2 / 3).saturating_sub(held_since.elapsed());
            let stored = match tokio::time::timeout(budget, sink.dead_letter(letters)).await {
                Ok(stored) => stored,
                Err(_) => Err(format!(
                    "the dead-letter store did not answer within {budget:?}, before the lease could lapse"
                )
                .into()),
            };
            match stored {
                Ok(()) => dead_lettered = true,
                Err(source) => {
                    let err = Error::DeadLetter { count, source };
                    tracing::error!(queue = %self.queue, error = %ErrorChain::from_error(&err),
                        "mq: dead-letter store failed; the messages will be delivered again later");
                    let why = ErrorChain::msg("dead-letter store unavailable");
                    for &i in &terminal {
                        plan[i] = Settlement::Retry {
                            delay: policy.delay_for(&messages[i]),
                            error: Some(why.clone()),
                        };
                    }
                }
            }
        }
        let completions: Vec<Completion> = messages
            .iter()
            .zip(&plan)
            .zip(&released)
            .map(|((m, p), &released)| {
                let action = if released {
                    CompletionAction::Release
                } else {
                    action_of(p, now, dead_lettered)
                };
                Completion::new(Claim::of(m), action)
            })
            .collect();
        let rejected: HashSet<Claim> = self.complete_with_retries(completions).await?;
        let completed_in_tx = self.completed_in_tx(&rejected, by_handler).await;
        let lost = rejected.len() - completed_in_tx.len();
        report.lease_lost = lost;
        if lost > 0 {
            tracing::warn!(queue = %self.queue, consumer = %self.consumer_id, lost,
                "mq: completions refused: the lease expired and another consumer may hold these messages");
        }
        for (m, settled) in messages.iter().zip(&plan) {
            if !rejected.is_empty() && rejected.contains(&Claim::of(m)) {
                if completed_in_tx.contains(&Claim::of(m)) {
                    report.acked += 1;
                    self.runner
                        .emit_settled(m, &Settlement::Ack, handler_duration, false);
                }
                continue;
            }
            match settled {
                Settlement::Ack => report.acked += 1,
                Settlement::Retry { .. } => report.retried += 1,
                Settlement::Finish { .. } => {
                    report.failed += 1;
                    if dead_lettered {
                        report.dead_lettered += 1;
                    }
                }
            }
            self.runner
                .emit_settled(m, settled, handler_duration, dead_lettered);
        }
        Ok(())
    }

    /// Of the `rejected` claims, those the handler marked completed whose own transaction did
    /// complete them.
    async fn completed_in_tx(
        &self,
        rejected: &HashSet<Claim>,
        by_handler: &HashSet<MessageId>,
    ) -> HashSet<Claim> {
        let marked: Vec<Claim> = rejected
            .iter()
            .filter(|c| by_handler.contains(&c.id))
            .cloned()
            .collect();
        self.confirmed_completed(marked).await.into_iter().collect()
    }

    /// Writes completions, retrying a failing store a few times: giving up loses every outcome
    /// of the batch, which then runs again after its lease.
    async fn complete_with_retries(&self, completions: Vec<Completion>) -> Result<HashSet<Claim>> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self
                .store
                .complete(&self.queue, &self.consumer_id, completions.clone())
                .await
            {
                Ok(rejected) => return Ok(rejected.into_iter().collect()),
                Err(e) if attempt < 4 => {
                    tracing::warn!(queue = %self.queue, consumer = %self.consumer_id, error = %ErrorChain::from_error(&e), attempt,
                        "mq: writing outcomes failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The store write for one settled message. A terminal message whose dead letter was stored
/// is marked dead-lettered, so the queue's numbers say where it went.
fn action_of(
    settled: &Settlement,
    now: chrono::DateTime<Utc>,
    dead_lettered: bool,
) -> CompletionAction {
    match settled {
        Settlement::Ack => CompletionAction::Ack,
        Settlement::Retry { delay, error } => CompletionAction::Retry {
            execute_at: later_by(now, *delay),
            error: error.clone(),
        },
        Settlement::Finish { status, error, .. } => CompletionAction::Finish {
            status: if dead_lettered {
                Status::DeadLettered
            } else {
                *status
            },
            error: error.clone(),
        },
    }
}
