//! On PostgreSQL a claim writes no index entry: it is a heap-only update, so taking a message
//! costs the same however many indexes the table has. A lease renewal moves the message's due
//! time to its new lease expiry, so claims stop reading messages that run for long.

#[path = "support/factory.rs"]
mod support;

use std::time::Duration;

use mq_core::backend::{Claim, Holder};
use mq_core::{CommonOptions, NewMessage, QueueName};
use support::{
    Db, connect_queue, connect_store_with, drop_table, fresh_table, options, publish_all,
    wait_until,
};

const MESSAGES: usize = 300;

/// Waits until the statistics have counted at least `n` updates of `table`; returns (updates,
/// heap-only updates). A server process reports its counts when it ends or has been idle for
/// a while, so callers end their connections first.
async fn counted_updates(pool: &sqlx::PgPool, table: &str, n: i64) -> (i64, i64) {
    let read = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("table statistics")
    };
    let what = format!("the statistics to count {n} updates");
    wait_until(Duration::from_secs(20), &what, || async {
        read().await.0 >= n
    })
    .await;
    read().await
}

/// How many running messages the claim's read of the ready index visits and skips.
async fn skipped_by_a_claim(pool: &sqlx::PgPool, table: &str) -> u64 {
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, COSTS OFF) SELECT ctid FROM {table} WHERE queue = 'hot' AND live = 1 \
           AND execute_at <= now() \
           AND CASE WHEN status = 'scheduled' THEN expires_at IS NULL OR expires_at > now() \
             ELSE lease_expires_at <= now() END \
         ORDER BY priority DESC, execute_at, seq LIMIT 500"
    )))
    .fetch_all(pool)
    .await
    .expect("explain");
    let plan = plan.join("\n");
    assert!(plan.contains(&format!("{table}_ready")), "{plan}");
    plan.lines()
        .filter_map(|l| l.trim().strip_prefix("Rows Removed by Filter: "))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// 300 messages claimed in 3 batches: all 300 updates are heap-only, and a claim reads past
/// the 300 running messages. Their leases renewed: a claim no longer reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_write_no_index_entry_and_renewals_leave_the_claim_path() {
    let db = Db::Postgres;
    let Some((url, table)) = fresh_table(db, "ho", "claims_heap_only").await else {
        return;
    };
    let q = connect_queue(db, &url, options(&table), CommonOptions::default()).await;
    let name = QueueName::new("hot").expect("name");
    q.register(&name).await.expect("register");
    publish_all(
        &*q,
        &name,
        (0..MESSAGES)
            .map(|i| NewMessage::new("t", serde_json::json!({ "i": i, "pad": "x".repeat(200) })))
            .collect(),
    )
    .await;
    q.shutdown().await.expect("shutdown");
    drop(q);
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let holder = || Holder::new("owner", Duration::from_secs(60));

    let store = connect_store_with(db, &url, options(&table)).await;
    let mut claims = Vec::new();
    for _ in 0..3 {
        let got = store
            .claim(&name, holder(), MESSAGES / 3)
            .await
            .expect("claim")
            .messages;
        claims.extend(got.iter().map(Claim::of));
    }
    assert_eq!(claims.len(), MESSAGES);
    drop(store);
    let n = i64::try_from(MESSAGES).expect("count");
    assert_eq!(
        counted_updates(&pool, &table, n).await,
        (n, n),
        "every claim must be a heap-only update"
    );
    assert_eq!(skipped_by_a_claim(&pool, &table).await, 300);

    let store = connect_store_with(db, &url, options(&table)).await;
    let lost = store.renew(&name, holder(), &claims).await.expect("renew");
    assert!(lost.is_empty(), "{lost:?}");
    drop(store);
    assert_eq!(counted_updates(&pool, &table, 2 * n).await.0, 2 * n);
    assert_eq!(
        skipped_by_a_claim(&pool, &table).await,
        0,
        "renewed messages must leave the part of the index a claim reads"
    );
    pool.close().await;
    drop_table(db, &url, &table).await;
}
