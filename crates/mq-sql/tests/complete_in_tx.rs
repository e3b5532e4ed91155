//! Completing a message inside the handler's own transaction (`SqlQueue::complete_in_tx`): the
//! handler's write and the acknowledgement commit together or not at all. On every database,
//! keeping acknowledged rows and deleting them (`SqlOptions::delete_on_ack`):
//!
//! - commit: every message's effect is written once, every message is completed once, nothing
//!   is delivered again and the consumer reports no lost lease or retry;
//! - rollback: a transaction that completed its messages and rolled back leaves them to the
//!   handler's outcome (a retry), and the next delivery writes each effect exactly once;
//! - rolled back, then lost: a handler that completed a message in a transaction it rolled
//!   back, and then lost the lease, is cancelled and reported as a lost lease, not as an
//!   acknowledgement;
//! - lease lost: a handler whose lease lapsed cannot complete in its transaction (before and
//!   after another consumer claimed and handled the message), so its effect never commits and
//!   the message is handled once, by the other consumer;
//! - windows: a message completed in the transaction keeps its id taken for the idempotency
//!   window and its unique key blocked for the key's window, as the consumer's own
//!   acknowledgement does (under delete_on_ack the keyed row is kept as executed).

#[path = "support/factory.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mq_core::{
    Batch, BatchReport, BoxError, ConsumerOptions, Handler, HandlerContext, Message, MessageQueue,
    NewMessage, Outcome, Outcomes, QueueName, handler_fn,
};
use mq_sql::{SqlQueue, sqlx};
use support::{Db, drop_table, fresh_table, options, publish_all, test_on_each_db};

/// Messages per case.
const N: usize = 12;

/// How long draining may take before the case fails.
const DRAIN: Duration = Duration::from_secs(60);

/// One test per database for each case, keeping acknowledged rows and deleting them.
macro_rules! in_tx_tests {
    ($($name:ident => $case:ident($delete:expr);)*) => {
        $( test_on_each_db!($name, |db, test| $case(db, test, $delete)); )*
    };
}

in_tx_tests! {
    commit_kept => commit(false);
    commit_deleted => commit(true);
    rollback_kept => rollback(false);
    rollback_deleted => rollback(true);
    rolled_back_then_lost_kept => rolled_back_then_lost(false);
    rolled_back_then_lost_deleted => rolled_back_then_lost(true);
    lease_lost_kept => lease_lost(false);
    lease_lost_deleted => lease_lost(true);
    windows_kept => windows(false);
    windows_deleted => windows(true);
    renewal_after_commit_kept => renewal_after_commit(false);
    renewal_after_commit_deleted => renewal_after_commit(true);
}

/// The statement that opens the handler's transaction (SQLite: take the write lock at once).
fn begin(db: Db) -> &'static str {
    if db == Db::Sqlite {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    }
}

/// The effect table of a case.
fn effects(table: &str) -> String {
    format!("{table}_fx")
}

/// `INSERT` of one effect row (the message id is bound).
fn insert_effect(db: Db, table: &str) -> String {
    let p = if db == Db::Postgres { "$1" } else { "?" };
    format!("INSERT INTO {} (msg_id) VALUES ({p})", effects(table))
}

fn messages() -> Vec<NewMessage> {
    (0..N)
        .map(|i| NewMessage::new("order", serde_json::json!({ "i": i })))
        .collect()
}

fn consumer_options() -> ConsumerOptions {
    ConsumerOptions::default().batch_size(5)
}

/// One message per batch, so a retried message never shares a transaction with a new one.
fn single_options() -> ConsumerOptions {
    ConsumerOptions::default().batch_size(1)
}

/// Deliveries per message id, counted by the handlers.
type Deliveries = Arc<Mutex<HashMap<String, u32>>>;

fn delivered(deliveries: &Deliveries, batch: &Batch) {
    let mut d = deliveries.lock().unwrap_or_else(|e| e.into_inner());
    for m in batch.iter() {
        *d.entry(m.id.as_str().to_owned()).or_default() += 1;
    }
}

