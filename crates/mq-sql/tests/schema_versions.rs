//! Versioned schema: a table written by the first or the second schema version, with messages
//! in it, is upgraded in place by `connect`; a runtime that may not change the schema names what is
//! missing; and the idempotency window that the second version adds keeps acknowledged ids
//! taken under `delete_on_ack`.

#[path = "support/factory.rs"]
mod support;

use std::time::Duration;

use mq_core::{
    Batch, CommonOptions, ConsumerOptions, HandlerContext, MessageId, MessageQueue, NewMessage,
    QueueName, Status, handler_fn,
};
use mq_sql::{SqlOptions, SqlQueue, SqlStore};
use serde_json::json;
use std::sync::Arc;
use support::{Db, drop_table, fresh_table, options, publish_all, test_on_each_db};

/// Runs `sql` on `url`.
async fn exec(db: Db, url: &str, sql: &str) {
    support::for_db!(db, |DB| {
        let pool = sqlx::Pool::<DB>::connect(url).await.expect("pool");
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
    })
}

/// Turns `table` back into what the first schema version left: no table of versions and none
/// of what later versions added.
async fn back_to_first_version(db: Db, url: &str, table: &str) {
    back_to_second_version(db, url, table).await;
    exec(db, url, &format!("DROP TABLE {table}_versions")).await;
    exec(db, url, &format!("DROP TABLE {table}_ids")).await;
}

/// Turns a PostgreSQL `table` back into what the third schema version left: claims write the
/// status into the partial indexes again, and the lease index is back.
async fn back_to_third_version(url: &str, table: &str) {
    let t = table;
    let steps = [
        // Dropping the column drops the indexes that read it.
        format!("ALTER TABLE {t} DROP COLUMN live"),
        format!("ALTER TABLE {t} RESET (fillfactor)"),
        format!("ALTER TABLE {t}_archive DROP COLUMN live"),
        format!(
            "CREATE INDEX {t}_ready ON {t} (queue, priority DESC, execute_at, seq) \
             WHERE status = 'scheduled'"
        ),
        format!(
            "CREATE INDEX {t}_leased ON {t} (queue, lease_expires_at) WHERE status = 'processing'"
        ),
        format!(
            "CREATE INDEX {t}_expiring ON {t} (queue, expires_at) \
             WHERE status = 'scheduled' AND expires_at IS NOT NULL"
        ),
        format!(
            "CREATE UNIQUE INDEX {t}_unique ON {t} (queue, unique_key) \
             WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'processing')"
        ),
        format!(
            "CREATE INDEX {t}_finished ON {t} (updated_at) \
             WHERE status IN ('executed', 'failed', 'expired', 'dead_lettered', 'cancelled')"
        ),
        format!("DELETE FROM {t}_versions WHERE version = 4"),
    ];
    for sql in steps {
        exec(Db::Postgres, url, &sql).await;
    }
}

/// Turns `table` back into what the second schema version left: without the columns, indexes
/// and pause table of the queue controls, and without their version recorded.
async fn back_to_second_version(db: Db, url: &str, table: &str) {
    let t = table;
    if db == Db::Postgres {
        back_to_third_version(url, t).await;
    }
    let old_ready = format!(
        "CREATE INDEX {t}_ready ON {t} (queue, execute_at, seq) WHERE status = 'scheduled'"
    );
    let old_finished = format!(
        "CREATE INDEX {t}_finished ON {t} (updated_at) \
         WHERE status IN ('executed', 'failed', 'expired', 'dead_lettered')"
    );
    let steps: Vec<String> = match db {
        Db::Postgres => vec![
            format!(
                "ALTER TABLE {t} DROP COLUMN priority, DROP COLUMN unique_key, DROP COLUMN unique_window_ms"
            ),
            format!(
                "ALTER TABLE {t}_archive DROP COLUMN priority, DROP COLUMN unique_key, DROP COLUMN unique_window_ms"
            ),
            old_ready,
            format!("DROP INDEX {t}_finished"),
            old_finished,
        ],
        Db::MySql => vec![
            format!(
                "ALTER TABLE {t} DROP INDEX {t}_ready, DROP INDEX {t}_unique, DROP INDEX {t}_keys, \
                 DROP COLUMN unique_held, DROP COLUMN priority, DROP COLUMN unique_key, \
                 DROP COLUMN unique_window_ms, ADD KEY {t}_ready (queue, status, execute_at, seq)"
            ),
            format!(
                "ALTER TABLE {t}_archive DROP COLUMN unique_held, DROP COLUMN priority, \
                 DROP COLUMN unique_key, DROP COLUMN unique_window_ms"
            ),
        ],
        Db::Sqlite => {
            let mut v = vec![
                format!("DROP INDEX {t}_ready"),
                format!("DROP INDEX {t}_unique"),
                format!("DROP INDEX {t}_keys"),
                format!("DROP INDEX {t}_finished"),
            ];
            for c in ["priority", "unique_key", "unique_window_ms"] {
                v.push(format!("ALTER TABLE {t} DROP COLUMN {c}"));
                v.push(format!("ALTER TABLE {t}_archive DROP COLUMN {c}"));
            }
            v.push(old_ready);
            v.push(old_finished);
            v
        }
    };
    for sql in steps {
        exec(db, url, &sql).await;
    }
    exec(db, url, &format!("DROP TABLE {t}_paused")).await;
    exec(
        db,
        url,
        &format!("DELETE FROM {t}_versions WHERE version = 3"),
    )
    .await;
}

