//! Retention: finished rows older than the age are deleted (or archived) in bounded batches;
//! scheduled and processing rows are kept. On every database.

#[path = "support/factory.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use mq_core::{
    Batch, CommonOptions, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn,
};
use mq_sql::SqlQueue;
use support::{Db, drop_table, fresh_table, options, publish_all, test_on_each_db};

async fn purge(db: Db, test: &str, archive: bool) {
    let Some((url, table)) = fresh_table(db, "rp", test).await else {
        return;
    };
    let opts = options(&table).archive(archive);
    let name = QueueName::new("retention").expect("name");
    let publish_and_ack = |q: Arc<dyn MessageQueue>| {
        let name = name.clone();
        async move {
            q.register(&name).await.expect("register");
            let msgs = (0..25)
                .map(|i| NewMessage::new("t", serde_json::json!({"i": i})))
                .collect();
            publish_all(&*q, &name, msgs).await;
            let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
            let opts = mq_core::ConsumerOptions::default().batch_size(20);
            let r = q.consume_batch(&name, handler, &opts).await.expect("batch");
            assert_eq!(r.acked, 20);
            // 5 stay scheduled.
        }
    };
    let removed = support::for_db!(db, |DB| {
        let q = SqlQueue::<DB>::connect(&url, opts.common(CommonOptions::default()))
            .await
            .expect("connect");
        publish_and_ack(Arc::new(q.clone())).await;
        assert_eq!(
            q.purge_finished(Duration::from_secs(3600), 7)
                .await
                .expect("purge"),
            0,
            "too young"
        );
        let n = q.purge_finished(Duration::ZERO, 7).await.expect("purge");
        q.shutdown().await.expect("shutdown");
        n
    });
    assert_eq!(removed, 20, "{db:?}");
    drop_table(db, &url, &table).await;
}

test_on_each_db!(purge_delete, |db, test| purge(db, test, false));
test_on_each_db!(purge_archive, |db, test| purge(db, test, true));

/// A message id published again after its first run was archived is archived again: the second
/// purge must not fail on the first copy (which would stop retention for good).
async fn archive_keeps_the_latest_run_of_a_reused_id(db: Db, test: &str) {
    let Some((url, table)) = fresh_table(db, "ra", test).await else {
        return;
    };
    let opts = options(&table).archive(true);
    let name = QueueName::new("retention").expect("name");
    let id = mq_core::MessageId::new("reused-1").expect("id");
    let (first, second, archived) = support::for_db!(db, |DB| {
        let q = SqlQueue::<DB>::connect(&url, opts.common(CommonOptions::default()))
            .await
            .expect("connect");
        q.register(&name).await.expect("register");
        let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
        let batch = mq_core::ConsumerOptions::default().batch_size(10);
        let mut purged = Vec::new();
        for run in 0..2 {
            let m = NewMessage::new("t", serde_json::json!({ "run": run })).id(id.clone());
            publish_all(&q, &name, vec![m]).await;
            let r = q
                .consume_batch(&name, handler.clone(), &batch)
                .await
                .expect("batch");
            assert_eq!(r.acked, 1, "run {run}");
            purged.push(q.purge_finished(Duration::ZERO, 10).await);
        }
        let pool = q.store().pool().clone();
        let runs: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(payload AS CHAR(64)) FROM {table}_archive WHERE id = 'reused-1'"
        )))
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|e| vec![format!("archive unreadable: {e}")]);
        q.shutdown().await.expect("shutdown");
        let second = purged.pop().expect("two purges");
        let first = purged.pop().expect("two purges");
        (first, second, runs)
    });
    assert_eq!(first.expect("first purge"), 1, "{db:?}");
    let second = second.unwrap_or_else(|e| panic!("{db:?}: second purge failed: {e}"));
    assert_eq!(second, 1, "{db:?}");
    assert!(
        archived
            .iter()
            .any(|p| p.contains("\"run\":1") || p.contains("\"run\": 1")),
        "{db:?}: the archive holds the latest run: {archived:?}"
    );
    drop_table(db, &url, &table).await;
}

test_on_each_db!(
    archive_reused_id,
    archive_keeps_the_latest_run_of_a_reused_id
);

/// Retention by count keeps the newest finished rows (with any that finished at the same
/// instant as the last one kept) and never touches waiting ones.
async fn keeps_the_newest_finished_rows(db: Db, test: &str) {
    let Some((url, table)) = fresh_table(db, "rk", test).await else {
        return;
    };
    let opts = options(&table)
        .retention_keep(Some(7))
        .retention_interval(Duration::from_millis(100));
    let name = QueueName::new("retention").expect("name");
    let (finished, waiting, oldest_left) = support::for_db!(db, |DB| {
        let q = SqlQueue::<DB>::connect(&url, opts.common(CommonOptions::default()))
            .await
            .expect("connect");
        q.register(&name).await.expect("register");
        let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
        let batch = mq_core::ConsumerOptions::default().batch_size(5);
        // A batch of five, acknowledged by one statement at its own instant.
        let ack_round = async |round: i32| {
            let msgs = (0..5)
                .map(|i| NewMessage::new("t", serde_json::json!({ "round": round, "i": i })))
                .collect();
            publish_all(&q, &name, msgs).await;
            let r = q
                .consume_batch(&name, handler.clone(), &batch)
                .await
                .expect("batch");
            assert_eq!(r.acked, 5, "{db:?}: round {round}");
        };
        for round in 0..3 {
            ack_round(round).await;
        }
        let later = (0..4)
            .map(|i| {
                NewMessage::new("t", serde_json::json!({ "later": i }))
                    .delay(Duration::from_secs(3600))
            })
            .collect();
        publish_all(&q, &name, later).await;
        let pool = q.store().pool().clone();
        let count = |status: &'static str| {
            let pool = pool.clone();
            let table = table.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM {table} WHERE status = '{status}'"
                )))
                .fetch_one(&pool)
                .await
                .expect("count")
            }
        };
        // The first round goes: the seventh newest row is in the second round, which stays
        // whole with the third.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while count("executed").await != 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "{db:?}: retention never got down to 10 finished rows: {}",
                count("executed").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A fourth round: a later pass removes the second round and keeps the third whole
        // beside the fourth, so passes after the count first read 10 removed no more.
        ack_round(3).await;
        let payloads = || async {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                "SELECT CAST(payload AS CHAR(64)) FROM {table} WHERE status = 'executed'"
            )))
            .fetch_all(&pool)
            .await
            .expect("payloads")
        };
        let mut rounds = payloads().await;
        while rounds.iter().any(|p| of_round(p, 1)) {
            assert!(
                std::time::Instant::now() < deadline,
                "{db:?}: retention never removed the second round: {rounds:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            rounds = payloads().await;
        }
        let finished = count("executed").await;
        let waiting = count("scheduled").await;
        q.shutdown().await.expect("shutdown");
        (finished, waiting, rounds)
    });
    assert_eq!(finished, 10, "{db:?}");
    assert_eq!(waiting, 4, "{db:?}: waiting rows are never purged");
    assert!(
        oldest_left.iter().all(|p| !of_round(p, 0)),
        "{db:?}: the oldest round is the one removed: {oldest_left:?}"
    );
    drop_table(db, &url, &table).await;
}

test_on_each_db!(retention_keep, keeps_the_newest_finished_rows);

/// Whether the JSON text `payload` is of round `round` (PostgreSQL writes a space after colons).
fn of_round(payload: &str, round: i32) -> bool {
    payload.contains(&format!("\"round\":{round}"))
        || payload.contains(&format!("\"round\": {round}"))
}