/// Runs `consume_batch` until `done` holds, merging the reports.
async fn drain<F, Fut>(
    queue: &dyn MessageQueue,
    name: &QueueName,
    handler: Arc<dyn Handler>,
    options: &ConsumerOptions,
    mut done: F,
) -> BatchReport
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DRAIN;
    let mut total = BatchReport::default();
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained after {DRAIN:?}: {total:?}"
        );
        let report = queue
            .consume_batch(name, handler.clone(), options)
            .await
            .expect("consume_batch");
        total.merge(&report);
    }
    total
}

/// A fresh queue on `table` (keeping or deleting acknowledged rows), its pool and queue name,
/// with an empty effect table beside it and `messages` published.
macro_rules! open_case {
    ($db:ty, $url:expr, $table:expr, $delete:expr, $messages:expr) => {{
        let queue = SqlQueue::<$db>::connect($url, options($table).delete_on_ack($delete))
            .await
            .expect("connect");
        let pool = queue.store().pool().clone();
        let name = QueueName::new("orders").expect("name");
        queue.register(&name).await.expect("register");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {} (msg_id VARCHAR(100) NOT NULL)",
            effects($table)
        )))
        .execute(&pool)
        .await
        .expect("create effects");
        publish_all(&queue, &name, $messages).await;
        (queue, pool, name)
    }};
}

/// Each effect's message id and how often it was written.
macro_rules! effect_counts {
    ($pool:expr, $table:expr) => {{
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT msg_id FROM {}",
            effects($table)
        )))
        .fetch_all($pool)
        .await
        .expect("read effects");
        let mut counts: HashMap<String, u32> = HashMap::new();
        for id in ids {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }};
}

/// The messages left in the table: (status, attempts).
macro_rules! message_rows {
    ($pool:expr, $table:expr) => {{
        let rows: Vec<(String, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT status, attempts FROM {}",
            $table
        )))
        .fetch_all($pool)
        .await
        .expect("read messages");
        rows
    }};
}

/// Whether no message of the table waits or runs.
macro_rules! settled {
    ($pool:expr, $table:expr) => {{
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {} WHERE status IN ('scheduled', 'processing')",
            $table
        )))
        .fetch_one($pool)
        .await
        .expect("count waiting");
        n == 0
    }};
}

/// Writes `m`'s effect on the transaction `tx` and completes `m` in it; the completion's
/// result.
macro_rules! effect_and_complete {
    ($tx:ident, $q:expr, $ctx:expr, $m:expr, $insert:expr) => {{
        sqlx::query(sqlx::AssertSqlSafe($insert.to_owned()))
            .bind($m.id.as_str())
            .execute(&mut *$tx)
            .await?;
        $q.complete_in_tx(&mut $tx, $ctx, $m).await
    }};
}

/// The condition `drain` waits for: no message of `table` waits or runs.
macro_rules! until_settled {
    ($pool:expr, $table:expr) => {{
        let (p, t) = ($pool.clone(), $table.clone());
        move || {
            let (p, t) = (p.clone(), t.clone());
            async move { settled!(&p, &t) }
        }
    }};
}

/// `UPDATE` of one message (its id bound) setting `set` (empty, or assignments ending in ", ")
/// and a lease that ends `hours` from now (in the past when negative).
fn set_lease(db: Db, table: &str, set: &str, hours: i64) -> String {
    let (sign, n) = (if hours < 0 { '-' } else { '+' }, hours.unsigned_abs());
    match db {
        Db::Postgres => format!(
            "UPDATE {table} SET {set}lease_expires_at = now() {sign} interval '{n} hour' WHERE id = $1"
        ),
        Db::MySql => format!(
            "UPDATE {table} SET {set}lease_expires_at = UTC_TIMESTAMP(6) {sign} INTERVAL {n} HOUR WHERE id = ?"
        ),
        Db::Sqlite => format!(
            "UPDATE {table} SET {set}lease_expires_at = {} WHERE id = ?",
            (chrono::Utc::now() + chrono::Duration::hours(hours)).timestamp_micros()
        ),
    }
}

/// Every message ended completed once: executed after `attempts` deliveries, or deleted.
fn assert_completed(db: Db, delete: bool, rows: &[(String, i32)], attempts: i32) {
    if delete {
        assert!(rows.is_empty(), "{db:?}: acknowledged rows left: {rows:?}");
    } else {
        assert_eq!(rows.len(), N, "{db:?}: {rows:?}");
        for (status, n) in rows {
            assert_eq!(
                (status.as_str(), *n),
                ("executed", attempts),
                "{db:?}: {rows:?}"
            );
        }
    }
}

