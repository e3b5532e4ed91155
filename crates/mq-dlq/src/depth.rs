//! [`DepthReporter`]: the dead-letter depth as a gauge (feature `metrics`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mq_core::{DeadLetterFilter, DeadLetterStore, QueueName, ReplayState, Result};
use tokio_util::sync::CancellationToken;

/// Publishes how many dead letters wait for a replay as the gauge `mq_dead_letter_depth`
/// (label `queue`), on the [`metrics`] facade, by counting the store every interval.
///
/// A letter waits until a replay has published it (`ReplayState::None` or `Pending`); replayed
/// and purged entries do not count. Depth is polled rather than derived from lifecycle events
/// because replays and purges happen in other processes (`mqctl`). Each configured queue gets
/// its own series; with none configured, one series with `queue="all"` counts every entry.
///
/// Defaults: every 30 s, no queue (all entries).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use mq_core::QueueName;
/// use mq_dlq::DepthReporter;
/// use mq_memory::MemoryDeadLetterStore;
/// use tokio_util::sync::CancellationToken;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
/// let store = Arc::new(MemoryDeadLetterStore::new());
/// let reporter = DepthReporter::new(store)
///     .queue(QueueName::new("emails")?)
///     .interval(Duration::from_secs(15));
/// reporter.report_once().await?; // sets mq_dead_letter_depth{queue="emails"} to 0
/// let stop = CancellationToken::new();
/// let task = tokio::spawn(reporter.run(stop.clone()));
/// stop.cancel();
/// task.await?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DepthReporter {
    store: Arc<dyn DeadLetterStore>,
    queues: Vec<QueueName>,
    interval: Duration,
}

impl fmt::Debug for DepthReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DepthReporter")
            .field("queues", &self.queues)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl DepthReporter {
    /// A reporter counting `store`.
    pub fn new(store: Arc<dyn DeadLetterStore>) -> Self {
        DepthReporter {
            store,
            queues: Vec::new(),
            interval: Duration::from_secs(30),
        }
    }

    /// Reports the depth of `queue` (call again for more queues).
    pub fn queue(mut self, queue: QueueName) -> Self {
        self.queues.push(queue);
        self
    }

    /// Time between two counts (at least 100 ms).
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = every.max(Duration::from_millis(100));
        self
    }

    /// Counts now and sets the gauges.
    pub async fn report_once(&self) -> Result<()> {
        if self.queues.is_empty() {
            let n = self.waiting(DeadLetterFilter::default()).await?;
            set("all".to_owned(), n);
        }
        for q in &self.queues {
            let n = self
                .waiting(DeadLetterFilter::default().queue(q.clone()))
                .await?;
            set(q.to_string(), n);
        }
        Ok(())
    }

    /// Reports every interval until `cancel` fires. A failed count is logged and retried at the
    /// next interval; the gauges keep their last value meanwhile.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.report_once().await {
                tracing::warn!(error = %e, "mq-dlq: counting dead letters failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    async fn waiting(&self, filter: DeadLetterFilter) -> Result<u64> {
        let mut n = 0;
        for state in [ReplayState::None, ReplayState::Pending] {
            n += self
                .store
                .count(&filter.clone().replay_state(state))
                .await?;
        }
        Ok(n)
    }
}

fn set(queue: String, n: u64) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!("mq_dead_letter_depth", "queue" => queue).set(n as f64);
}
