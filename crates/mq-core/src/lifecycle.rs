//! Lifecycle events, the observer trait, and the dispatcher that delivers events to observers.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::Duration;

use crate::dead_letter::ErrorChain;
use crate::error::BoxError;
use crate::message::{Message, MessageId};
use crate::queue_name::QueueName;

/// Identifies the message an event is about.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MessageInfo {
    /// The (resolved) queue.
    pub queue: QueueName,
    /// The backend (`"memory"`, `"sql"`, ...).
    pub backend: &'static str,
    /// The message id.
    pub message_id: MessageId,
    /// The message type.
    pub message_type: String,
    /// Deliveries started so far.
    pub attempts: u32,
    /// The Kinesis shard the message was read from.
    pub shard_id: Option<String>,
}

impl MessageInfo {
    /// The info of `message` on `backend`.
    pub fn of(message: &Message, backend: &'static str) -> Self {
        MessageInfo {
            queue: message.queue.clone(),
            backend,
            message_id: message.id.clone(),
            message_type: message.message_type.clone(),
            attempts: message.attempts,
            shard_id: None,
        }
    }

    /// The same info, read from Kinesis shard `shard`.
    pub fn on_shard(mut self, shard: Option<&str>) -> Self {
        self.shard_id = shard.map(str::to_owned);
        self
    }
}

/// What kind of consumer an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerKind {
    /// A queue consumer (polling or immediate).
    Worker,
    /// A Kinesis shard consumer.
    Shard,
}

/// Identifies a consumer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// The consumer id.
    pub consumer_id: String,
    /// Worker or shard.
    pub kind: ConsumerKind,
    /// The (resolved) queue.
    pub queue: QueueName,
    /// The backend.
    pub backend: &'static str,
    /// The Kinesis shard.
    pub shard_id: Option<String>,
    /// The worker a shard consumer belongs to.
    pub parent_consumer_id: Option<String>,
}

impl ConsumerInfo {
    /// A Kinesis shard consumer of worker `parent` (consumer id `<parent>:<shard>`).
    pub fn shard(
        parent: impl Into<String>,
        queue: QueueName,
        backend: &'static str,
        shard_id: impl Into<String>,
    ) -> Self {
        let parent = parent.into();
        let shard_id = shard_id.into();
        ConsumerInfo {
            consumer_id: format!("{parent}:{shard_id}"),
            kind: ConsumerKind::Shard,
            queue,
            backend,
            shard_id: Some(shard_id),
            parent_consumer_id: Some(parent),
        }
    }

    /// A worker consumer.
    pub fn worker(consumer_id: impl Into<String>, queue: QueueName, backend: &'static str) -> Self {
        ConsumerInfo {
            consumer_id: consumer_id.into(),
            kind: ConsumerKind::Worker,
            queue,
            backend,
            shard_id: None,
            parent_consumer_id: None,
        }
    }
}

/// Why a consumer stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The queue shut down.
    Shutdown,
    /// Its handle was stopped.
    Stopped,
    /// The shard was assigned to another instance.
    Rebalance,
    /// An error ended it.
    Error(String),
}