/// The handler writes each message's effect and completes the message in one transaction.
async fn commit(db: Db, test: &str, delete: bool) {
    let Some((url, table)) = fresh_table(db, "tx", test).await else {
        return;
    };
    drop_table(db, &url, &effects(&table)).await;
    support::for_db!(db, |DB| {
        let (queue, pool, name) = open_case!(DB, &url, &table, delete, messages());

        let deliveries = Deliveries::default();
        let handler: Arc<dyn Handler> = {
            let (q, pool, deliveries) = (queue.clone(), pool.clone(), deliveries.clone());
            let insert = insert_effect(db, &table);
            Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
                let (q, pool, insert) = (q.clone(), pool.clone(), insert.clone());
                delivered(&deliveries, &batch);
                async move {
                    let mut tx = pool.begin_with(begin(db)).await?;
                    for m in batch.iter() {
                        effect_and_complete!(tx, q, &ctx, m, insert)?;
                    }
                    tx.commit().await?;
                    Ok::<(), BoxError>(())
                }
            }))
        };
        let done = until_settled!(pool, table);
        let report = drain(&queue, &name, handler, &consumer_options(), done).await;

        assert_eq!(
            (
                report.acked,
                report.retried,
                report.failed,
                report.lease_lost
            ),
            (N, 0, 0, 0),
            "{db:?}: the consumer counts every message acknowledged, nothing lost or retried: {report:?}"
        );
        let counts = effect_counts!(&pool, &table);
        assert_eq!(
            counts.len(),
            N,
            "{db:?}: one effect per message: {counts:?}"
        );
        assert!(counts.values().all(|&n| n == 1), "{db:?}: {counts:?}");
        let d = deliveries.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(d.len(), N, "{db:?}");
        assert!(d.values().all(|&n| n == 1), "{db:?}: redelivered: {d:?}");
        assert_completed(db, delete, &message_rows!(&pool, &table), 1);
        queue.shutdown().await.expect("shutdown");
    });
    drop_table(db, &url, &effects(&table)).await;
    drop_table(db, &url, &table).await;
}

/// The first delivery completes in its transaction and rolls it back, returning a retry; the
/// second commits.
async fn rollback(db: Db, test: &str, delete: bool) {
    let Some((url, table)) = fresh_table(db, "tx", test).await else {
        return;
    };
    drop_table(db, &url, &effects(&table)).await;
    support::for_db!(db, |DB| {
        let (queue, pool, name) = open_case!(DB, &url, &table, delete, messages());

        let deliveries = Deliveries::default();
        let handler: Arc<dyn Handler> = {
            let (q, pool, deliveries) = (queue.clone(), pool.clone(), deliveries.clone());
            let insert = insert_effect(db, &table);
            Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
                let (q, pool, insert) = (q.clone(), pool.clone(), insert.clone());
                delivered(&deliveries, &batch);
                async move {
                    let mut tx = pool.begin_with(begin(db)).await?;
                    for m in batch.iter() {
                        effect_and_complete!(tx, q, &ctx, m, insert)?;
                    }
                    if batch.iter().any(|m| m.attempts == 1) {
                        // A later step fails: nothing of this transaction commits.
                        tx.rollback().await?;
                        return Ok::<Outcomes, BoxError>(Outcomes::all(Outcome::retry_after(
                            Duration::ZERO,
                        )));
                    }
                    tx.commit().await?;
                    Ok(Outcomes::ack_all())
                }
            }))
        };
        let done = until_settled!(pool, table);
        let report = drain(&queue, &name, handler, &single_options(), done).await;

        assert_eq!(
            (
                report.retried,
                report.acked,
                report.failed,
                report.lease_lost
            ),
            (N, N, 0, 0),
            "{db:?}: each message retried once after the rollback, then acknowledged: {report:?}"
        );
        let counts = effect_counts!(&pool, &table);
        assert_eq!(
            counts.len(),
            N,
            "{db:?}: one effect per message: {counts:?}"
        );
        assert!(
            counts.values().all(|&n| n == 1),
            "{db:?}: a rolled-back effect committed: {counts:?}"
        );
        let d = deliveries.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(d.values().all(|&n| n == 2), "{db:?}: deliveries: {d:?}");
        assert_completed(db, delete, &message_rows!(&pool, &table), 2);
        queue.shutdown().await.expect("shutdown");
    });
    drop_table(db, &url, &effects(&table)).await;
    drop_table(db, &url, &table).await;
}

