//! The ids of deleted messages that stay taken for the idempotency window
//! ([`SqlOptions::idempotency_window`](crate::SqlOptions::idempotency_window)): written when
//! `delete_on_ack` deletes an acknowledged row, read before a publish, pruned once forgotten.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use mq_core::QueueName;
use sqlx::{Executor, QueryBuilder};

use crate::dialect::{CHUNK, Dialect, ReadRow, Sql};
use crate::error::backend;
use crate::store::Names;

/// Those of `ids` that `queue` still remembers.
pub(crate) async fn taken<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    names: &Names,
    queue: &QueueName,
    ids: &[&str],
) -> mq_core::Result<HashSet<String>>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let mut out = HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let mut q = QueryBuilder::<DB>::new(format!(
            "SELECT id FROM {} WHERE queue = ",
            names.remembered
        ));
        q.text(queue.as_str().to_owned());
        q.raw(" AND forget_at > ");
        q.time(Utc::now());
        q.raw(" AND id IN (");
        for (i, id) in chunk.iter().enumerate() {
            if i > 0 {
                q.raw(", ");
            }
            q.text((*id).to_owned());
        }
        q.raw(")");
        let rows = q
            .build()
            .fetch_all(pool)
            .await
            .map_err(backend("publish"))?;
        for row in &rows {
            out.insert(row.text("id").map_err(backend("publish"))?);
        }
    }
    Ok(out)
}

/// Remembers `ids` of `queue` for `window` from now.
pub(crate) async fn remember<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    names: &Names,
    queue: &QueueName,
    ids: &[String],
    window: Duration,
) -> mq_core::Result<()>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    for chunk in ids.chunks(CHUNK) {
        remember_statement::<DB>(names, queue, chunk, window)
            .build()
            .execute(pool)
            .await
            .map_err(backend("complete"))?;
    }
    Ok(())
}

/// The statement that remembers `ids` (at most [`CHUNK`]) of `queue` for `window` from now,
/// moving the window of an id remembered already to the new one.
pub(crate) fn remember_statement<DB: Dialect>(
    names: &Names,
    queue: &QueueName,
    ids: &[String],
    window: Duration,
) -> QueryBuilder<DB>
where
    QueryBuilder<DB>: Sql,
{
    let forget_at = mq_core::later_by(Utc::now(), window);
    let mut q = QueryBuilder::<DB>::new(format!(
        "INSERT INTO {} (queue, id, forget_at) VALUES ",
        names.remembered
    ));
    for (i, id) in ids.iter().enumerate() {
        q.raw(if i > 0 { ", (" } else { "(" });
        q.text(queue.as_str().to_owned());
        q.raw(", ");
        q.text(id.clone());
        q.raw(", ");
        q.time(forget_at);
        q.raw(")");
    }
    q.raw(DB::REMEMBER_CONFLICT);
    q
}

/// Deletes the ids whose window has passed; returns how many.
pub(crate) async fn forget_expired<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    names: &Names,
) -> mq_core::Result<u64>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "DELETE FROM {} WHERE forget_at <= ",
        names.remembered
    ));
    q.time(Utc::now());
    let done = q.build().execute(pool).await.map_err(backend("purge"))?;
    Ok(DB::rows_affected(&done))
}