async fn upgrade_in_place(db: Db, test: &str) {
    upgrade_from(db, test, 1).await;
}

async fn upgrade_second_version(db: Db, test: &str) {
    upgrade_from(db, test, 2).await;
}

/// Messages `0..n`, each carrying its number as `i` (the field the recording handler reads).
fn numbered(n: u64) -> Vec<NewMessage> {
    (0..n)
        .map(|i| NewMessage::new("t", json!({ "i": i })))
        .collect()
}

/// A table of schema version `from` (1 or 2) with messages in it is upgraded by `connect`; the
/// old messages are all handled, and the controls the upgrade adds work on it.
async fn upgrade_from(db: Db, test: &str, from: u32) {
    let Some((url, table)) = fresh_table(db, "sv", test).await else {
        return;
    };
    let name = QueueName::new("upgrade").expect("name");
    support::for_db!(db, |DB| {
        let q = SqlQueue::<DB>::connect(&url, options(&table).common(CommonOptions::default()))
            .await
            .expect("connect");
        q.register(&name).await.expect("register");
        publish_all(&q, &name, numbered(5)).await;
        q.shutdown().await.expect("shutdown");
    });
    if from == 1 {
        back_to_first_version(db, &url, &table).await;
    } else {
        back_to_second_version(db, &url, &table).await;
    }

    // A runtime without schema rights refuses the old table, naming what it lacks.
    let (pending, refused) = support::for_db!(db, |DB| {
        let pool = sqlx::Pool::<DB>::connect(&url).await.expect("pool");
        let listed = SqlStore::<DB>::migrations(&pool, &options(&table))
            .await
            .expect("migrations");
        pool.close().await;
        let refused = SqlStore::<DB>::connect(&url, options(&table).create_schema(false))
            .await
            .err()
            .map(|e| format!("{e}: {}", e_source(&e)));
        (listed, refused)
    });
    let pending: Vec<_> = pending
        .iter()
        .filter(|m| !m.applied)
        .map(|m| m.name)
        .collect();
    // PostgreSQL has a fourth version.
    let expected = usize::from(db == Db::Postgres) + if from == 1 { 3 } else { 1 };
    assert_eq!(
        pending.len(),
        expected,
        "{db:?}: before the upgrade from version {from}: {pending:?}"
    );
    let refused = refused.expect("create_schema(false) refuses a table behind");
    assert!(refused.contains("0003_controls"), "{db:?}: {refused}");
    if from == 1 {
        assert!(refused.contains("0002_remembered_ids"), "{db:?}: {refused}");
    }

    // A read-only look needs no upgrade: the old table's numbers are read as it is.
    let stats = support::for_db!(db, |DB| {
        let pool = sqlx::Pool::<DB>::connect(&url).await.expect("pool");
        let stats = SqlStore::<DB>::read_queue_stats(pool.clone(), &options(&table), Some(&name))
            .await
            .map_err(|e| format!("{e}: {}", e_source(&e)));
        pool.close().await;
        stats
    });
    let stats =
        stats.unwrap_or_else(|e| panic!("{db:?}: the numbers of a version {from} table: {e}"));
    assert_eq!(stats.len(), 1, "{db:?}: {stats:?}");
    assert_eq!(stats[0].count(Status::Scheduled), 5, "{db:?}: {stats:?}");

    // Connecting with schema rights upgrades it; the messages are still there.
    let (listed, handled) = support::for_db!(db, |DB| {
        let q = SqlQueue::<DB>::connect(&url, options(&table).common(CommonOptions::default()))
            .await
            .expect("upgrade");
        q.register(&name).await.expect("register");
        let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
        let r = q
            .consume_batch(&name, handler, &ConsumerOptions::default().batch_size(10))
            .await
            .expect("batch");
        let listed = SqlStore::<DB>::migrations(q.store().pool(), &options(&table))
            .await
            .expect("migrations");
        // The upgraded table has the controls: keys refuse, priorities order, pause holds.
        let report = q
            .publish(
                &name,
                vec![
                    NewMessage::new("t", json!({ "i": 10 })).unique_key("k"),
                    NewMessage::new("t", json!({ "i": 11 })).unique_key("k"),
                    NewMessage::new("t", json!({ "i": 12 })).priority(3),
                ],
            )
            .await
            .expect("publish after the upgrade");
        assert_eq!(report.published.len(), 2, "{db:?}: {:?}", report.failed);
        assert!(
            matches!(report.failed[0].error, mq_core::Error::DuplicateKey { .. }),
            "{db:?}: {}",
            report.failed[0].error
        );
        q.pause(&name).await.expect("pause");
        assert!(q.is_paused(&name).await.expect("is paused"), "{db:?}");
        q.resume(&name).await.expect("resume");
        let (seen, handler) = support::recording_handler("i");
        let after = q
            .consume_batch(&name, handler, &ConsumerOptions::default().batch_size(10))
            .await
            .expect("batch");
        assert_eq!(after.acked, 2, "{db:?}");
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(seen, [12, 10], "{db:?}: the higher priority first");
        q.shutdown().await.expect("shutdown");
        // A second connect finds nothing to do.
        let again = SqlStore::<DB>::connect(&url, options(&table).create_schema(false)).await;
        assert!(again.is_ok(), "{db:?}: {:?}", again.err());
        (listed, r.acked)
    });
    eprintln!("{db:?}: after the upgrade {listed:?}; {handled} old messages handled");
    assert!(listed.iter().all(|m| m.applied), "{db:?}: {listed:?}");
    assert_eq!(handled, 5, "{db:?}: the old messages survive the upgrade");
    drop_table(db, &url, &table).await;
}

