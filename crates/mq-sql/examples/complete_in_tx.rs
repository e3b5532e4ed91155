//! Exactly-once effects: the handler records each order's shipment and completes the order's
//! message in one transaction, so the shipment and the acknowledgement commit together or not
//! at all. A handler that fails before the commit leaves neither: the message is delivered
//! again and shipped once.
//!
//! Runs on SQLite in a file in the system's temp directory (no server needed):
//! `cargo run -p mq-sql --features sqlite --example complete_in_tx`. On PostgreSQL or
//! MySQL/MariaDB the code is the same with `PgQueue` or `MySqlQueue` (and a plain `BEGIN`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mq_core::{
    Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn,
};
use mq_sql::{SqlOptions, SqliteQueue, sqlx};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("mq-complete-in-tx-{}.db", std::process::id()));
    let queue = SqliteQueue::connect(
        &format!("sqlite://{}?mode=rwc", path.display()),
        SqlOptions::default().table("orders_queue"),
    )
    .await?;
    let pool = queue.store().pool().clone();
    sqlx::query("CREATE TABLE IF NOT EXISTS shipments (order_id TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let orders = QueueName::new("orders")?;
    queue.register(&orders).await?;
    let batch = (1..=3)
        .map(|n| NewMessage::new("order", serde_json::json!({ "order": n })))
        .collect();
    queue.publish(&orders, batch).await?.into_result()?;

    // The first delivery fails after writing its shipments: its transaction rolls back.
    let failed_once = Arc::new(AtomicBool::new(false));
    let handler = {
        let (queue, pool) = (queue.clone(), pool.clone());
        handler_fn(move |batch: Batch, ctx: HandlerContext| {
            let (queue, pool, failed_once) = (queue.clone(), pool.clone(), failed_once.clone());
            async move {
                // SQLite: take the write lock at once.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                for m in batch.iter() {
                    sqlx::query("INSERT INTO shipments (order_id) VALUES (?)")
                        .bind(m.payload["order"].as_i64())
                        .execute(&mut *tx)
                        .await?;
                    queue.complete_in_tx(&mut tx, &ctx, m).await?;
                }
                if !failed_once.swap(true, Ordering::SeqCst) {
                    println!("first delivery: failing before the commit");
                    tx.rollback().await?;
                    return Err("carrier unavailable".into());
                }
                tx.commit().await?;
                println!(
                    "shipped {} order(s) and completed their messages",
                    batch.len()
                );
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
    };
    let options = ConsumerOptions::default()
        .retry(mq_core::RetryPolicy::default().base_delay(Duration::from_millis(100)));
    let consumer = queue.consume(&orders, Arc::new(handler), options).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shipped: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM shipments")
            .fetch_one(&pool)
            .await?;
        // Messages still waiting or running.
        let open: u64 = queue
            .polling()
            .queue_stats(Some(&orders))
            .await?
            .iter()
            .flat_map(|s| s.counts.iter())
            .filter(|(status, _)| !status.is_terminal())
            .map(|(_, n)| n)
            .sum();
        if shipped == 3 && open == 0 {
            println!("3 orders, 3 shipments: each shipped exactly once");
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "orders not shipped in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.stop().await;
    queue.shutdown().await?;
    drop(pool);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
