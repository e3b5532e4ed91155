//! The backend conformance suite and its helpers (feature `testkit`).
//!
//! A backend implements [`QueueFactory`] and stamps every case into its test binary with one
//! macro call:
//!
//! ```text
//! mq_core::conformance_tests!(MyFactory::new());
//! ```
//!
//! Each case is a plain async function in [`cases`], so a backend that supports only some of
//! them (the immediate queue) calls those directly.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::error::BoxError;
use crate::handler::{Batch, Handler, HandlerContext, handler_fn};
use crate::lifecycle::{
    DispatchMode, LifecycleDispatcher, LifecycleEvent, LifecycleObserver, ObserverError,
};
use crate::message::NewMessage;
use crate::options::{CommonOptions, ConsumerOptions};
use crate::queue::MessageQueue;
use crate::queue_name::QueueName;
use crate::retry::RetryPolicy;
use crate::store::QueueStore;

/// The value of an `Option` returned by a case's set-up, or returns from the case when the
/// set-up decided it is skipped here (it said why).
macro_rules! or_skip {
    ($setup:expr) => {
        match $setup {
            Some(ready) => ready,
            None => return,
        }
    };
}

pub mod cases;
pub mod checkpoint;
pub mod control;
pub mod dead_letter;
pub mod lease_table;
mod support;

pub use support::publish_all;

/// Builds isolated queues of one backend for the conformance cases.
#[async_trait]
pub trait QueueFactory: Send + Sync + 'static {
    /// Why this backend cannot run here (a missing service variable), or `None`. Use
    /// [`service_url`] to follow the suite's rule: fail under `MQ_REQUIRE_SERVICES=1`, skip with a
    /// printed reason otherwise.
    fn skip_reason(&self) -> Option<String> {
        None
    }

    /// A fresh queue for the case named `test`, isolated from every other case (its own table,
    /// collection or namespace), built with `common`.
    async fn create(&self, test: &str, common: CommonOptions) -> Arc<dyn MessageQueue>;

    /// The raw store behind the queue that the last [`QueueFactory::create`] call for `test`
    /// returned, for the lease cases. `None` when the backend has no [`QueueStore`].
    async fn store(&self, test: &str) -> Option<Arc<dyn QueueStore>>;
}

/// Reads a service URL from `var`.
///
/// Returns `Ok(url)` when set. When unset: under `MQ_REQUIRE_SERVICES=1` (set by
/// `cargo xtask ci`) it panics naming the variable and the command that starts the service;
/// otherwise it returns `Err(reason)` for the caller to print and skip.
pub fn service_url(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => {
            let reason = format!(
                "{var} is not set: run `cargo xtask services up` and export what it prints, or use `cargo xtask test`"
            );
            if std::env::var("MQ_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("required service missing: {reason}");
            }
            Err(reason)
        }
    }
}

/// Returns true (after printing why) when `factory` cannot run here.
pub fn should_skip(factory: &dyn QueueFactory, test: &str) -> bool {
    skip_for(factory.skip_reason(), test)
}

/// The suites' one skip rule: with a `reason`, panic under `MQ_REQUIRE_SERVICES=1`, otherwise
/// print why `test` skips and return true.
pub(crate) fn skip_for(reason: Option<String>, test: &str) -> bool {
    let Some(reason) = reason else {
        return false;
    };
    if std::env::var("MQ_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{test}: required service missing: {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    true
}

/// A queue name for `test`, valid on every backend.
pub fn queue_name(test: &str) -> QueueName {
    let cleaned: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    QueueName::new(format!("t-{cleaned}")).unwrap_or_else(|e| panic!("test name {test:?}: {e}"))
}

/// A table, collection or database name for `test` that every backend accepts: `prefix`, then
/// the test name lowercased with every other character than an ASCII letter or digit replaced
/// by `_`, cut to `max` bytes.
///
/// # Examples
///
/// ```
/// assert_eq!(mq_core::testkit::identifier("mqt_", "Stale owner::postgres", 50), "mqt_stale_owner__postgres");
/// ```
pub fn identifier(prefix: &str, test: &str, max: usize) -> String {
    let mut name = prefix.to_owned();
    name.extend(test.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        }
    }));
    name.truncate(max);
    name
}