/// The handler completes the message in its transaction and rolls it back; then its lease
/// lapses and another consumer claims the message while the handler still works on it: the
/// handler's token is cancelled, and its success is refused as a lost lease.
async fn rolled_back_then_lost(db: Db, test: &str, delete: bool) {
    let Some((url, table)) = fresh_table(db, "tx", test).await else {
        return;
    };
    drop_table(db, &url, &effects(&table)).await;
    let lease = Duration::from_millis(900);
    let options = consumer_options().lease_duration(lease);
    support::for_db!(db, |DB| {
        let one = vec![NewMessage::new("order", serde_json::json!({}))];
        let (queue, pool, name) = open_case!(DB, &url, &table, delete, one);
        // Another consumer's claim, an hour long, made while the handler still runs.
        let reclaim = set_lease(
            db,
            &table,
            "lease_owner = 'other', attempts = attempts + 1, ",
            1,
        );
        let cancelled = Arc::new(Mutex::new(None));
        let handler: Arc<dyn Handler> = {
            let (q, pool, insert) = (queue.clone(), pool.clone(), insert_effect(db, &table));
            let cancelled = cancelled.clone();
            Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
                let (q, pool, insert, reclaim) =
                    (q.clone(), pool.clone(), insert.clone(), reclaim.clone());
                let cancelled = cancelled.clone();
                async move {
                    let m = &batch[0];
                    let mut tx = pool.begin_with(begin(db)).await?;
                    effect_and_complete!(tx, q, &ctx, m, insert)?;
                    tx.rollback().await?;
                    sqlx::query(sqlx::AssertSqlSafe(reclaim))
                        .bind(m.id.as_str())
                        .execute(&pool)
                        .await?;
                    // The lease renewal finds the message gone and must tell the handler.
                    let told = tokio::time::timeout(lease * 5, ctx.cancelled())
                        .await
                        .is_ok();
                    *cancelled.lock().unwrap_or_else(|e| e.into_inner()) = Some(told);
                    Ok::<(), BoxError>(())
                }
            }))
        };
        let report = queue
            .consume_batch(&name, handler, &options)
            .await
            .expect("consume");
        assert_eq!(
            *cancelled.lock().unwrap_or_else(|e| e.into_inner()),
            Some(true),
            "{db:?}: the handler was told its lease was lost"
        );
        assert_eq!(
            (report.acked, report.lease_lost),
            (0, 1),
            "{db:?}: the rolled-back completion counts as a lost lease: {report:?}"
        );
        let counts = effect_counts!(&pool, &table);
        assert!(counts.is_empty(), "{db:?}: effects committed: {counts:?}");
        assert_eq!(
            message_rows!(&pool, &table),
            vec![("processing".to_owned(), 2)],
            "{db:?}: the other consumer holds the message"
        );
        queue.shutdown().await.expect("shutdown");
    });
    drop_table(db, &url, &effects(&table)).await;
    drop_table(db, &url, &table).await;
}

/// What one attempt to complete in a transaction returned: the error's text, and whether its
/// source is `mq_sql::Error::NotHeld` naming the message.
#[derive(Debug, Clone)]
struct Refusal {
    text: String,
    not_held: bool,
}

fn refusal(e: &mq_core::Error, id: &str) -> Refusal {
    let source = match e {
        mq_core::Error::Backend { source, .. } => source.downcast_ref::<mq_sql::Error>(),
        _ => None,
    };
    let not_held = matches!(source, Some(mq_sql::Error::NotHeld { id: i, .. }) if i == id);
    Refusal {
        text: source.map_or_else(|| e.to_string(), ToString::to_string),
        not_held,
    }
}

