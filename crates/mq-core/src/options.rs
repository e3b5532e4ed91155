//! Options shared by every backend: consumer settings and queue-wide settings.

use std::sync::Arc;
use std::time::Duration;

use crate::dead_letter::DeadLetterSink;
use crate::error::{Error, Result};
use crate::id::{IdGenerator, UlidGenerator};
use crate::lifecycle::LifecycleDispatcher;
use crate::queue_name::{IdentityResolver, QueueNameResolver};
use crate::retry::RetryPolicy;

/// The longest interval any option accepts: a bound that keeps deadline arithmetic far from
/// overflow.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a consumer claims and runs batches. Every interval, size and timeout is here, none is a
/// constant.
///
/// Defaults: batch of 10, 1 batch at a time, poll every 1 s when there was work and back off to
/// 5 s when idle, handler timeout 5 min, lease 30 s (renewed while the handler runs), shutdown
/// grace 30 s, cancel grace 500 ms, [`RetryPolicy::default`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mq_core::ConsumerOptions;
///
/// let opts = ConsumerOptions::default()
///     .batch_size(100)
///     .concurrency(4)
///     .handler_timeout(Duration::from_secs(30));
/// opts.validate()?;
/// assert!(ConsumerOptions::default().batch_size(0).validate().is_err());
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerOptions {
    batch_size: usize,
    concurrency: usize,
    poll_interval: Duration,
    max_poll_interval: Duration,
    handler_timeout: Duration,
    lease_duration: Duration,
    shutdown_grace: Duration,
    cancel_grace: Duration,
    retry: RetryPolicy,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            batch_size: 10,
            concurrency: 1,
            poll_interval: Duration::from_secs(1),
            max_poll_interval: Duration::from_secs(5),
            handler_timeout: Duration::from_secs(300),
            lease_duration: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            cancel_grace: Duration::from_millis(500),
            retry: RetryPolicy::default(),
        }
    }
}

impl ConsumerOptions {
    crate::__option_setters! {
        /// Messages claimed per batch.
        batch_size(n: usize) n;
        /// Batches handled at once by one consumer.
        concurrency(n: usize) n;
        /// Wait before polling again when the last poll found nothing; doubles while idle.
        poll_interval(d: Duration) d;
        /// Longest wait between two polls while idle.
        max_poll_interval(d: Duration) d;
        /// After this the handler's token is cancelled and its messages are retried.
        handler_timeout(d: Duration) d;
        /// How long a claim holds a message; renewed every third of it while the handler runs.
        lease_duration(d: Duration) d;
        /// How long shutdown waits for in-flight handlers before cancelling them.
        shutdown_grace(d: Duration) d;
        /// How long a handler whose token was cancelled (timeout, shutdown past its grace, lost
        /// lease) may take to return before the consumer drops it, frees its slot and retries its
        /// messages.
        ///
        /// Dropping the handler's future stops it at its next `.await`. A handler that blocks its
        /// thread (a long computation or blocking I/O without `.await`) cannot be dropped: the
        /// consumer then waits for it and logs a warning naming its messages. Run such work with
        /// `tokio::task::spawn_blocking` and await it.
        cancel_grace(d: Duration) d;
        /// The retry policy.
        retry(policy: RetryPolicy) policy;
    }