/// Consumer options tuned for tests: fast polls, short backoff, a lease of 5 s.
pub fn fast_options() -> ConsumerOptions {
    ConsumerOptions::default()
        .poll_interval(Duration::from_millis(10))
        .max_poll_interval(Duration::from_millis(50))
        .lease_duration(Duration::from_secs(5))
        .shutdown_grace(Duration::from_secs(5))
        .handler_timeout(Duration::from_secs(30))
        .retry(
            RetryPolicy::default()
                .base_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(500))
                .jitter(0.0),
        )
}

/// Waits until `cond` holds, checking every 10 ms, or panics with `what` after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the async `cond` holds, checking every 10 ms, or panics with `what` after
/// `timeout`. For conditions that need a query (a row count, a lease owner).
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Test message `i`: type `test`, payload `{"n": i}`.
pub fn test_message(i: usize) -> NewMessage {
    NewMessage::new("test", serde_json::json!({ "n": i }))
}

/// Common options whose lifecycle events go, synchronously, to the returned recorder.
///
/// # Examples
///
/// ```
/// use mq_core::testkit::observed_options;
///
/// let (recorder, common) = observed_options();
/// assert!(recorder.names().is_empty());
/// # let _ = common;
/// ```
pub fn observed_options() -> (Arc<RecordingObserver>, CommonOptions) {
    let rec = Arc::new(RecordingObserver::default());
    let common = CommonOptions::default().lifecycle(
        LifecycleDispatcher::builder()
            .observer(rec.clone())
            .mode(DispatchMode::Sync)
            .build(),
    );
    (rec, common)
}

/// A handler that acks everything and counts the messages it was given.
pub fn counting_handler() -> (Arc<AtomicUsize>, Arc<dyn Handler>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let h = handler_fn(move |b: Batch, _c: HandlerContext| {
        let s = s.clone();
        async move {
            s.fetch_add(b.len(), Ordering::SeqCst);
        }
    });
    (seen, Arc::new(h))
}

/// An observer that records every event.
#[derive(Debug, Default)]
pub struct RecordingObserver {
    events: Mutex<Vec<LifecycleEvent>>,
}

impl RecordingObserver {
    /// A copy of the events so far.
    pub fn events(&self) -> Vec<LifecycleEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The names of the events so far.
    pub fn names(&self) -> Vec<&'static str> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(LifecycleEvent::name)
            .collect()
    }

    /// How many events named `name` were seen.
    pub fn count(&self, name: &str) -> usize {
        self.names().into_iter().filter(|n| *n == name).count()
    }
}

impl LifecycleObserver for RecordingObserver {
    fn on_event(&self, event: &LifecycleEvent) -> Result<(), ObserverError> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
        Ok(())
    }
}

/// A dead-letter sink that keeps what it is given.
#[derive(Debug, Default)]
pub struct RecordingDeadLetters {
    letters: Mutex<Vec<DeadLetter>>,
    calls: AtomicUsize,
}

impl RecordingDeadLetters {
    /// A copy of the letters so far.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many letters were received.
    pub fn len(&self) -> usize {
        self.letters.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when none were received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl DeadLetterSink for RecordingDeadLetters {
    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), BoxError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.letters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(letters);
        Ok(())
    }
}

/// Counts deliveries per message id and catches a message delivered while it is already being
/// handled (a double claim).
#[derive(Default)]
pub struct DeliveryLedger {
    state: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    in_flight: HashMap<String, usize>,
    deliveries: HashMap<String, usize>,
    overlaps: usize,
}

