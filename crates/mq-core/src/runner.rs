//! [`HandlerRunner`]: runs a handler over one batch the same way on every backend: the context
//! and its deadline, the batch's tracing span, cancellation, panic capture, the retry policy's
//! verdict and the lifecycle events.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dead_letter::{DeadLetter, DeadLetterOrigin, ErrorChain};
use crate::handler::{Batch, CompletedMarks, Handler, HandlerContext, Outcome, Outcomes};
use crate::lifecycle::{LifecycleDispatcher, LifecycleEvent, MessageInfo};
use crate::message::{Message, MessageId, Status};
use crate::options::{CommonOptions, ConsumerOptions};
use crate::queue_name::QueueName;
use crate::retry::RetryPolicy;

/// Runs one consumer's handler, batch after batch.
///
/// Every backend hands its batches to a runner, so a handler sees the same context, deadline,
/// span and cancellation everywhere, and observers see the same events:
///
/// - [`run`](HandlerRunner::run) builds the [`HandlerContext`], runs the handler inside the
///   batch's `mq.batch` span, cancels its token at the timeout, when the consumer aborts or when
///   the lease is lost, turns a panic into a retry of the batch (and logs it), and always waits
///   for the handler to return: a batch is never handled twice at once;
/// - [`settle`](HandlerRunner::settle) applies the retry policy to one outcome;
/// - [`emit_consumed`](HandlerRunner::emit_consumed) and
///   [`emit_settled`](HandlerRunner::emit_settled) send the lifecycle events.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use mq_core::backend::{HandlerRunner, Settlement};
/// use mq_core::{handler_fn, Batch, HandlerContext, LifecycleDispatcher, Message, MessageId, QueueName, RetryPolicy};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> mq_core::Result<()> {
/// let queue = QueueName::new("emails")?;
/// let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async { Ok::<(), std::io::Error>(()) }));
/// let runner = HandlerRunner::new(handler, "custom", queue.clone(), "worker-1", Duration::from_secs(5),
///     LifecycleDispatcher::none());
/// let mut m = Message::new(MessageId::new("m1")?, queue, "welcome", serde_json::json!({}), chrono::Utc::now());
/// m.attempts = 1;
/// let run = runner.run(Batch::from(vec![m.clone()]), &CancellationToken::new(), None).await;
/// let settled = runner.settle(&m, &run.outcome_of(&m.id), &RetryPolicy::default());
/// assert!(matches!(settled, Settlement::Ack));
/// # Ok(())
/// # }
/// ```
pub struct HandlerRunner {
    handler: Arc<dyn Handler>,
    lifecycle: LifecycleDispatcher,
    backend: &'static str,
    queue: QueueName,
    consumer_id: String,
    shard: Option<String>,
    timeout: Duration,
    cancel_grace: Option<Duration>,
}

impl fmt::Debug for HandlerRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerRunner")
            .field("backend", &self.backend)
            .field("queue", &self.queue)
            .field("consumer_id", &self.consumer_id)
            .field("shard", &self.shard)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What one run of the handler returned.
#[derive(Debug)]
#[non_exhaustive]
pub struct HandlerRun {
    /// The handler's outcomes (a panic is a retry of every message).
    pub outcomes: Outcomes,
    /// The handler ran past its timeout (its token was cancelled then).
    pub timed_out: bool,
    /// The consumer aborted it (shutdown past the grace period).
    pub aborted: bool,
    /// The lease was lost while it ran.
    pub lease_lost: bool,
    /// The handler panicked.
    pub panicked: bool,
    /// The handler did not return within the cancel grace after its token was cancelled, and
    /// was dropped: none of its outcomes are known, so every message is retried.
    pub abandoned: bool,
    /// How long it ran.
    pub took: Duration,
    /// The messages the handler completed itself, in its own transaction
    /// ([`HandlerContext::mark_completed`]): when their completion is refused because they
    /// are completed already, they count as acknowledged, not as lost leases.
    pub completed_by_handler: HashSet<MessageId>,
    timeout: Duration,
    cancel_grace: Option<Duration>,
}

