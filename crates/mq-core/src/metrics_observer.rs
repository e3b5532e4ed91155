//! [`MetricsObserver`]: lifecycle events as metrics on the `metrics` facade (feature `metrics`).

use chrono::Utc;
use metrics::{counter, gauge, histogram};

use crate::lifecycle::{LifecycleEvent, LifecycleObserver, MessageInfo, ObserverError};

/// Turns lifecycle events into counters, histograms and gauges on the [`metrics`] facade.
///
/// No exporter is installed: the application picks one (for example
/// `metrics-exporter-prometheus`). Every metric carries `backend` and `queue` labels; message
/// metrics also carry `type`, and `shard` (empty outside Kinesis). The names are listed in
/// `docs/metrics.md`.
///
/// Durations and sizes are recorded as histograms. Prometheus exporters render a histogram as a
/// summary unless given buckets: give them [`MetricsObserver::BUCKETS`] (seconds) so the
/// quantiles can be aggregated across instances and shards.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use mq_core::{LifecycleDispatcher, MetricsObserver};
///
/// let lifecycle = LifecycleDispatcher::builder()
///     .observer(Arc::new(MetricsObserver::new()))
///     .build();
/// # let _ = lifecycle;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MetricsObserver {
    _private: (),
}

impl MetricsObserver {
    /// Histogram buckets, in seconds, for `mq_handler_duration_seconds` and
    /// `mq_message_age_seconds`: from 5 ms to an hour.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    /// use mq_core::MetricsObserver;
    ///
    /// PrometheusBuilder::new()
    ///     .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), MetricsObserver::BUCKETS)?
    ///     .install_recorder()?;
    /// # Ok(()) }
    /// ```
    pub const BUCKETS: &'static [f64] = &[
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
        3600.0,
    ];

    /// An observer writing to whatever recorder the application installed.
    pub fn new() -> Self {
        MetricsObserver::default()
    }
}