/// Everything that happens to messages and consumers.
///
/// New variants may be added (Kinesis lease and shard events among them); match with a wildcard.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// A message was stored.
    Published {
        /// The message.
        message: MessageInfo,
        /// Its serialized size.
        size_bytes: usize,
    },
    /// A message is about to be handed to a handler.
    Consumed {
        /// The message.
        message: MessageInfo,
        /// The consumer.
        consumer_id: String,
        /// Time since it was published.
        age: Duration,
    },
    /// A handler acknowledged a message.
    Acked {
        /// The message.
        message: MessageInfo,
        /// The consumer.
        consumer_id: String,
        /// How long the batch's handler ran.
        handler_duration: Duration,
    },
    /// A message will be delivered again after `delay`.
    Retried {
        /// The message.
        message: MessageInfo,
        /// The consumer.
        consumer_id: String,
        /// Delay before the next delivery.
        delay: Duration,
        /// The handler's error, if any.
        error: Option<ErrorChain>,
    },
    /// A message failed for good.
    Failed {
        /// The message.
        message: MessageInfo,
        /// The consumer.
        consumer_id: String,
        /// Why.
        error: ErrorChain,
        /// True when attempts ran out.
        exhausted: bool,
    },
    /// A message was accepted by the dead-letter hook.
    DeadLettered {
        /// The message.
        message: MessageInfo,
        /// The consumer.
        consumer_id: String,
        /// Why.
        error: ErrorChain,
    },
    /// A message passed `expires_at` before delivery.
    Expired {
        /// The message.
        message: MessageInfo,
    },
    /// A consumer started.
    ConsumerConnected {
        /// The consumer.
        consumer: ConsumerInfo,
    },
    /// A consumer stopped.
    ConsumerDisconnected {
        /// The consumer.
        consumer: ConsumerInfo,
        /// Why.
        reason: DisconnectReason,
    },
    /// A consumer recorded its position (Kinesis).
    Checkpoint {
        /// The consumer.
        consumer: ConsumerInfo,
        /// The sequence number.
        checkpoint: String,
        /// Records handled since the previous checkpoint.
        records_since_last: u64,
    },
    /// A batch kept failing from the same checkpoint and was handed to the dead-letter hook
    /// (Kinesis); the shard moves on.
    PoisonPill {
        /// The shard consumer.
        consumer: ConsumerInfo,
        /// The checkpoint the batch kept failing from.
        checkpoint: String,
        /// Failures counted from that checkpoint (across restarts and instances).
        failures: u32,
        /// Records skipped (handed to the dead-letter hook).
        records: usize,
    },
    /// An instance's membership heartbeat failed `consecutive_failures` times in a row.
    HeartbeatFailure {
        /// The stream (or queue).
        queue: QueueName,
        /// The instance whose heartbeat fails.
        instance_id: String,
        /// Failures in a row.
        consecutive_failures: u32,
        /// The last error.
        error: ErrorChain,
    },
    /// A shard lease was lost (taken over, expired, or not renewable): processing stopped.
    LeaseLost {
        /// The shard consumer.
        consumer: ConsumerInfo,
        /// The fencing epoch the consumer held.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// A shard consumer read a batch of records (Kinesis), with how far it is behind the tip.
    RecordsFetched {
        /// The shard consumer.
        consumer: ConsumerInfo,
        /// Records in the batch (0 for an empty read).
        records: usize,
        /// How far behind the newest record of the shard the consumer is, when the service
        /// said (`MillisBehindLatest`).
        millis_behind_latest: Option<u64>,
    },
    /// The shard assignment of an instance changed.
    Rebalance {
        /// The stream (or queue).
        queue: QueueName,
        /// The instance.
        instance_id: String,
        /// Shards it started owning.
        acquired: Vec<String>,
        /// Shards it gave up.
        released: Vec<String>,
    },
}

impl LifecycleEvent {
    /// A short name (`"published"`, `"consumer_disconnected"`, ...), for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            LifecycleEvent::Published { .. } => "published",
            LifecycleEvent::Consumed { .. } => "consumed",
            LifecycleEvent::Acked { .. } => "acked",
            LifecycleEvent::Retried { .. } => "retried",
            LifecycleEvent::Failed { .. } => "failed",
            LifecycleEvent::DeadLettered { .. } => "dead_lettered",
            LifecycleEvent::Expired { .. } => "expired",
            LifecycleEvent::ConsumerConnected { .. } => "consumer_connected",
            LifecycleEvent::ConsumerDisconnected { .. } => "consumer_disconnected",
            LifecycleEvent::Checkpoint { .. } => "checkpoint",
            LifecycleEvent::PoisonPill { .. } => "poison_pill",
            LifecycleEvent::HeartbeatFailure { .. } => "heartbeat_failure",
            LifecycleEvent::LeaseLost { .. } => "lease_lost",
            LifecycleEvent::RecordsFetched { .. } => "records_fetched",
            LifecycleEvent::Rebalance { .. } => "rebalance",
        }
    }
}