    /// Messages claimed per batch.
    pub fn get_batch_size(&self) -> usize {
        self.batch_size
    }
    /// Batches at once.
    pub fn get_concurrency(&self) -> usize {
        self.concurrency
    }
    /// Idle poll interval.
    pub fn get_poll_interval(&self) -> Duration {
        self.poll_interval
    }
    /// Longest idle poll interval.
    pub fn get_max_poll_interval(&self) -> Duration {
        self.max_poll_interval
    }
    /// Handler timeout.
    pub fn get_handler_timeout(&self) -> Duration {
        self.handler_timeout
    }
    /// Lease duration.
    pub fn get_lease_duration(&self) -> Duration {
        self.lease_duration
    }
    /// Shutdown grace period.
    pub fn get_shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }
    /// Cancel grace.
    pub fn get_cancel_grace(&self) -> Duration {
        self.cancel_grace
    }
    /// The retry policy.
    pub fn get_retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(Error::invalid_option(
                "batch_size",
                format!("must be between 1 and 10000, got {}", self.batch_size),
            ));
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err(Error::invalid_option(
                "concurrency",
                format!("must be between 1 and 1024, got {}", self.concurrency),
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::invalid_option("poll_interval", "must be above zero"));
        }
        if self.max_poll_interval < self.poll_interval {
            return Err(Error::invalid_option(
                "max_poll_interval",
                "must not be shorter than poll_interval",
            ));
        }
        if self.handler_timeout.is_zero() || self.handler_timeout > MAX_INTERVAL {
            return Err(Error::invalid_option(
                "handler_timeout",
                "must be above zero and at most 7 days",
            ));
        }
        if self.lease_duration < Duration::from_millis(30) || self.lease_duration > MAX_INTERVAL {
            return Err(Error::invalid_option(
                "lease_duration",
                "must be between 30 ms (it is renewed every third of itself) and 7 days",
            ));
        }
        if self.cancel_grace > MAX_INTERVAL {
            return Err(Error::invalid_option(
                "cancel_grace",
                "must be at most 7 days",
            ));
        }
        if self.max_poll_interval > MAX_INTERVAL || self.shutdown_grace > MAX_INTERVAL {
            return Err(Error::invalid_option(
                "max_poll_interval",
                "intervals must be at most 7 days",
            ));
        }
        self.retry.validate()
    }
}

/// Settings every backend shares, set once per queue instance: lifecycle observers, the
/// dead-letter hook, id generation, queue-name resolution and the message size limit.
///
/// Defaults: no observers, no dead-letter hook, ULID ids, names used as given, 1 MiB per message.
///
/// # Examples
///
/// ```
/// use mq_core::{CommonOptions, EnvSuffixResolver};
///
/// let common = CommonOptions::default()
///     .resolver(EnvSuffixResolver::new("production")?)
///     .max_message_bytes(256 * 1024);
/// assert_eq!(common.get_max_message_bytes(), 256 * 1024);
/// # Ok::<(), mq_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CommonOptions {
    pub(crate) lifecycle: LifecycleDispatcher,
    pub(crate) dead_letters: Option<Arc<dyn DeadLetterSink>>,
    pub(crate) id_generator: Arc<dyn IdGenerator>,
    pub(crate) resolver: Arc<dyn QueueNameResolver>,
    pub(crate) max_message_bytes: usize,
}

impl Default for CommonOptions {
    fn default() -> Self {
        CommonOptions {
            lifecycle: LifecycleDispatcher::none(),
            dead_letters: None,
            id_generator: Arc::new(UlidGenerator),
            resolver: Arc::new(IdentityResolver),
            max_message_bytes: 1024 * 1024,
        }
    }
}

impl CommonOptions {
    crate::__option_setters! {
        /// Lifecycle observers.
        lifecycle(dispatcher: LifecycleDispatcher) dispatcher;
        /// Where messages that failed for good go.
        dead_letters(sink: Arc<dyn DeadLetterSink>) Some(sink);
        /// Id generation for messages published without an id.
        id_generator(generator: impl crate::IdGenerator) Arc::new(generator);
        /// Queue-name resolution (for example [`EnvSuffixResolver`](crate::EnvSuffixResolver)).
        resolver(resolver: impl QueueNameResolver) Arc::new(resolver);
        /// Largest serialized message accepted by publish.
        max_message_bytes(n: usize) n;
    }

    /// The lifecycle dispatcher.
    pub fn get_lifecycle(&self) -> &LifecycleDispatcher {
        &self.lifecycle
    }
    /// The dead-letter hook.
    pub fn get_dead_letters(&self) -> Option<&Arc<dyn DeadLetterSink>> {
        self.dead_letters.as_ref()
    }
    /// The id generator.
    pub fn get_id_generator(&self) -> &Arc<dyn IdGenerator> {
        &self.id_generator
    }
    /// The resolver.
    pub fn get_resolver(&self) -> &Arc<dyn QueueNameResolver> {
        &self.resolver
    }
    /// The message size limit.
    pub fn get_max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }
}

/// Consuming builder setters, one per field: `name(value: Type) expression stored;`, each with
/// its own documentation. Used by the option structs of the backend crates.
#[doc(hidden)]
#[macro_export]
macro_rules! __option_setters {
    ($($(#[$doc:meta])* $name:ident($value:ident: $ty:ty) $stored:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $value: $ty) -> Self {
                self.$name = $stored;
                self
            }
        )*
    };
}