/// One message. Consumer A's handler stalls: its lease lapses (set in the past, as a paused
/// process would see it). It writes its effect and tries to complete in the transaction, which
/// fails; consumer B then claims the message and handles it (effect and completion committed);
/// A tries once more, fails again, rolls back and returns an error.
async fn lease_lost(db: Db, test: &str, delete: bool) {
    let Some((url, table)) = fresh_table(db, "tx", test).await else {
        return;
    };
    drop_table(db, &url, &effects(&table)).await;
    support::for_db!(db, |DB| {
        let opts = options(&table).delete_on_ack(delete);
        let queue_a = SqlQueue::<DB>::connect(&url, opts.clone())
            .await
            .expect("connect a");
        let queue_b = SqlQueue::<DB>::connect(&url, opts)
            .await
            .expect("connect b");
        let pool = queue_a.store().pool().clone();
        let name = QueueName::new("orders").expect("name");
        queue_a.register(&name).await.expect("register");
        queue_b.register(&name).await.expect("register");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {} (msg_id VARCHAR(100) NOT NULL)",
            effects(&table)
        )))
        .execute(&pool)
        .await
        .expect("create effects");
        publish_all(
            &queue_a,
            &name,
            vec![NewMessage::new("order", serde_json::json!({}))],
        )
        .await;
        let insert = insert_effect(db, &table);
        let expire = set_lease(db, &table, "", -1);

        /// A's try to complete `m` in a transaction that also writes its effect: the refusal,
        /// after rolling back (or nothing, after committing, which the test then sees).
        async fn attempt(
            db: Db,
            q: &SqlQueue<DB>,
            ctx: &HandlerContext,
            m: &Message,
            insert: &str,
        ) -> Result<Option<Refusal>, BoxError> {
            let mut tx = q.store().pool().begin_with(begin(db)).await?;
            sqlx::query(sqlx::AssertSqlSafe(insert.to_owned()))
                .bind(m.id.as_str())
                .execute(&mut *tx)
                .await?;
            match q.complete_in_tx(&mut tx, ctx, m).await {
                Ok(()) => {
                    tx.commit().await?;
                    Ok(None)
                }
                Err(e) => {
                    tx.rollback().await?;
                    Ok(Some(refusal(&e, m.id.as_str())))
                }
            }
        }

        let refusals: Arc<Mutex<Vec<Option<Refusal>>>> = Arc::default();
        let report_b: Arc<Mutex<BatchReport>> = Arc::default();
        let handler_a: Arc<dyn Handler> = {
            let (qa, qb, pool) = (queue_a.clone(), queue_b.clone(), pool.clone());
            let (refusals, report_b, name) = (refusals.clone(), report_b.clone(), name.clone());
            Arc::new(handler_fn(move |batch: Batch, ctx_a: HandlerContext| {
                let (qa, qb, pool, insert, expire) = (
                    qa.clone(),
                    qb.clone(),
                    pool.clone(),
                    insert.clone(),
                    expire.clone(),
                );
                let (refusals, report_b, name) = (refusals.clone(), report_b.clone(), name.clone());
                async move {
                    let m = batch[0].clone();
                    let push = |r: Option<Refusal>| {
                        refusals.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    };
                    // The stall: A's lease lapses.
                    sqlx::query(sqlx::AssertSqlSafe(expire))
                        .bind(m.id.as_str())
                        .execute(&pool)
                        .await?;
                    // Lapsed, not yet claimed by anyone else.
                    push(attempt(db, &qa, &ctx_a, &m, &insert).await?);
                    // B claims it; while B holds it A tries again, then B writes its effect
                    // and completes in its own transaction.
                    let handler_b = {
                        let (qa, qb, ctx_a, m, insert) = (
                            qa.clone(),
                            qb.clone(),
                            ctx_a.clone(),
                            m.clone(),
                            insert.clone(),
                        );
                        let refusals = refusals.clone();
                        handler_fn(move |batch: Batch, ctx_b: HandlerContext| {
                            let (qa, qb, ctx_a, m, insert) = (
                                qa.clone(),
                                qb.clone(),
                                ctx_a.clone(),
                                m.clone(),
                                insert.clone(),
                            );
                            let refusals = refusals.clone();
                            async move {
                                let r = attempt(db, &qa, &ctx_a, &m, &insert).await?;
                                refusals.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                                let mut tx = qb.store().pool().begin_with(begin(db)).await?;
                                for m in batch.iter() {
                                    effect_and_complete!(tx, qb, &ctx_b, m, insert)?;
                                }
                                tx.commit().await?;
                                Ok::<(), BoxError>(())
                            }
                        })
                    };
                    let rb = qb
                        .consume_batch(&name, Arc::new(handler_b), &consumer_options())
                        .await?;
                    *report_b.lock().unwrap_or_else(|e| e.into_inner()) = rb;
                    // Completed by B meanwhile.
                    push(attempt(db, &qa, &ctx_a, &m, &insert).await?);
                    Err::<(), BoxError>("the lease was lost".into())
                }
            }))
        };
        let report_a = queue_a
            .consume_batch(&name, handler_a, &consumer_options())
            .await
            .expect("consume a");
        let report_b = report_b.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let refusals = refusals.lock().unwrap_or_else(|e| e.into_inner()).clone();
        eprintln!("{db:?}: A {report_a:?}\nB {report_b:?}\nrefusals {refusals:#?}");

        assert_eq!(refusals.len(), 3, "{db:?}: A's tries: {refusals:?}");
        let refusals: Vec<Refusal> = refusals
            .into_iter()
            .map(|r| r.unwrap_or_else(|| panic!("{db:?}: A completed in its transaction")))
            .collect();
        assert!(
            refusals.iter().all(|r| r.not_held),
            "{db:?}: not a NotHeld error naming the message: {refusals:?}"
        );
        assert!(
            refusals[0].text.contains("expired"),
            "{db:?}: the first refusal names the lapsed lease: {}",
            refusals[0].text
        );
        assert!(
            refusals[1].text.contains("claimed it again (attempt 2)"),
            "{db:?}: the second refusal names B's claim: {}",
            refusals[1].text
        );
        assert_eq!(
            (report_b.acked, report_b.lease_lost),
            (1, 0),
            "{db:?}: B handled the message: {report_b:?}"
        );
        assert_eq!(
            (report_a.acked, report_a.lease_lost),
            (0, 1),
            "{db:?}: A's completion is refused as a lost lease: {report_a:?}"
        );
        let counts = effect_counts!(&pool, &table);
        assert_eq!(
            counts.values().sum::<u32>(),
            1,
            "{db:?}: effects committed: {counts:?}"
        );
        let rows = message_rows!(&pool, &table);
        if delete {
            assert!(rows.is_empty(), "{db:?}: {rows:?}");
        } else {
            assert_eq!(rows, vec![("executed".to_owned(), 2)], "{db:?}");
        }
        queue_a.shutdown().await.expect("shutdown a");
        queue_b.shutdown().await.expect("shutdown b");
    });
    drop_table(db, &url, &effects(&table)).await;
    drop_table(db, &url, &table).await;
}