impl HandlerRun {
    /// True when the handler's token was cancelled while it ran (timeout, abort or lost lease).
    pub fn cancelled(&self) -> bool {
        self.timed_out || self.aborted || self.lease_lost
    }

    /// The outcome of message `id`. After a cancellation, whatever the handler finished (acked,
    /// failed) stays as it said, and every retry carries why the handler was stopped.
    pub fn outcome_of(&self, id: &MessageId) -> Outcome {
        if self.abandoned {
            return Outcome::Retry {
                after: None,
                error: Some(self.stop_reason()),
            };
        }
        let outcome = self.outcomes.get(id);
        if !self.cancelled() || !matches!(outcome, Outcome::Retry { .. }) {
            return outcome.clone();
        }
        let after = match outcome {
            Outcome::Retry { after, .. } => *after,
            _ => None,
        };
        Outcome::Retry {
            after,
            error: Some(self.stop_reason()),
        }
    }

    /// Why the handler was stopped, for the messages it did not finish.
    pub fn stop_reason(&self) -> ErrorChain {
        let why = if self.timed_out {
            format!("handler timed out after {:?}", self.timeout)
        } else if self.lease_lost {
            "handler cancelled: the lease was lost".to_owned()
        } else {
            "handler cancelled by shutdown".to_owned()
        };
        match (self.abandoned, self.cancel_grace) {
            (true, Some(grace)) => ErrorChain::msg(format!(
                "{why}; it did not return within {grace:?} and was dropped"
            )),
            _ => ErrorChain::msg(why),
        }
    }
}

/// What the runtime does with one message once its outcome is known.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Settlement {
    /// Done.
    Ack,
    /// Deliver again after `delay`.
    Retry {
        /// The delay before the next delivery.
        delay: Duration,
        /// The handler's error, if it gave one.
        error: Option<ErrorChain>,
    },
    /// Never delivered again: marked `status` ([`Status::Failed`] or
    /// [`Status::DeadLettered`]) and handed to the dead-letter hook.
    Finish {
        /// The terminal status.
        status: Status,
        /// Why.
        error: ErrorChain,
        /// True when the message ran out of attempts (rather than being failed outright).
        exhausted: bool,
    },
}

impl HandlerRunner {
    /// A runner of `handler` for consumer `consumer_id` of `queue` on `backend`, cancelling the
    /// handler's token after `timeout`, emitting events through `lifecycle`.
    pub fn new(
        handler: Arc<dyn Handler>,
        backend: &'static str,
        queue: QueueName,
        consumer_id: impl Into<String>,
        timeout: Duration,
        lifecycle: LifecycleDispatcher,
    ) -> Self {
        HandlerRunner {
            handler,
            lifecycle,
            backend,
            queue,
            consumer_id: consumer_id.into(),
            shard: None,
            timeout,
            cancel_grace: None,
        }
    }

    /// The runner of a consumer started with `options` on a queue built with `common`: the
    /// handler timeout and cancel grace come from `options`, the observers from `common`.
    pub fn for_consumer(
        handler: Arc<dyn Handler>,
        backend: &'static str,
        queue: QueueName,
        consumer_id: impl Into<String>,
        options: &ConsumerOptions,
        common: &CommonOptions,
    ) -> Self {
        let timeout = options.get_handler_timeout();
        HandlerRunner::new(
            handler,
            backend,
            queue,
            consumer_id,
            timeout,
            common.get_lifecycle().clone(),
        )
        .cancel_grace(Some(options.get_cancel_grace()))
    }

