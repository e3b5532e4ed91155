//! [`MetricsObserver`]: lifecycle events as metrics on the `metrics` facade (feature `metrics`).

use chrono::Utc;
use metrics::{counter, gauge, histogram};

use crate::lifecycle::{LifecycleEvent, LifecycleObserver, MessageInfo, ObserverError};

/// Turns lifecycle events into counters, histograms and gauges on the [`metrics`] facade.
///
/// No exporter is installed: the application picks one (for example
/// `metrics-exporter-prometheus`). Every metric carries `backend` and `queue` labels; message
/// metrics also carry `type`. The names are listed in `docs/metrics.md`.
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
    /// An observer writing to whatever recorder the application installed.
    pub fn new() -> Self {
        MetricsObserver::default()
    }
}

fn labels(m: &MessageInfo) -> [(&'static str, String); 3] {
    [
        ("backend", m.backend.to_owned()),
        ("queue", m.queue.to_string()),
        ("type", m.message_type.clone()),
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
                counter!("mq_messages_consumed_total", &labels(message)).increment(1);
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
                let [b, q, t] = labels(message);
                let reason = if *exhausted { "exhausted" } else { "handler" };
                counter!(
                    "mq_messages_failed_total",
                    &[b, q, t, ("reason", reason.to_owned())]
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