/// Under an idempotency window, one message with a fixed id and one with a unique key and a
/// window are completed in the handler's transaction; publishing either again is refused.
async fn windows(db: Db, test: &str, delete: bool) {
    let Some((url, table)) = fresh_table(db, "tx", test).await else {
        return;
    };
    drop_table(db, &url, &effects(&table)).await;
    support::for_db!(db, |DB| {
        let hour = Duration::from_secs(3600);
        let opts = options(&table)
            .delete_on_ack(delete)
            .idempotency_window(hour);
        let queue = SqlQueue::<DB>::connect(&url, opts).await.expect("connect");
        let pool = queue.store().pool().clone();
        let name = QueueName::new("orders").expect("name");
        queue.register(&name).await.expect("register");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {} (msg_id VARCHAR(100) NOT NULL)",
            effects(&table)
        )))
        .execute(&pool)
        .await
        .expect("create effects");
        let fixed = mq_core::MessageId::new("fixed").expect("id");
        let fresh = || {
            vec![
                NewMessage::new("order", serde_json::json!({})).id(fixed.clone()),
                NewMessage::new("order", serde_json::json!({}))
                    .unique_key("k")
                    .unique_window(hour),
            ]
        };
        publish_all(&queue, &name, fresh()).await;

        let handler: Arc<dyn Handler> = {
            let (q, pool) = (queue.clone(), pool.clone());
            let insert = insert_effect(db, &table);
            Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
                let (q, pool, insert) = (q.clone(), pool.clone(), insert.clone());
                async move {
                    let mut tx = pool.begin_with(begin(db)).await?;
                    for m in batch.iter() {
                        effect_and_complete!(tx, q, &ctx, m, insert)?;
                    }
                    tx.commit().await?;
                    Ok::<(), BoxError>(())
                }
            }))
        };
        let done = until_settled!(pool, table);
        let report = drain(&queue, &name, handler, &consumer_options(), done).await;
        assert_eq!(
            (report.acked, report.lease_lost),
            (2, 0),
            "{db:?}: {report:?}"
        );
        let mut rows: Vec<(Option<String>, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT unique_key, status FROM {table}"
        )))
        .fetch_all(&pool)
        .await
        .expect("read messages");
        rows.sort();
        let expected: Vec<(Option<String>, String)> = if delete {
            // The keyed message is kept so its window can be read; the other one is deleted.
            vec![(Some("k".to_owned()), "executed".to_owned())]
        } else {
            vec![
                (None, "executed".to_owned()),
                (Some("k".to_owned()), "executed".to_owned()),
            ]
        };
        assert_eq!(rows, expected, "{db:?}");

        let report = queue.publish(&name, fresh()).await.expect("publish again");
        assert!(report.published.is_empty(), "{db:?}: {report:?}");
        let errors: Vec<&mq_core::Error> = report.failed.iter().map(|f| &f.error).collect();
        assert!(
            matches!(
                errors.as_slice(),
                [
                    mq_core::Error::DuplicateId { .. },
                    mq_core::Error::DuplicateKey { .. }
                ]
            ),
            "{db:?}: {errors:?}"
        );
        queue.shutdown().await.expect("shutdown");
    });
    drop_table(db, &url, &effects(&table)).await;
    drop_table(db, &url, &table).await;
}