    /// Drop the handler when it has not returned `grace` after its token was cancelled
    /// (timeout, abort, lost lease), instead of waiting for it: its slot is freed and its
    /// messages retried. `None` (the default) waits for it however long it takes.
    ///
    /// A handler blocking its thread cannot be dropped; the runner then logs a warning naming
    /// its messages once it is `grace` plus one second past its timeout.
    pub fn cancel_grace(mut self, grace: Option<Duration>) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// The Kinesis shard the batches come from (shown in the context, the span and dead letters).
    pub fn shard(mut self, shard: impl Into<String>) -> Self {
        self.shard = Some(shard.into());
        self
    }

    /// The consumer id.
    pub fn consumer_id(&self) -> &str {
        &self.consumer_id
    }

    /// The backend name.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The handler's timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The lifecycle dispatcher the runner emits through.
    pub fn lifecycle(&self) -> &LifecycleDispatcher {
        &self.lifecycle
    }

    /// Runs the handler on `batch` and waits for it to return.
    ///
    /// Its token is cancelled at the timeout, when `abort` is cancelled (shutdown past the grace
    /// period) and when `lost` is (the caller's lease renewal gave up). With a
    /// [`cancel_grace`](HandlerRunner::cancel_grace), a handler that has not returned that long
    /// after its cancellation is dropped (it stops at its next `.await`, so it can never run
    /// beside a second delivery of its batch); without one, it is awaited however long it takes
    /// while the caller keeps its lease.
    pub async fn run(
        &self,
        batch: Batch,
        abort: &CancellationToken,
        lost: Option<&CancellationToken>,
    ) -> HandlerRun {
        self.run_marked(batch, abort, lost, CompletedMarks::default())
            .await
    }