fn labels(m: &MessageInfo) -> [(&'static str, String); 4] {
    [
        ("backend", m.backend.to_owned()),
        ("queue", m.queue.to_string()),
        ("type", m.message_type.clone()),
        ("shard", m.shard_id.clone().unwrap_or_default()),
    ]
}

impl LifecycleObserver for MetricsObserver {
    fn on_event(&self, event: &LifecycleEvent) -> Result<(), ObserverError> {
        match event {
            LifecycleEvent::Published {
                message,
                size_bytes,
            } => {
                counter!("mq_messages_published_total", &labels(message)).increment(1);
                #[allow(clippy::cast_precision_loss)]
                histogram!("mq_message_size_bytes", &labels(message)).record(*size_bytes as f64);
            }
            LifecycleEvent::Consumed { message, age, .. } => {
                let l = labels(message);
                counter!("mq_messages_consumed_total", &l).increment(1);
                // Every outcome counter exists from the first delivery on, at zero, so rates and
                // alerts on them see a series before the first failure.
                for name in [
                    "mq_messages_acked_total",
                    "mq_messages_retried_total",
                    "mq_messages_dead_lettered_total",
                    "mq_messages_expired_total",
                ] {
                    counter!(name, &l).increment(0);
                }
                for reason in ["exhausted", "handler"] {
                    let [b, q, t, s] = l.clone();
                    counter!(
                        "mq_messages_failed_total",
                        &[b, q, t, s, ("reason", reason.to_owned())]
                    )
                    .increment(0);
                }
                histogram!("mq_message_age_seconds", &labels(message)).record(age.as_secs_f64());
            }
            LifecycleEvent::Acked {
                message,
                handler_duration,
                ..
            } => {
                counter!("mq_messages_acked_total", &labels(message)).increment(1);
                histogram!("mq_handler_duration_seconds", &labels(message))
                    .record(handler_duration.as_secs_f64());
            }
            LifecycleEvent::Retried { message, .. } => {
                counter!("mq_messages_retried_total", &labels(message)).increment(1);
            }
            LifecycleEvent::Failed {
                message, exhausted, ..
            } => {
                let [b, q, t, s] = labels(message);
                let reason = if *exhausted { "exhausted" } else { "handler" };
                counter!(
                    "mq_messages_failed_total",
                    &[b, q, t, s, ("reason", reason.to_owned())]
                )
                .increment(1);
            }
            LifecycleEvent::DeadLettered { message, .. } => {
                counter!("mq_messages_dead_lettered_total", &labels(message)).increment(1);
            }
            LifecycleEvent::Expired { message } => {
                counter!("mq_messages_expired_total", &labels(message)).increment(1);
            }
            LifecycleEvent::ConsumerConnected { consumer } => {
                gauge!("mq_consumers", "backend" => consumer.backend, "queue" => consumer.queue.to_string())
                    .increment(1.0);
                if let Some(shard) = &consumer.shard_id {
                    gauge!("mq_shard_leases_held", "backend" => consumer.backend,
                        "queue" => consumer.queue.to_string(), "shard" => shard.clone())
                    .set(1.0);
                    // The shard's trouble counters exist from the start, at zero.
                    for name in ["mq_poison_pills_total", "mq_leases_lost_total"] {
                        counter!(name, "backend" => consumer.backend,
                            "queue" => consumer.queue.to_string(), "shard" => shard.clone())
                        .increment(0);
                    }
                    for name in ["mq_heartbeat_failures_total", "mq_rebalances_total"] {
                        counter!(name, "queue" => consumer.queue.to_string()).increment(0);
                    }
                }
            }
            LifecycleEvent::ConsumerDisconnected { consumer, .. } => {
                gauge!("mq_consumers", "backend" => consumer.backend, "queue" => consumer.queue.to_string())
                    .decrement(1.0);
                if let Some(shard) = &consumer.shard_id {
                    gauge!("mq_shard_leases_held", "backend" => consumer.backend,
                        "queue" => consumer.queue.to_string(), "shard" => shard.clone())
                    .set(0.0);
                }
            }
            LifecycleEvent::RecordsFetched {
                consumer,
                records,
                millis_behind_latest,
            } => {
                let shard = consumer.shard_id.clone().unwrap_or_default();
                counter!("mq_records_fetched_total", "backend" => consumer.backend,
                    "queue" => consumer.queue.to_string(), "shard" => shard.clone())
                .increment(*records as u64);
                if let Some(ms) = millis_behind_latest {
                    #[allow(clippy::cast_precision_loss)]
                    gauge!("mq_shard_millis_behind_latest", "backend" => consumer.backend,
                        "queue" => consumer.queue.to_string(), "shard" => shard)
                    .set(*ms as f64);
                }
            }
            LifecycleEvent::Checkpoint { consumer, .. } => {
                #[allow(clippy::cast_precision_loss)]
                let now = Utc::now().timestamp_millis() as f64 / 1000.0;
                gauge!(
                    "mq_checkpoint_timestamp_seconds",
                    "backend" => consumer.backend,
                    "queue" => consumer.queue.to_string(),
                    "shard" => consumer.shard_id.clone().unwrap_or_default()
                )
                .set(now);
            }
            LifecycleEvent::PoisonPill { consumer, .. } => {
                counter!("mq_poison_pills_total", "backend" => consumer.backend, "queue" => consumer.queue.to_string(),
                    "shard" => consumer.shard_id.clone().unwrap_or_default())
                .increment(1);
            }
            LifecycleEvent::HeartbeatFailure { queue, .. } => {
                counter!("mq_heartbeat_failures_total", "queue" => queue.to_string()).increment(1);
            }
            LifecycleEvent::LeaseLost { consumer, .. } => {
                counter!("mq_leases_lost_total", "backend" => consumer.backend, "queue" => consumer.queue.to_string(),
                    "shard" => consumer.shard_id.clone().unwrap_or_default())
                .increment(1);
            }
            LifecycleEvent::Rebalance { queue, .. } => {
                counter!("mq_rebalances_total", "queue" => queue.to_string()).increment(1);
            }
        }
        Ok(())
    }
}
