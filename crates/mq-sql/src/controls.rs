//! Queue controls on SQL: unique keys (held under a unique index while their message waits or
//! runs, and for its window after it finished), cancelling a message, and pausing a queue (one
//! row per paused queue in the pause table, which every claim checks).

use std::collections::HashMap;

use chrono::Utc;
use mq_core::{CancelOutcome, CancelTarget, Message, MessageId, QueueName, Status};
use sqlx::{AssertSqlSafe, Connection, Executor, QueryBuilder};

use crate::dialect::{CHUNK, Dialect, ReadRow, Sql};
use crate::error::backend;
use crate::store::SqlStore;

/// The statuses in which a message holds its unique key.
const LIVE: &str = "('scheduled', 'processing')";

/// Refuses, before the insert, the messages whose unique key is blocked: by an earlier message
/// of the same batch, or by a finished holder whose window has not passed. Adds them to
/// `refused` by position.
pub(crate) async fn refuse_blocked_keys<DB: Dialect>(
    store: &SqlStore<DB>,
    queue: &QueueName,
    messages: &[Message],
    refused: &mut HashMap<usize, mq_core::Error>,
) -> mq_core::Result<()>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let keys: Vec<&str> = messages
        .iter()
        .filter_map(|m| m.unique_key.as_deref())
        .collect();
    let windowed = windowed_holders(store, queue, &keys).await?;
    let mut first: HashMap<&str, &MessageId> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(key) = m.unique_key.as_deref() else {
            continue;
        };
        if refused.contains_key(&i) {
            continue;
        }
        let holder = match windowed.get(key) {
            Some(h) if h != &m.id => Some(h),
            _ => first.get(key).copied(),
        };
        match holder {
            Some(holder) => {
                refused.insert(i, duplicate_key(queue, key, holder));
            }
            None => {
                first.insert(key, &m.id);
            }
        }
    }
    Ok(())
}

/// After the insert: a keyed message the database did not store because its key is held by
/// another message gets [`DuplicateKey`](mq_core::Error::DuplicateKey) naming that holder
/// instead of a duplicate-id error.
pub(crate) async fn name_key_holders<DB: Dialect>(
    conn: &mut DB::Connection,
    table: &str,
    queue: &QueueName,
    messages: &[Message],
    results: &mut [mq_core::Result<()>],
) -> mq_core::Result<()>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let lost: Vec<&str> = messages
        .iter()
        .zip(results.iter())
        .filter(|(m, r)| {
            m.unique_key.is_some() && matches!(r, Err(mq_core::Error::DuplicateId { .. }))
        })
        .filter_map(|(m, _)| m.unique_key.as_deref())
        .collect();
    if lost.is_empty() {
        return Ok(());
    }
    let holders = live_holders(conn, table, queue, &lost).await?;
    for (m, r) in messages.iter().zip(results.iter_mut()) {
        let Some(key) = m.unique_key.as_deref() else {
            continue;
        };
        if !matches!(r, Err(mq_core::Error::DuplicateId { .. })) {
            continue;
        }
        if let Some(holder) = holders.get(key).filter(|h| *h != &m.id) {
            *r = Err(duplicate_key(queue, key, holder));
        }
    }
    Ok(())
}

fn duplicate_key(queue: &QueueName, key: &str, holder: &MessageId) -> mq_core::Error {
    mq_core::Error::DuplicateKey {
        key: key.to_owned(),
        holder: holder.clone(),
        queue: queue.clone(),
    }
}

/// The messages of `queue` that hold `keys` now (waiting or running), by key.
async fn live_holders<DB: Dialect>(
    conn: &mut DB::Connection,
    table: &str,
    queue: &QueueName,
    keys: &[&str],
) -> mq_core::Result<HashMap<String, MessageId>>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let mut out = HashMap::new();
    for chunk in keys.chunks(CHUNK) {
        let mut q =
            QueryBuilder::<DB>::new(format!("SELECT unique_key, id FROM {table} WHERE queue = "));
        q.text(queue.as_str().to_owned());
        q.raw(&format!(
            " AND status IN {LIVE}{} AND {} IN (",
            DB::LIVE_ROWS,
            DB::HELD_KEY
        ));
        in_list(&mut q, chunk);
        let rows = q
            .build()
            .fetch_all(&mut *conn)
            .await
            .map_err(backend("publish"))?;
        for row in &rows {
            let key = row.text("unique_key").map_err(backend("publish"))?;
            let id = row.text("id").map_err(backend("publish"))?;
            if let Ok(id) = MessageId::new(id) {
                out.insert(key, id);
            }
        }
    }
    Ok(out)
}

/// One result per message of a publish of `n`: the refusals by position, and in between, in
/// order, the results of the messages that were inserted.
pub(crate) fn merge(
    n: usize,
    mut refused: HashMap<usize, mq_core::Error>,
    inserted: Vec<mq_core::Result<()>>,
) -> Vec<mq_core::Result<()>> {
    let mut inserted = inserted.into_iter();
    (0..n)
        .map(|i| match refused.remove(&i) {
            Some(e) => Err(e),
            None => inserted.next().unwrap_or(Ok(())),
        })
        .collect()
}