    /// [`run`](Self::run), with the handler's completion marks landing in `marks`, which the
    /// caller's lease renewal reads while the handler runs.
    pub(crate) async fn run_marked(
        &self,
        batch: Batch,
        abort: &CancellationToken,
        lost: Option<&CancellationToken>,
        marks: CompletedMarks,
    ) -> HandlerRun {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let token = abort.child_token();
        let ctx = HandlerContext::with_marks(
            self.queue.clone(),
            self.consumer_id.clone(),
            self.shard.clone(),
            token.clone(),
            Some(deadline),
            marks,
        );
        let span = batch.tracing_span(self.backend, self.shard.as_deref());
        let ids = ids_of(&batch);
        let marks = ctx.clone();
        let fut = std::panic::AssertUnwindSafe(tracing::Instrument::instrument(
            self.handler.handle(batch, ctx),
            span,
        ))
        .catch_unwind();
        tokio::pin!(fut);
        let never = CancellationToken::new();
        let lost = lost.unwrap_or(&never);
        let _watchdog = self.watch_for_blocking(deadline, &ids);
        let mut timed_out = false;
        let mut lease_lost = false;
        let mut cancelled_at: Option<Instant> = None;
        let result = loop {
            let drop_at = cancelled_at.zip(self.cancel_grace).map(|(at, g)| at + g);
            tokio::select! {
                r = &mut fut => break Some(r),
                () = tokio::time::sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    tracing::warn!(backend = self.backend, queue = %self.queue, consumer = %self.consumer_id,
                        shard = self.shard.as_deref().unwrap_or_default(), timeout = ?self.timeout,
                        "mq: handler timed out; cancelling its token");
                    token.cancel();
                }
                () = lost.cancelled(), if !lease_lost => {
                    lease_lost = true;
                    token.cancel();
                }
                () = token.cancelled(), if cancelled_at.is_none() => {
                    cancelled_at = Some(Instant::now());
                }
                () = tokio::time::sleep_until(drop_at.unwrap_or(deadline)), if drop_at.is_some() => {
                    tracing::warn!(backend = self.backend, queue = %self.queue, consumer = %self.consumer_id,
                        shard = self.shard.as_deref().unwrap_or_default(), message_ids = %ids,
                        grace = ?self.cancel_grace.unwrap_or_default(),
                        "mq: handler did not return after its cancellation; dropping it and retrying its messages");
                    break None;
                }
            }
        };
        let took = started.elapsed();
        let abandoned = result.is_none();
        let (outcomes, panicked) = match result {
            None => (Outcomes::all(Outcome::retry()), false),
            Some(Ok(outcomes)) => (outcomes, false),
            Some(Err(panic)) => {
                let text = panic_text(&*panic);
                tracing::warn!(backend = self.backend, queue = %self.queue, consumer = %self.consumer_id,
                    shard = self.shard.as_deref().unwrap_or_default(), message_ids = %ids, panic = %text,
                    "mq: handler panicked; the batch will be retried");
                (
                    Outcomes::retry_all(ErrorChain::msg(format!("handler panicked: {text}"))),
                    true,
                )
            }
        };
        HandlerRun {
            outcomes,
            timed_out,
            aborted: abort.is_cancelled() && !timed_out,
            lease_lost,
            panicked,
            abandoned,
            took,
            completed_by_handler: marks.completed(),
            timeout: self.timeout,
            cancel_grace: self.cancel_grace,
        }
    }

    /// With a cancel grace, a task that warns when the handler is still running a second after
    /// it should have been dropped: only a handler blocking its thread can cause that, since the
    /// run itself could not get to drop it. The task ends with the returned guard.
    fn watch_for_blocking(&self, deadline: Instant, ids: &str) -> Option<AbortOnDrop> {
        let grace = self.cancel_grace?;
        let at = deadline + grace + Duration::from_secs(1);
        let (backend, queue, consumer) =
            (self.backend, self.queue.clone(), self.consumer_id.clone());
        let ids = ids.to_owned();
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            tracing::warn!(backend, queue = %queue, consumer = %consumer, message_ids = %ids,
                "mq: handler blocks its thread past its timeout; it cannot be cancelled or dropped \
                 (run blocking work with spawn_blocking)");
        });
        Some(AbortOnDrop(task))
    }

    /// What to do with `message` (whose `attempts` counts the delivery just made) after
    /// `outcome`, under `policy`: a retry past the allowed attempts fails the message
    /// (exhausted).
    pub fn settle(&self, message: &Message, outcome: &Outcome, policy: &RetryPolicy) -> Settlement {
        match outcome {
            Outcome::Ack => Settlement::Ack,
            Outcome::Retry { after, error } => {
                if policy.is_exhausted(message) {
                    let allowed = policy.attempts_allowed(message);
                    Settlement::Finish {
                        status: Status::Failed,
                        error: error.clone().unwrap_or_else(|| {
                            ErrorChain::msg(format!(
                                "attempts exhausted after {allowed} deliveries"
                            ))
                        }),
                        exhausted: true,
                    }
                } else {
                    Settlement::Retry {
                        delay: after.unwrap_or_else(|| policy.delay_for(message)),
                        error: error.clone(),
                    }
                }
            }
            Outcome::Fail { error } => Settlement::Finish {
                status: Status::Failed,
                error: error.clone(),
                exhausted: false,
            },
            Outcome::DeadLetter { error } => Settlement::Finish {
                status: Status::DeadLettered,
                error: error.clone(),
                exhausted: false,
            },
        }
    }

    /// The dead letter of `message` failed for `error`, from this runner's backend and shard
    /// (`sequence_number` for a Kinesis record).
    pub fn dead_letter(
        &self,
        message: Message,
        error: ErrorChain,
        exhausted: bool,
        sequence_number: Option<&str>,
    ) -> DeadLetter {
        let origin = match (&self.shard, sequence_number) {
            (Some(shard), Some(seq)) => DeadLetterOrigin::shard(self.backend, shard.clone(), seq),
            _ => DeadLetterOrigin::backend(self.backend),
        };
        DeadLetter::new(message, origin, error, exhausted, self.consumer_id.clone())
    }

    fn info(&self, message: &Message) -> MessageInfo {
        MessageInfo::of(message, self.backend).on_shard(self.shard.as_deref())
    }

    /// Emits `Consumed` for each message about to be handed to the handler.
    pub fn emit_consumed(&self, messages: &[Message]) {
        if !self.lifecycle.is_active() {
            return;
        }
        let now = Utc::now();
        for m in messages {
            let age = (now - m.created_at).to_std().unwrap_or_default();
            self.lifecycle.emit(LifecycleEvent::Consumed {
                message: self.info(m),
                consumer_id: self.consumer_id.clone(),
                age,
            });
        }
    }

    /// Emits what `settlement` did to `message`: `Acked` (with the handler's `took`),
    /// `Retried`, or `Failed` and, when the dead-letter hook took it (`dead_lettered`),
    /// `DeadLettered`.
    pub fn emit_settled(
        &self,
        message: &Message,
        settlement: &Settlement,
        took: Duration,
        dead_lettered: bool,
    ) {
        let lc = &self.lifecycle;
        match settlement {
            Settlement::Ack => lc.emit_with(|| LifecycleEvent::Acked {
                message: self.info(message),
                consumer_id: self.consumer_id.clone(),
                handler_duration: took,
            }),
            Settlement::Retry { delay, error } => lc.emit_with(|| LifecycleEvent::Retried {
                message: self.info(message),
                consumer_id: self.consumer_id.clone(),
                delay: *delay,
                error: error.clone(),
            }),
            Settlement::Finish {
                status,
                error,
                exhausted,
            } => {
                if *status == Status::Failed {
                    lc.emit_with(|| LifecycleEvent::Failed {
                        message: self.info(message),
                        consumer_id: self.consumer_id.clone(),
                        error: error.clone(),
                        exhausted: *exhausted,
                    });
                }
                if dead_lettered {
                    lc.emit_with(|| LifecycleEvent::DeadLettered {
                        message: self.info(message),
                        consumer_id: self.consumer_id.clone(),
                        error: error.clone(),
                    });
                }
            }
        }
    }
}

