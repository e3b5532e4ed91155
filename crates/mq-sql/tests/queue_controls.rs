//! Queue controls under concurrency and across processes: unique keys raced by many publishers
//! (the database's unique index decides), a pause seen by another queue instance on the same
//! table, and the claim of a prioritized queue read in index order on PostgreSQL.

#[path = "support/factory.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;

use mq_core::{CommonOptions, ConsumerOptions, MessageQueue, NewMessage, QueueName};
use serde_json::json;
use support::{Db, connect_queue, drop_table, fresh_table, options, test_on_each_db};

const PUBLISHERS: usize = 8;
const KEYS: usize = 40;

/// 8 publishers each publish one message for each of 40 keys at once, in batches of 10 and in
/// different orders: exactly one message per key is stored, every other one is refused with
/// `DuplicateKey` naming the stored one, and nothing else fails.
async fn unique_key_race(db: Db, test: &str) {
    let Some((url, table)) = fresh_table(db, "qk", test).await else {
        return;
    };
    let name = QueueName::new("race").expect("name");
    let mut queues = Vec::new();
    for _ in 0..PUBLISHERS {
        let q = connect_queue(db, &url, options(&table), CommonOptions::default()).await;
        q.register(&name).await.expect("register");
        queues.push(q);
    }
    let start = Arc::new(tokio::sync::Barrier::new(PUBLISHERS));
    let mut tasks = Vec::new();
    for (p, q) in queues.iter().cloned().enumerate() {
        let (name, start) = (name.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let mut keys: Vec<usize> = (0..KEYS).collect();
            keys.rotate_left(p * 5);
            if p % 2 == 1 {
                keys.reverse();
            }
            start.wait().await;
            let mut stored = Vec::new();
            let mut refused = Vec::new();
            let mut other = Vec::new();
            for chunk in keys.chunks(10) {
                let batch: Vec<NewMessage> = chunk
                    .iter()
                    .map(|k| {
                        NewMessage::new("t", json!({ "p": p, "k": k })).unique_key(format!("k{k}"))
                    })
                    .collect();
                let report = match q.publish(&name, batch).await {
                    Ok(r) => r,
                    Err(e) => {
                        other.push(e.to_string());
                        continue;
                    }
                };
                stored.extend(report.published.iter().cloned());
                for f in report.failed {
                    match f.error {
                        mq_core::Error::DuplicateKey { key, holder, .. } => {
                            refused.push((key, holder))
                        }
                        e => other.push(e.to_string()),
                    }
                }
            }
            (stored, refused, other)
        }));
    }
    let mut stored = Vec::new();
    let mut refused = Vec::new();
    let mut other = Vec::new();
    for t in tasks {
        let (s, r, o) = t.await.expect("publisher");
        stored.extend(s);
        refused.extend(r);
        other.extend(o);
    }
    // What the table holds: one waiting message per key.
    let held: HashMap<String, String> = support::for_db!(db, |DB| {
        let pool = sqlx::Pool::<DB>::connect(&url).await.expect("pool");
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT unique_key, id FROM {table} WHERE status = 'scheduled'"
        )))
        .fetch_all(&pool)
        .await
        .expect("read keys");
        pool.close().await;
        let n = rows.len();
        let map: HashMap<String, String> = rows.into_iter().collect();
        assert_eq!(map.len(), n, "{db:?}: a key is stored twice");
        map
    });
    eprintln!(
        "{db:?}: {} stored, {} refused as duplicate keys, {} other errors, {} keys held",
        stored.len(),
        refused.len(),
        other.len(),
        held.len()
    );
    assert!(other.is_empty(), "{db:?}: other failures: {other:?}");
    assert_eq!(stored.len(), KEYS, "{db:?}: stored one message per key");
    assert_eq!(held.len(), KEYS, "{db:?}");
    assert_eq!(refused.len(), KEYS * (PUBLISHERS - 1), "{db:?}");
    for (key, holder) in &refused {
        assert_eq!(
            held.get(key).map(String::as_str),
            Some(holder.as_str()),
            "{db:?}: the refusal of {key} names the stored holder"
        );
    }
    for q in queues {
        q.shutdown().await.expect("shutdown");
    }
    drop_table(db, &url, &table).await;
}

test_on_each_db!(unique_keys_race, unique_key_race);