/// The finished messages of `queue` whose window still blocks one of `keys`, by key.
async fn windowed_holders<DB: Dialect>(
    store: &SqlStore<DB>,
    queue: &QueueName,
    keys: &[&str],
) -> mq_core::Result<HashMap<String, MessageId>>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let now = Utc::now();
    let mut out = HashMap::new();
    for chunk in keys.chunks(CHUNK) {
        let mut q = QueryBuilder::<DB>::new(format!(
            "SELECT unique_key, id, updated_at, unique_window_ms FROM {} WHERE queue = ",
            store.names.table
        ));
        q.text(queue.as_str().to_owned());
        q.raw(&format!(
            " AND unique_window_ms IS NOT NULL AND status NOT IN {LIVE} AND unique_key IN ("
        ));
        in_list(&mut q, chunk);
        let rows = q
            .build()
            .fetch_all(&store.pool)
            .await
            .map_err(backend("publish"))?;
        for row in &rows {
            let finished = row.time("updated_at").map_err(backend("publish"))?;
            let window = row
                .opt_int("unique_window_ms")
                .map_err(backend("publish"))?;
            let window = std::time::Duration::from_millis(
                window.and_then(|w| u64::try_from(w).ok()).unwrap_or(0),
            );
            if mq_core::later_by(finished, window) <= now {
                continue;
            }
            let key = row.text("unique_key").map_err(backend("publish"))?;
            let id = row.text("id").map_err(backend("publish"))?;
            if let Ok(id) = MessageId::new(id) {
                out.insert(key, id);
            }
        }
    }
    Ok(out)
}

/// Appends `values` bound, comma-separated, and the closing parenthesis.
fn in_list<DB: Dialect>(q: &mut QueryBuilder<DB>, values: &[&str])
where
    QueryBuilder<DB>: Sql,
{
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            q.raw(", ");
        }
        q.text((*v).to_owned());
    }
    q.raw(")");
}

/// Cancels the message `target` names: a waiting or running one becomes `cancelled` (which
/// fences its holder's renewals and completions, and frees its key), a finished one is left
/// as it is.
pub(crate) async fn cancel<DB: Dialect>(
    store: &SqlStore<DB>,
    queue: &QueueName,
    target: CancelTarget,
) -> mq_core::Result<CancelOutcome>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let id = match target {
        CancelTarget::Id(id) => id,
        CancelTarget::UniqueKey(key) => {
            let mut conn = store.pool.acquire().await.map_err(backend("cancel"))?;
            let t = &store.names.table;
            match live_holders(&mut conn, t, queue, &[key.as_str()])
                .await?
                .remove(&key)
            {
                Some(id) => id,
                None => return Ok(CancelOutcome::NotFound),
            }
        }
        // CancelTarget is non-exhaustive: a target this store does not know names nothing.
        _ => return Ok(CancelOutcome::NotFound),
    };
    let t = &store.names.table;
    let fail = backend("cancel");
    let mut conn = store.pool.acquire().await.map_err(backend("cancel"))?;
    if let Some(sql) = DB::BEFORE_WRITE {
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut *conn)
            .await
            .map_err(backend("cancel"))?;
    }
    let mut tx = conn
        .begin_with(AssertSqlSafe(DB::BEGIN_WRITE.to_owned()))
        .await
        .map_err(backend("cancel"))?;
    let mut q = QueryBuilder::<DB>::new(format!("SELECT status FROM {t} WHERE queue = "));
    q.text(queue.as_str().to_owned());
    q.raw(" AND id = ");
    q.text(id.as_str().to_owned());
    q.raw(DB::LOCK_ROW);
    let row = q
        .build()
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend("cancel"))?;
    let Some(row) = row else {
        return Ok(CancelOutcome::NotFound);
    };
    let status = row.text("status").map_err(backend("cancel"))?;
    let outcome = match status.as_str() {
        "scheduled" => CancelOutcome::Cancelled(id.clone()),
        "processing" => CancelOutcome::CancelledRunning(id.clone()),
        other => {
            let status: Status = other.parse()?;
            return Ok(CancelOutcome::AlreadyFinished(id, status));
        }
    };
    let mut q = QueryBuilder::<DB>::new(format!(
        "UPDATE {t} SET status = 'cancelled', lease_expires_at = NULL, updated_at = "
    ));
    q.time(Utc::now());
    q.raw(" WHERE queue = ");
    q.text(queue.as_str().to_owned());
    q.raw(" AND id = ");
    q.text(id.as_str().to_owned());
    q.raw(&format!(" AND status IN {LIVE}"));
    q.build().execute(&mut *tx).await.map_err(fail)?;
    tx.commit().await.map_err(backend("cancel"))?;
    Ok(outcome)
}

/// Pauses (a row in the pause table) or resumes (no row) `queue` for every process.
pub(crate) async fn set_paused<DB: Dialect>(
    store: &SqlStore<DB>,
    queue: &QueueName,
    paused: bool,
) -> mq_core::Result<()>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let p = &store.names.paused;
    let op = if paused { "pause" } else { "resume" };
    let mut q = if paused {
        let mut q = QueryBuilder::<DB>::new(format!("INSERT INTO {p} (queue, paused_at) VALUES ("));
        q.text(queue.as_str().to_owned());
        q.raw(", ");
        q.time(Utc::now());
        q.raw(")");
        q.raw(DB::PAUSE_CONFLICT);
        q
    } else {
        let mut q = QueryBuilder::<DB>::new(format!("DELETE FROM {p} WHERE queue = "));
        q.text(queue.as_str().to_owned());
        q
    };
    q.build().execute(&store.pool).await.map_err(backend(op))?;
    Ok(())
}

/// True while `queue` has a row in the pause table.
pub(crate) async fn is_paused<DB: Dialect>(
    store: &SqlStore<DB>,
    queue: &QueueName,
) -> mq_core::Result<bool>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    QueryBuilder<DB>: Sql,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT COUNT(*) AS n FROM {} WHERE queue = ",
        store.names.paused
    ));
    q.text(queue.as_str().to_owned());
    let row = q
        .build()
        .fetch_one(&store.pool)
        .await
        .map_err(backend("is paused"))?;
    Ok(row.int("n").map_err(backend("is paused"))? > 0)
}