/// A handler that completes each message of its batch in a transaction of its own, and works
/// on past a lease renewal after the first commit: the renewal finds that message completed,
/// which is no lost lease, so the handler is not cancelled and the other messages stay held.
async fn renewal_after_commit(db: Db, test: &str, delete: bool) {
    let Some((url, table)) = fresh_table(db, "tx", test).await else {
        return;
    };
    drop_table(db, &url, &effects(&table)).await;
    let lease = Duration::from_millis(900);
    let batch_of_three = ConsumerOptions::default()
        .batch_size(3)
        .lease_duration(lease);
    support::for_db!(db, |DB| {
        let three = (0..3)
            .map(|i| NewMessage::new("order", serde_json::json!({ "i": i })))
            .collect();
        let (queue, pool, name) = open_case!(DB, &url, &table, delete, three);
        let deliveries = Deliveries::default();
        let cancelled = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<dyn Handler> = {
            let (q, pool, deliveries) = (queue.clone(), pool.clone(), deliveries.clone());
            let cancelled = cancelled.clone();
            let insert = insert_effect(db, &table);
            Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
                let (q, pool, insert) = (q.clone(), pool.clone(), insert.clone());
                let cancelled = cancelled.clone();
                delivered(&deliveries, &batch);
                async move {
                    for m in batch.iter() {
                        let mut tx = pool.begin_with(begin(db)).await?;
                        effect_and_complete!(tx, q, &ctx, m, insert)?;
                        tx.commit().await?;
                        // Other work, long enough for a lease renewal to run.
                        tokio::time::sleep(lease / 2).await;
                        cancelled
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(ctx.is_cancelled());
                    }
                    Ok::<(), BoxError>(())
                }
            }))
        };
        let done = until_settled!(pool, table);
        let report = drain(&queue, &name, handler, &batch_of_three, done).await;
        let cancelled = cancelled.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(
            cancelled,
            [false, false, false],
            "{db:?}: the handler's token after each message: {report:?}"
        );
        assert_eq!(
            (report.acked, report.retried, report.lease_lost),
            (3, 0, 0),
            "{db:?}: {report:?}"
        );
        let counts = effect_counts!(&pool, &table);
        assert_eq!(counts.len(), 3, "{db:?}: {counts:?}");
        assert!(counts.values().all(|&n| n == 1), "{db:?}: {counts:?}");
        let d = deliveries.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(d.values().all(|&n| n == 1), "{db:?}: redelivered: {d:?}");
        queue.shutdown().await.expect("shutdown");
    });
    drop_table(db, &url, &effects(&table)).await;
    drop_table(db, &url, &table).await;
}