/// The payload field `n` of what one `consume_batch` of `q` handles.
async fn take(q: &Arc<dyn MessageQueue>, name: &QueueName) -> Vec<u64> {
    let (seen, handler) = support::recording_handler("n");
    let report = q
        .consume_batch(name, handler, &ConsumerOptions::default().batch_size(10))
        .await
        .expect("consume_batch");
    assert_eq!(report.acked, report.delivered);
    seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A queue paused through one instance hands out nothing through another on the same table
/// until it is resumed; publishing through the other still works.
async fn pause_across_instances(db: Db, test: &str) {
    let Some((url, table)) = fresh_table(db, "qp", test).await else {
        return;
    };
    let name = QueueName::new("paused").expect("name");
    let a = connect_queue(db, &url, options(&table), CommonOptions::default()).await;
    let b = connect_queue(db, &url, options(&table), CommonOptions::default()).await;
    a.register(&name).await.expect("register");
    b.register(&name).await.expect("register");
    a.pause(&name).await.expect("pause");
    assert!(b.is_paused(&name).await.expect("is_paused"), "{db:?}");
    b.publish(
        &name,
        (0..3)
            .map(|n| NewMessage::new("t", json!({ "n": n })))
            .collect(),
    )
    .await
    .expect("publish")
    .into_result()
    .expect("stored while paused");
    let while_paused = take(&b, &name).await;
    a.resume(&name).await.expect("resume");
    assert!(!b.is_paused(&name).await.expect("is_paused"), "{db:?}");
    let after = take(&b, &name).await;
    eprintln!("{db:?}: while paused {while_paused:?}, after resume {after:?}");
    assert!(while_paused.is_empty(), "{db:?}: claimed while paused");
    assert_eq!(after, [0, 1, 2], "{db:?}");
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
    drop_table(db, &url, &table).await;
}

test_on_each_db!(pause_is_shared, pause_across_instances);

/// PostgreSQL reads a claim of a prioritized queue in index order, on a new table without
/// statistics as on an analyzed one: the ready index gives priority, due time and publication
/// order, so no sort runs over the waiting rows, and the pause check is one lookup made once per
/// claim. (The statement is the pick of the claim.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_in_index_order() {
    let Some((url, table)) = fresh_table(Db::Postgres, "qe", "claim_plan").await else {
        return;
    };
    let q = connect_queue(
        Db::Postgres,
        &url,
        options(&table),
        CommonOptions::default(),
    )
    .await;
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let run = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    };
    // No statistics until the test asks for them: a new table's claims must read the index in
    // order too.
    run(format!(
        "ALTER TABLE {table} SET (autovacuum_enabled = false)"
    ))
    .await;
    run(format!(
        "INSERT INTO {table} (queue, id, message_type, payload, execute_at, created_at, \
         updated_at, priority) \
         SELECT CASE WHEN i % 4 = 0 THEN 'other' ELSE 'q' END, 'm' || i, 't', '{{}}', \
           now() - interval '1 minute', now(), now(), (i % 5)::smallint \
         FROM generate_series(1, 50000) i"
    ))
    .await;
    for stats in ["without statistics", "with statistics"] {
        if stats == "with statistics" {
            run(format!("ANALYZE {table}")).await;
        }
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN SELECT ctid FROM {table} WHERE queue = 'q' AND live = 1 AND execute_at <= now() \
               AND CASE WHEN status = 'scheduled' THEN expires_at IS NULL OR expires_at > now() \
                 ELSE lease_expires_at <= now() END \
               AND NOT EXISTS (SELECT 1 FROM {table}_paused WHERE queue = 'q') \
             ORDER BY priority DESC, execute_at, seq LIMIT 500 FOR UPDATE SKIP LOCKED"
        )))
        .fetch_all(&pool)
        .await
        .expect("explain");
        let plan = rows.join("\n");
        eprintln!("{stats}:\n{plan}");
        assert!(plan.contains(&format!("{table}_ready")), "{stats}: {plan}");
        assert!(
            !plan.contains("Sort"),
            "{stats}: a sort over the waiting rows:\n{plan}"
        );
    }
    pool.close().await;
    q.shutdown().await.expect("shutdown");
    drop_table(Db::Postgres, &url, &table).await;
}