impl fmt::Debug for DeliveryLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeliveryLedger")
    }
}

impl DeliveryLedger {
    /// Records the start of a delivery of `id`.
    pub fn begin(&self, id: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = s.in_flight.entry(id.to_owned()).or_default();
        *n += 1;
        if *n > 1 {
            s.overlaps += 1;
        }
        *s.deliveries.entry(id.to_owned()).or_default() += 1;
    }

    /// Records the end of a delivery of `id`.
    pub fn end(&self, id: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = s.in_flight.get_mut(id) {
            *n -= 1;
        }
    }

    /// Distinct ids delivered at least once.
    pub fn distinct(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deliveries
            .len()
    }

    /// Deliveries beyond the first, over all ids.
    pub fn duplicates(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deliveries
            .values()
            .map(|n| n - 1)
            .sum()
    }

    /// Deliveries that began while the same id was still being handled.
    pub fn overlaps(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .overlaps
    }

    /// A handler that acks everything and records each batch in this ledger: every message
    /// begins, the handler yields once, then every message ends, so two consumers holding the
    /// same message at once show up in [`DeliveryLedger::overlaps`].
    pub fn handler(self: &Arc<Self>) -> Arc<dyn Handler> {
        let ledger = self.clone();
        Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
            let l = ledger.clone();
            async move {
                for m in batch.iter() {
                    l.begin(m.id.as_str());
                }
                tokio::task::yield_now().await;
                for m in batch.iter() {
                    l.end(m.id.as_str());
                }
            }
        }))
    }

    /// Asserts no message was handed to a consumer while another held it, and none was
    /// delivered twice: what a run without expired leases must show.
    pub fn assert_each_delivered_once(&self) {
        assert_eq!(
            self.overlaps(),
            0,
            "a message was delivered while another consumer held it"
        );
        assert_eq!(
            self.duplicates(),
            0,
            "no lease expired, so nothing may be delivered twice"
        );
    }

    /// Deliveries of `id`.
    pub fn deliveries_of(&self, id: &str) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deliveries
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

/// Stamps one `#[tokio::test]` per conformance case, each calling `$factory` for a fresh
/// [`QueueFactory`]. The calling crate needs `tokio` with `macros` and `rt-multi-thread`.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__stamp_cases!($factory; cases;
            delivers_ready_messages,
            respects_execute_at,
            expired_messages_are_never_delivered,
            retry_after_delay_then_success,
            exhausted_attempts_go_to_dead_letters,
            mixed_outcomes_in_one_batch,
            handler_timeout_cancels_and_retries,
            concurrent_consumers_never_double_claim,
            shutdown_waits_for_in_flight_handler,
            unregistered_queue_is_an_error,
            empty_publish_is_a_noop,
            oversize_and_duplicate_messages_are_refused,
            lifecycle_events_fire_in_order,
            failing_observer_does_not_break_consumption,
            consume_batch_works_without_a_consumer,
            expired_lease_is_claimed_again_and_fences_the_old_owner,
            panicking_handler_retries_the_batch,
            shutdown_cancels_handlers_after_the_grace_period,
            shutdown_abort_on_the_last_attempt_releases_the_message,
            shutdown_waits_for_consume_batch_and_repeats_safely,
            absurd_delays_are_handled_without_panics,
            hung_handler_is_dropped_and_shutdown_returns,
            too_deep_payload_is_refused_alone,
            bad_messages_are_refused_alone,
            queue_stats_count_by_status
        );
    };
}

/// Stamps one `#[tokio::test]` per case of the testkit module `$module`, each calling `$factory`
/// for a fresh factory: the one body behind [`conformance_tests!`](crate::conformance_tests) and
/// the other suites' macros, which each list their cases once.
#[doc(hidden)]
#[macro_export]
macro_rules! __stamp_cases {
    ($factory:expr; $module:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::testkit::$module::$case(&factory, stringify!($case)).await;
            }
        )*
    };
}
