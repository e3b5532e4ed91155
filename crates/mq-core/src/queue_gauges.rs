//! [`QueueGauges`]: queue depth and the oldest waiting message's age as gauges on the `metrics`
//! facade, read from the store on an interval (feature `metrics`).

use std::collections::BTreeSet;
use std::time::Duration;

use metrics::gauge;
use tokio_util::sync::CancellationToken;

use crate::message::Status;
use crate::polling::PollingQueue;
use crate::queue_name::QueueName;
use crate::stats::QueueStats;
use crate::store::QueueStore;

/// Sets the queue gauges from one reading of [`QueueStats`]:
///
/// - `mq_queue_messages{backend, queue, status}`: messages per status (every status is set, so
///   a status that emptied reads 0 instead of keeping its last value);
/// - `mq_queue_oldest_ready_age_seconds{backend, queue}`: how long the oldest due, unclaimed
///   message has waited (0 when none waits);
/// - `mq_queue_expired_leases{backend, queue}`: claims whose lease ran out (a crashed or stuck
///   consumer).
///
/// Call it to export numbers read another way (say, a full
/// [`queue_stats`](PollingQueue::queue_stats) now and then); [`QueueGauges`] sets the same
/// gauges from the cheaper [`queue_depth`](PollingQueue::queue_depth) reading, waiting and
/// running messages only.
///
/// # Examples
///
/// ```
/// use mq_core::{QueueName, QueueStats, Status, record_queue_stats};
///
/// let mut stats = QueueStats::new(QueueName::new("emails")?);
/// stats.counts.insert(Status::Scheduled, 12);
/// record_queue_stats("sql", &[stats]);
/// # Ok::<(), mq_core::Error>(())
/// ```
pub fn record_queue_stats(backend: &'static str, stats: &[QueueStats]) {
    record(backend, stats, &Status::ALL);
}

/// The statuses a depth reading counts.
const LIVE: [Status; 2] = [Status::Scheduled, Status::Processing];

/// Sets the gauges of `statuses`, the age and the expired leases from `stats`.
fn record(backend: &'static str, stats: &[QueueStats], statuses: &[Status]) {
    for s in stats {
        let queue = s.queue.to_string();
        for &status in statuses {
            gauge!("mq_queue_messages", "backend" => backend, "queue" => queue.clone(),
                "status" => status.as_str())
            .set(s.count(status) as f64);
        }
        gauge!("mq_queue_oldest_ready_age_seconds", "backend" => backend, "queue" => queue.clone())
            .set(s.oldest_ready_age.map_or(0.0, |d| d.as_secs_f64()));
        gauge!("mq_queue_expired_leases", "backend" => backend, "queue" => queue)
            .set(s.expired_leases as f64);
    }
}

/// Exports the depth and age gauges of every queue in a store, read with one
/// [`queue_depth`](PollingQueue::queue_depth) call per interval (waiting and running messages
/// only, so the reading costs the same however many finished messages the store keeps), until stopped or the queue
/// shuts down. Every instance may run one; the gauges are the store's numbers, so aggregate them
/// with `max`, not `sum`, across instances.
///
/// The metric names are those of [`record_queue_stats`]; `mq_queue_messages` is set for the
/// `scheduled` and `processing` statuses. A failed reading is logged and the
/// previous values stay until the next one.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use mq_core::QueueGauges;
/// use mq_core::backend::{PollingQueue, QueueStore};
///
/// // `queue` is the polling queue of a backend, e.g. `SqlQueue::polling()`.
/// async fn run<S: QueueStore>(queue: &PollingQueue<S>) {
///     let gauges = QueueGauges::start(queue, Duration::from_secs(15));
///     // ... serve; the readings end when the queue shuts down or the handle is dropped.
///     gauges.stop();
/// }
/// ```
#[derive(Debug)]
#[must_use = "the gauges stop when the handle is stopped; keep it for as long as they should run"]
pub struct QueueGauges {
    stop: CancellationToken,
}

impl QueueGauges {
    /// Starts reading `queue`'s store every `every` (at least 1 s) on the current Tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn start<S: QueueStore>(queue: &PollingQueue<S>, every: Duration) -> QueueGauges {
        let stop = CancellationToken::new();
        let every = every.max(Duration::from_secs(1));
        let queue = queue.clone();
        let token = stop.clone();
        tokio::spawn(async move {
            let backend = queue.store().backend();
            let shut_down = queue.shutdown_token();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen = BTreeSet::new();
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = shut_down.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match queue.queue_depth(None).await {
                    Ok(stats) => record(backend, &with_emptied(&mut seen, stats), &LIVE),
                    Err(e) => tracing::warn!(backend, error = %e,
                        "mq: reading queue numbers for the gauges failed; keeping the last values"),
                }
            }
        });
        QueueGauges { stop }
    }

    /// Stops the readings. The gauges keep their last values.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for QueueGauges {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `stats` plus an empty reading of every queue in `seen` that `stats` lacks: a depth reading
/// leaves out a queue with nothing waiting or running, and its gauges must fall to 0 rather than
/// keep their last values. Adds the queues of `stats` to `seen`.
fn with_emptied(seen: &mut BTreeSet<QueueName>, mut stats: Vec<QueueStats>) -> Vec<QueueStats> {
    let read: BTreeSet<QueueName> = stats.iter().map(|s| s.queue.clone()).collect();
    stats.extend(seen.difference(&read).cloned().map(QueueStats::new));
    seen.extend(read);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(queue: &str, waiting: u64) -> QueueStats {
        let mut s = QueueStats::new(QueueName::new(queue).expect("name"));
        s.counts.insert(Status::Scheduled, waiting);
        s
    }

    #[test]
    fn a_queue_that_drained_reads_zero() {
        let mut seen = BTreeSet::new();
        let first = with_emptied(&mut seen, vec![reading("a", 3), reading("b", 1)]);
        assert_eq!(first.len(), 2);
        // "a" drained: the store reports nothing for it.
        let second = with_emptied(&mut seen, vec![reading("b", 2)]);
        let a = second
            .iter()
            .find(|s| s.queue.as_str() == "a")
            .expect("the drained queue is still set");
        assert_eq!(a.count(Status::Scheduled), 0);
        assert_eq!(a.oldest_ready_age, None);
        assert_eq!(second.len(), 2);
    }
}