fn e_source(e: &mq_core::Error) -> String {
    std::error::Error::source(e)
        .map(ToString::to_string)
        .unwrap_or_default()
}

test_on_each_db!(upgrade, upgrade_in_place);
test_on_each_db!(upgrade_v2, upgrade_second_version);

/// Under `delete_on_ack`, an acknowledged message's id is refused for the idempotency window;
/// without a window it is free again at once (as documented).
async fn acked_ids_stay_taken(db: Db, test: &str) {
    let Some((url, table)) = fresh_table(db, "si", test).await else {
        return;
    };
    let name = QueueName::new("ids").expect("name");
    let id = MessageId::new("once-1").expect("id");
    for window in [Duration::ZERO, Duration::from_secs(3600)] {
        let opts: SqlOptions = options(&table)
            .delete_on_ack(true)
            .idempotency_window(window)
            .common(CommonOptions::default());
        let (second, purged) = support::for_db!(db, |DB| {
            let q = SqlQueue::<DB>::connect(&url, opts).await.expect("connect");
            q.register(&name).await.expect("register");
            let first = NewMessage::new("t", json!({})).id(id.clone());
            publish_all(&q, &name, vec![first]).await;
            let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
            let r = q
                .consume_batch(&name, handler, &ConsumerOptions::default())
                .await
                .expect("batch");
            assert_eq!(r.acked, 1, "{db:?}");
            let again = NewMessage::new("t", json!({})).id(id.clone());
            let report = q.publish(&name, vec![again]).await.expect("publish");
            let purged = q.purge_finished(Duration::ZERO, 100).await.expect("purge");
            q.shutdown().await.expect("shutdown");
            (report, purged)
        });
        eprintln!(
            "{db:?} window {window:?}: republished {}, refused {:?}",
            second.published.len(),
            second
                .failed
                .iter()
                .map(|f| f.error.to_string())
                .collect::<Vec<_>>()
        );
        if window.is_zero() {
            assert_eq!(
                second.published.len(),
                1,
                "{db:?}: no window, the id is free"
            );
            drop_table(db, &url, &table).await;
        } else {
            assert_eq!(second.published.len(), 0, "{db:?}: the id is still taken");
            assert!(
                second.failed[0]
                    .error
                    .to_string()
                    .contains("already exists"),
                "{db:?}: {}",
                second.failed[0].error
            );
            assert_eq!(
                purged, 0,
                "{db:?}: retention keeps rows younger than the window"
            );
        }
    }
    drop_table(db, &url, &table).await;
}

