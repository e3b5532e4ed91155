//! Background retention of finished rows: by age, by count, or both, in bounded batches, with
//! each pass counted on the `metrics` facade (feature `metrics`). A count keeps the newest rows
//! plus any that finished at the same instant as the last one kept (a batch acknowledged by one
//! statement shares its time), so it never removes a row younger than one it keeps.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::dialect::Dialect;
use crate::options::SqlOptions;
use crate::store::Names;

/// What one retention pass removes, from the options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pass {
    age: Option<Duration>,
    keep: Option<u64>,
    /// Never remove a row younger than this (the idempotency window).
    floor: Duration,
    batch: usize,
    pub(crate) archive: bool,
}

impl Pass {
    /// The pass `options` ask for; `None` when neither an age nor a count is set.
    pub(crate) fn of(options: &SqlOptions) -> Option<Pass> {
        let (age, keep) = (options.get_retention(), options.get_retention_keep());
        (age.is_some() || keep.is_some()).then(|| Pass {
            age,
            keep,
            floor: options.get_idempotency_window(),
            batch: options.get_retention_batch(),
            archive: options.get_archive(),
        })
    }

    /// Removes the finished rows past the age, then those beyond the newest `keep`; neither
    /// removes a row younger than the idempotency window.
    pub(crate) async fn run<DB: Dialect>(
        &self,
        pool: &sqlx::Pool<DB>,
        names: &Names,
    ) -> mq_core::Result<u64> {
        let mut removed = 0;
        if let Some(age) = self.age {
            let by_age = Cutoff {
                older_than: age.max(self.floor),
                keep: None,
            };
            removed += purge(pool, names, &by_age, self.batch, self.archive).await?;
        }
        if let Some(keep) = self.keep {
            let by_count = Cutoff {
                older_than: self.floor,
                keep: Some(keep),
            };
            removed += purge(pool, names, &by_count, self.batch, self.archive).await?;
        }
        Ok(removed)
    }
}

/// Which finished rows a purge removes.
#[derive(Debug, Clone, Copy)]
pub struct Cutoff {
    /// Only rows that finished longer ago than this.
    pub(crate) older_than: Duration,
    /// Only rows older than the newest `keep` finished rows (and than any that finished at the
    /// same instant as the last of those).
    pub(crate) keep: Option<u64>,
}

impl Cutoff {
    /// Rows older than `older_than`.
    pub(crate) fn older_than(older_than: Duration) -> Cutoff {
        Cutoff {
            older_than,
            keep: None,
        }
    }

    /// The condition on `updated_at` that spares the newest `keep` finished rows of `table`
    /// (those `finished` selects), to append to a `WHERE` (empty without a count). The count is
    /// an integer rendered by this crate, never user text.
    pub(crate) fn keep_clause(&self, table: &str, finished: &str) -> String {
        match self.keep {
            Some(keep) if keep > 0 => {
                format!(
                    " AND updated_at < (SELECT updated_at FROM {table} WHERE {finished} \
                     ORDER BY updated_at DESC LIMIT 1 OFFSET {})",
                    keep - 1
                )
            }
            _ => String::new(),
        }
    }
}

/// Removes finished rows past `cutoff` in batches until a batch comes back short.
pub(crate) async fn purge<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    names: &Names,
    cutoff: &Cutoff,
    batch: usize,
    archive: bool,
) -> mq_core::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = DB::purge_batch(pool, names, cutoff, batch, archive).await?;
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
    }
}

/// Counts a retention pass of `table` on the `metrics` facade (feature `metrics`):
/// `mq_retention_removed_total{backend, table, action}` (`action` is `deleted` or `archived`)
/// and, when the pass succeeded, `mq_retention_last_success_timestamp_seconds{backend, table}`,
/// so an alert can tell retention that stopped from retention with nothing to do.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn record(table: &str, archive: bool, removed: &mq_core::Result<u64>) {
    #[cfg(feature = "metrics")]
    if let Ok(n) = removed {
        let action = if archive { "archived" } else { "deleted" };
        metrics::counter!("mq_retention_removed_total", "backend" => "sql",
            "table" => table.to_owned(), "action" => action)
        .increment(*n);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!("mq_retention_last_success_timestamp_seconds", "backend" => "sql",
            "table" => table.to_owned())
        .set(now.as_secs_f64());
    }
}

/// The background retention loop of a store; `purge` runs one full purge.
pub(crate) async fn retention_loop<F, Fut>(cancel: CancellationToken, interval: Duration, purge: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = mq_core::Result<u64>>,
{
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match purge().await {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "mq-sql: retention purged finished rows"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "mq-sql: retention pass failed"),
        }
    }
}