/// Watches lifecycle events. Every method has a no-op default; implement the ones you need.
///
/// Methods run on the dispatcher's thread (async mode) or inline (sync mode): keep them short.
/// An error or a panic is reported to the dispatcher's error callback and never reaches the queue.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use mq_core::{LifecycleEvent, LifecycleObserver, ObserverError};
///
/// #[derive(Debug, Default)]
/// struct CountAcks(AtomicU64);
///
/// impl LifecycleObserver for CountAcks {
///     fn on_event(&self, event: &LifecycleEvent) -> Result<(), ObserverError> {
///         if let LifecycleEvent::Acked { .. } = event {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait LifecycleObserver: Send + Sync + fmt::Debug + 'static {
    /// Called for every event. The default routes to the per-kind methods below.
    fn on_event(&self, event: &LifecycleEvent) -> Result<(), ObserverError> {
        match event {
            LifecycleEvent::Published { .. } => self.on_published(event),
            LifecycleEvent::Consumed { .. } => self.on_consumed(event),
            LifecycleEvent::Acked { .. } => self.on_acked(event),
            LifecycleEvent::Retried { .. } => self.on_retried(event),
            LifecycleEvent::Failed { .. } => self.on_failed(event),
            LifecycleEvent::DeadLettered { .. } => self.on_dead_lettered(event),
            LifecycleEvent::Expired { .. } => self.on_expired(event),
            LifecycleEvent::ConsumerConnected { .. } => self.on_consumer_connected(event),
            LifecycleEvent::ConsumerDisconnected { .. } => self.on_consumer_disconnected(event),
            LifecycleEvent::Checkpoint { .. } => self.on_checkpoint(event),
            LifecycleEvent::PoisonPill { .. } => self.on_poison_pill(event),
            LifecycleEvent::HeartbeatFailure { .. } => self.on_heartbeat_failure(event),
            LifecycleEvent::LeaseLost { .. } => self.on_lease_lost(event),
            LifecycleEvent::RecordsFetched { .. } => self.on_records_fetched(event),
            LifecycleEvent::Rebalance { .. } => self.on_rebalance(event),
        }
    }
    /// A message was stored.
    fn on_published(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A message is about to be handled.
    fn on_consumed(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A message was acknowledged.
    fn on_acked(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A message will be retried.
    fn on_retried(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A message failed for good.
    fn on_failed(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A message went to the dead-letter hook.
    fn on_dead_lettered(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A message expired.
    fn on_expired(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A consumer started.
    fn on_consumer_connected(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A consumer stopped.
    fn on_consumer_disconnected(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A checkpoint was written.
    fn on_checkpoint(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A poison-pill batch was skipped.
    fn on_poison_pill(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// Heartbeats keep failing.
    fn on_heartbeat_failure(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A shard lease was lost.
    fn on_lease_lost(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A shard consumer read a batch.
    fn on_records_fetched(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
    /// The shard assignment changed.
    fn on_rebalance(&self, _event: &LifecycleEvent) -> Result<(), ObserverError> {
        Ok(())
    }
}

/// The error an observer returns.
pub type ObserverError = BoxError;

/// An observer that failed, as given to the dispatcher's error callback.
#[derive(Debug)]
#[non_exhaustive]
pub enum ObserverFailure<'a> {
    /// The observer returned an error.
    Error {
        /// The event it was given.
        event: &'a LifecycleEvent,
        /// What it returned.
        error: &'a ObserverError,
    },
    /// The observer panicked.
    Panic {
        /// The event it was given.
        event: &'a LifecycleEvent,
        /// The panic message, when it was a string.
        message: String,
    },
    /// The async queue was full and the event was dropped.
    Dropped {
        /// The event.
        event: &'a LifecycleEvent,
    },
}

type ErrorCallback = Arc<dyn Fn(&ObserverFailure<'_>) + Send + Sync>;

/// How events reach observers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DispatchMode {
    /// Observers run inline, before the queue goes on: events are seen in order and at once, and a
    /// slow observer slows the queue.
    Sync,
    /// Observers run on a dedicated thread fed by a bounded channel of `capacity` events; the
    /// queue never waits. When the channel is full the event is dropped and reported to the error
    /// callback.
    Async {
        /// Events buffered before dropping.
        capacity: usize,
    },
}

/// Delivers lifecycle events to observers, in sync or async mode.
///
/// A dispatcher without observers costs one branch per event. Cloning shares it.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use mq_core::{DispatchMode, LifecycleDispatcher, LifecycleEvent, LifecycleObserver, ObserverError};
///
/// #[derive(Debug, Default)]
/// struct Names(Mutex<Vec<&'static str>>);
/// impl LifecycleObserver for Names {
///     fn on_event(&self, e: &LifecycleEvent) -> Result<(), ObserverError> {
///         self.0.lock().unwrap().push(e.name());
///         Ok(())
///     }
/// }
///
/// let names = Arc::new(Names::default());
/// let dispatcher = LifecycleDispatcher::builder()
///     .observer(names.clone())
///     .mode(DispatchMode::Sync)
///     .on_error(|failure| eprintln!("observer failed: {failure:?}"))
///     .build();
/// assert!(dispatcher.is_active());
/// ```
#[derive(Clone, Default)]
pub struct LifecycleDispatcher {
    inner: Option<Arc<DispatcherInner>>,
}

struct DispatcherInner {
    observers: Arc<[Arc<dyn LifecycleObserver>]>,
    on_error: ErrorCallback,
    sender: Option<SyncSender<Command>>,
}

enum Command {
    Event(LifecycleEvent),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl fmt::Debug for LifecycleDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("LifecycleDispatcher(none)"),
            Some(i) => f
                .debug_struct("LifecycleDispatcher")
                .field("observers", &i.observers)
                .field("async", &i.sender.is_some())
                .finish(),
        }
    }
}

/// Builds a [`LifecycleDispatcher`].
#[must_use = "call build() to get the dispatcher"]
pub struct LifecycleDispatcherBuilder {
    observers: Vec<Arc<dyn LifecycleObserver>>,
    mode: DispatchMode,
    on_error: ErrorCallback,
}

impl fmt::Debug for LifecycleDispatcherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleDispatcherBuilder")
            .field("observers", &self.observers)
            .field("mode", &self.mode)
            .finish()
    }
}

impl LifecycleDispatcher {
    /// A dispatcher with no observers.
    pub fn none() -> Self {
        LifecycleDispatcher { inner: None }
    }

    /// Starts a builder: async mode with 65,536 buffered events, errors logged with `tracing`.
    pub fn builder() -> LifecycleDispatcherBuilder {
        LifecycleDispatcherBuilder {
            observers: Vec::new(),
            mode: DispatchMode::Async { capacity: 65_536 },
            on_error: Arc::new(log_failure),
        }
    }

    /// True when at least one observer is attached.
    pub fn is_active(&self) -> bool {
        self.inner.is_some()
    }

    /// Delivers `event`. The closure runs only when an observer is attached, so building the
    /// event costs nothing otherwise.
    pub fn emit_with(&self, event: impl FnOnce() -> LifecycleEvent) {
        if let Some(inner) = &self.inner {
            inner.dispatch(event());
        }
    }

    /// Delivers `event`.
    pub fn emit(&self, event: LifecycleEvent) {
        if let Some(inner) = &self.inner {
            inner.dispatch(event);
        }
    }

    /// Waits until every event emitted before this call has been handled (async mode); returns
    /// at once in sync mode.
    pub async fn flush(&self) {
        let Some(inner) = &self.inner else { return };
        let Some(sender) = &inner.sender else { return };
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A full channel must not block a runtime thread: retry without blocking.
        let mut cmd = Command::Flush(tx);
        loop {
            match sender.try_send(cmd) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    cmd = back;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        let _ = rx.await;
    }
}

impl LifecycleDispatcherBuilder {
    /// Adds an observer.
    pub fn observer(mut self, observer: Arc<dyn LifecycleObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Sets sync or async delivery.
    pub fn mode(mut self, mode: DispatchMode) -> Self {
        self.mode = mode;
        self
    }

    /// Called when an observer fails, panics, or an event is dropped. The default logs a warning
    /// with `tracing`.
    pub fn on_error(mut self, f: impl Fn(&ObserverFailure<'_>) + Send + Sync + 'static) -> Self {
        self.on_error = Arc::new(f);
        self
    }

    /// Builds the dispatcher. In async mode this starts the dispatcher thread, which ends when the
    /// last clone of the dispatcher is dropped.
    pub fn build(self) -> LifecycleDispatcher {
        if self.observers.is_empty() {
            return LifecycleDispatcher::none();
        }
        let observers: Arc<[Arc<dyn LifecycleObserver>]> = self.observers.into();
        let sender = match self.mode {
            DispatchMode::Sync => None,
            DispatchMode::Async { capacity } => {
                let (tx, rx) = mpsc::sync_channel::<Command>(capacity.max(1));
                let obs = observers.clone();
                let on_error = self.on_error.clone();
                let spawned = std::thread::Builder::new()
                    .name("mq-lifecycle".into())
                    .spawn(move || {
                        while let Ok(cmd) = rx.recv() {
                            match cmd {
                                Command::Event(e) => deliver(&obs, &on_error, &e),
                                Command::Flush(done) => {
                                    let _ = done.send(());
                                }
                            }
                        }
                    });
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        // No thread to be had: fall back to inline delivery rather than losing
                        // events.
                        tracing::warn!(error = %e, "mq: cannot start lifecycle thread; observers run inline");
                        None
                    }
                }
            }
        };
        LifecycleDispatcher {
            inner: Some(Arc::new(DispatcherInner {
                observers,
                on_error: self.on_error,
                sender,
            })),
        }
    }
}

impl DispatcherInner {
    fn dispatch(&self, event: LifecycleEvent) {
        match &self.sender {
            None => deliver(&self.observers, &self.on_error, &event),
            Some(tx) => match tx.try_send(Command::Event(event)) {
                Ok(()) => {}
                Err(TrySendError::Full(Command::Event(e)))
                | Err(TrySendError::Disconnected(Command::Event(e))) => {
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        (self.on_error)(&ObserverFailure::Dropped { event: &e })
                    }));
                }
                Err(_) => {}
            },
        }
    }
}

fn deliver(
    observers: &[Arc<dyn LifecycleObserver>],
    on_error: &ErrorCallback,
    event: &LifecycleEvent,
) {
    for o in observers {
        match catch_unwind(AssertUnwindSafe(|| o.on_event(event))) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    on_error(&ObserverFailure::Error {
                        event,
                        error: &error,
                    })
                }));
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".to_owned());
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    on_error(&ObserverFailure::Panic { event, message })
                }));
            }
        }
    }
}