/// Aborts a watchdog task when the run it watches ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The ids of a batch for a log line: the first 20, comma-separated.
fn ids_of(batch: &Batch) -> String {
    let mut ids: Vec<&str> = batch.iter().take(20).map(|m| m.id.as_str()).collect();
    if batch.len() > 20 {
        ids.push("...");
    }
    ids.join(",")
}

/// The text a panic carried.
fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::handler_fn;

    fn message(id: &str, attempts: u32) -> Message {
        let mut m = Message::new(
            MessageId::new(id).unwrap(),
            QueueName::new("q").unwrap(),
            "t",
            serde_json::Value::Null,
            Utc::now(),
        );
        m.attempts = attempts;
        m
    }

    fn runner(handler: Arc<dyn Handler>, timeout: Duration) -> HandlerRunner {
        HandlerRunner::new(
            handler,
            "test",
            QueueName::new("q").unwrap(),
            "w",
            timeout,
            LifecycleDispatcher::none(),
        )
    }

    #[tokio::test]
    async fn a_panic_retries_the_batch_with_its_text() {
        let h = Arc::new(handler_fn(|b: Batch, _c: HandlerContext| async move {
            if !b.is_empty() {
                panic!("boom");
            }
        }));
        let run = runner(h, Duration::from_secs(5))
            .run(
                Batch::from(vec![message("a", 1)]),
                &CancellationToken::new(),
                None,
            )
            .await;
        assert!(run.panicked);
        let Outcome::Retry {
            error: Some(error), ..
        } = run.outcome_of(&MessageId::new("a").unwrap())
        else {
            panic!("expected a retry");
        };
        assert_eq!(error.to_string(), "handler panicked: boom");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_cancels_the_token_and_keeps_finished_work() {
        let h = Arc::new(handler_fn(|b: Batch, c: HandlerContext| async move {
            c.cancelled().await;
            Outcomes::all(Outcome::retry()).set(b[0].id.clone(), Outcome::Ack)
        }));
        let batch = Batch::from(vec![message("a", 1), message("b", 1)]);
        let run = runner(h, Duration::from_secs(2))
            .run(batch, &CancellationToken::new(), None)
            .await;
        assert!(run.timed_out && run.cancelled() && !run.aborted);
        assert_eq!(run.outcome_of(&MessageId::new("a").unwrap()), Outcome::Ack);
        let Outcome::Retry { error: Some(e), .. } = run.outcome_of(&MessageId::new("b").unwrap())
        else {
            panic!("expected a retry");
        };
        assert!(e.to_string().contains("timed out"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_ignoring_its_token_is_dropped_after_the_grace() {
        let h = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async move {
            std::future::pending::<()>().await;
        }));
        let started = Instant::now();
        let run = runner(h, Duration::from_secs(2))
            .cancel_grace(Some(Duration::from_millis(500)))
            .run(
                Batch::from(vec![message("a", 1)]),
                &CancellationToken::new(),
                None,
            )
            .await;
        assert!(run.abandoned && run.timed_out);
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
        let Outcome::Retry { error: Some(e), .. } = run.outcome_of(&MessageId::new("a").unwrap())
        else {
            panic!("expected a retry");
        };
        assert!(e.to_string().contains("was dropped"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_drops_a_hung_handler_after_the_grace() {
        let h = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async move {
            std::future::pending::<()>().await;
        }));
        let abort = CancellationToken::new();
        let aborter = abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            aborter.cancel();
        });
        let started = Instant::now();
        let run = runner(h, Duration::from_secs(60))
            .cancel_grace(Some(Duration::from_millis(300)))
            .run(Batch::from(vec![message("a", 1)]), &abort, None)
            .await;
        assert!(run.abandoned && run.aborted && !run.timed_out);
        assert_eq!(started.elapsed(), Duration::from_millis(1300));
    }

    #[tokio::test]
    async fn a_lost_lease_cancels_the_handler() {
        let h = Arc::new(handler_fn(|_b: Batch, c: HandlerContext| async move {
            c.cancelled().await;
            Err::<(), _>(std::io::Error::other("stopped"))
        }));
        let lost = CancellationToken::new();
        lost.cancel();
        let run = runner(h, Duration::from_secs(60))
            .run(
                Batch::from(vec![message("a", 1)]),
                &CancellationToken::new(),
                Some(&lost),
            )
            .await;
        assert!(run.lease_lost && !run.timed_out);
        assert!(run.stop_reason().to_string().contains("lease"));
    }

    #[tokio::test]
    async fn marks_of_the_handler_reach_the_run() {
        let h = Arc::new(handler_fn(|b: Batch, c: HandlerContext| async move {
            c.mark_completed(b[1].id.clone());
            Err::<(), _>(std::io::Error::other("after the commit"))
        }));
        let run = runner(h, Duration::from_secs(5))
            .run(
                Batch::from(vec![message("a", 1), message("b", 1)]),
                &CancellationToken::new(),
                None,
            )
            .await;
        let marked: Vec<&str> = run
            .completed_by_handler
            .iter()
            .map(MessageId::as_str)
            .collect();
        assert_eq!(marked, ["b"]);
    }

    #[test]
    fn settle_applies_the_policy() {
        let h = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
        let r = runner(h, Duration::from_secs(1));
        let policy = RetryPolicy::default().max_attempts(2);
        assert!(matches!(
            r.settle(&message("a", 1), &Outcome::retry(), &policy),
            Settlement::Retry { .. }
        ));
        assert!(matches!(
            r.settle(&message("a", 2), &Outcome::retry(), &policy),
            Settlement::Finish {
                status: Status::Failed,
                exhausted: true,
                ..
            }
        ));
        assert!(matches!(
            r.settle(&message("a", 1), &Outcome::dead_letter("x"), &policy),
            Settlement::Finish {
                status: Status::DeadLettered,
                exhausted: false,
                ..
            }
        ));
    }
}