test_on_each_db!(idempotency_window, acked_ids_stay_taken);

/// A PostgreSQL table of the third schema version with waiting, running and finished messages
/// in it is upgraded by `connect`: the waiting ones are delivered, the running ones come back
/// when their lease runs out (the upgrade drops the lease index they were found by), and the
/// finished ones stay finished. Each of the 4 unfinished messages is handled exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upgrade_v3_with_running_and_finished() {
    use mq_core::backend::{Claim, Completion, CompletionAction, Holder, QueueStore};
    let db = Db::Postgres;
    let Some((url, table)) = fresh_table(db, "sv", "upgrade_v3").await else {
        return;
    };
    let name = QueueName::new("upgrade").expect("name");
    let q = SqlQueue::<sqlx::Postgres>::connect(&url, options(&table))
        .await
        .expect("connect");
    q.register(&name).await.expect("register");
    publish_all(&q, &name, numbered(6)).await;
    // A consumer takes 4, acknowledges 2 and stops without a word about the other 2.
    let taken = q
        .store()
        .claim(&name, Holder::new("gone", Duration::from_millis(300)), 4)
        .await
        .expect("claim")
        .messages;
    assert_eq!(taken.len(), 4);
    let acked: Vec<Completion> = taken[..2]
        .iter()
        .map(|m| Completion::new(Claim::of(m), CompletionAction::Ack))
        .collect();
    let refused = q
        .store()
        .complete(&name, "gone", acked)
        .await
        .expect("complete");
    assert!(refused.is_empty(), "{refused:?}");
    q.shutdown().await.expect("shutdown");
    back_to_third_version(&url, &table).await;

    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let pending: Vec<_> = SqlStore::<sqlx::Postgres>::migrations(&pool, &options(&table))
        .await
        .expect("migrations")
        .into_iter()
        .filter(|m| !m.applied)
        .map(|m| m.name)
        .collect();
    assert_eq!(pending, ["postgres/0004_heap_only_claims.sql"]);

    let q = SqlQueue::<sqlx::Postgres>::connect(&url, options(&table))
        .await
        .expect("upgrade");
    q.register(&name).await.expect("register");
    let stats = SqlStore::<sqlx::Postgres>::read_queue_stats(pool.clone(), &options(&table), None)
        .await
        .expect("stats");
    assert_eq!(
        (
            stats[0].count(Status::Scheduled),
            stats[0].count(Status::Processing),
            stats[0].count(Status::Executed)
        ),
        (2, 2, 2),
        "{stats:?}"
    );
    let (seen, handler) = support::recording_handler("i");
    support::wait_until(
        Duration::from_secs(20),
        "every unfinished message to come back",
        || async {
            let _report = q
                .consume_batch(
                    &name,
                    handler.clone(),
                    &ConsumerOptions::default().batch_size(10),
                )
                .await
                .expect("batch");
            seen.lock().unwrap_or_else(|e| e.into_inner()).len() >= 4
        },
    )
    .await;
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    seen.sort_unstable();
    let mut expected: Vec<u64> = taken[2..]
        .iter()
        .filter_map(|m| m.payload["i"].as_u64())
        .chain([4, 5])
        .collect();
    expected.sort_unstable();
    assert_eq!(
        seen, expected,
        "each unfinished message once, no finished one"
    );
    let stats = SqlStore::<sqlx::Postgres>::read_queue_stats(pool.clone(), &options(&table), None)
        .await
        .expect("stats");
    assert_eq!(stats[0].count(Status::Executed), 6, "{stats:?}");
    q.shutdown().await.expect("shutdown");
    pool.close().await;
    drop_table(db, &url, &table).await;
}