fn log_failure(failure: &ObserverFailure<'_>) {
    match failure {
        ObserverFailure::Error { event, error } => {
            tracing::warn!(event = event.name(), error = %error, "mq: lifecycle observer failed")
        }
        ObserverFailure::Panic { event, message } => {
            tracing::warn!(event = event.name(), panic = %message, "mq: lifecycle observer panicked")
        }
        ObserverFailure::Dropped { event } => {
            tracing::warn!(
                event = event.name(),
                "mq: lifecycle event dropped, observer queue full"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Debug, Default)]
    struct Record(Mutex<Vec<&'static str>>);
    impl LifecycleObserver for Record {
        fn on_event(&self, e: &LifecycleEvent) -> Result<(), ObserverError> {
            self.0.lock().unwrap().push(e.name());
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Broken;
    impl LifecycleObserver for Broken {
        fn on_expired(&self, _: &LifecycleEvent) -> Result<(), ObserverError> {
            Err("nope".into())
        }
        fn on_published(&self, _: &LifecycleEvent) -> Result<(), ObserverError> {
            panic!("boom")
        }
    }

    fn expired() -> LifecycleEvent {
        LifecycleEvent::Expired {
            message: MessageInfo {
                queue: QueueName::new("q").unwrap(),
                backend: "test",
                message_id: MessageId::new("m").unwrap(),
                message_type: "t".into(),
                attempts: 0,
                shard_id: None,
            },
        }
    }

    fn published() -> LifecycleEvent {
        let LifecycleEvent::Expired { message } = expired() else {
            unreachable!()
        };
        LifecycleEvent::Published {
            message,
            size_bytes: 1,
        }
    }

    #[tokio::test]
    async fn failing_observer_is_reported_and_others_still_run() {
        for mode in [DispatchMode::Sync, DispatchMode::Async { capacity: 8 }] {
            let errors = Arc::new(AtomicUsize::new(0));
            let e2 = errors.clone();
            let rec = Arc::new(Record::default());
            let d = LifecycleDispatcher::builder()
                .observer(Arc::new(Broken))
                .observer(rec.clone())
                .mode(mode)
                .on_error(move |_| {
                    e2.fetch_add(1, Ordering::SeqCst);
                })
                .build();
            d.emit(expired());
            d.emit(published());
            d.flush().await;
            assert_eq!(errors.load(Ordering::SeqCst), 2, "{mode:?}");
            assert_eq!(*rec.0.lock().unwrap(), vec!["expired", "published"]);
        }
    }

    #[test]
    fn no_observers_builds_nothing() {
        let d = LifecycleDispatcher::builder().build();
        assert!(!d.is_active());
        d.emit_with(|| unreachable!("not built without observers"));
    }
}
