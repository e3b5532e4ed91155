//! Kinesis shard leases in a database instead of Redis: two instances share a four-shard stream
//! of an embedded Kinesis emulator through a lease table in one SQLite file, split the shards
//! between them, and when one stops the other takes its shards over.
//!
//! Run with `cargo run -p mq-rs --features kinesis,sql-sqlite --example kinesis_table_leases`.
//! Across machines, open the table on the database the fleet runs instead:
//! `mq::sql::PgLeaseTable::connect("postgres://...", "kinesis_leases")`, or
//! `MySqlLeaseTable`, or `mq::mongo::MongoLeaseTable`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mq::kinesis::{KinesisOptions, LeaseStore, TableLeaseStore};
use mq::prelude::*;
use mq::sql::SqliteLeaseTable;

const STREAM: &str = "orders";
const MESSAGES: usize = 8;

/// The live owners of the stream's shards, by instance.
async fn owners(store: &TableLeaseStore) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for lease in store.leases(STREAM).await? {
        if let (true, Some(owner)) = (lease.live, lease.owner) {
            out.entry(owner).or_default().push(lease.shard);
        }
    }
    Ok(out)
}

/// Waits until `want` instances hold two shards each, or one holds all four.
async fn settle(store: &TableLeaseStore, want: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = owners(store).await?;
        if now.len() == want && now.values().all(|s| s.len() == 4 / want) {
            println!("owners: {now:?}");
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not settled: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (app, _state) = ferrokinesis::create_app(ferrokinesis::store::StoreOptions {
        create_stream_ms: 0,
        update_stream_ms: 0,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // A fresh file each run: the emulator's stream is new each run too.
    let path = std::env::temp_dir().join(format!("mq-table-leases-{}.db", std::process::id()));
    let url = format!("sqlite://{}", path.display());
    let table = Arc::new(SqliteLeaseTable::connect(&url, "kinesis_leases").await?);
    println!(
        "shard leases in the table kinesis_leases of {}",
        path.display()
    );

    let orders = QueueName::new(STREAM)?;
    let handled = Arc::new(AtomicUsize::new(0));
    let mut instances = Vec::new();
    for name in ["instance-a", "instance-b"] {
        // each instance opens the same table; here they share the pool of one file
        let store = TableLeaseStore::new(table.clone());
        let options = KinesisOptions::new(Arc::new(store))
            .instance_id(name)
            .region("us-east-1")
            .endpoint_url(&endpoint)
            .credentials("local", "local", None);
        let queue = KinesisQueue::connect(options).await?;
        if instances.is_empty() {
            queue
                .client()
                .create_stream()
                .stream_name(STREAM)
                .shard_count(4)
                .send()
                .await?;
        }
        queue.register(&orders).await?;
        let count = handled.clone();
        let handler = handler_fn(move |batch: Batch, ctx: HandlerContext| {
            let count = count.clone();
            async move {
                let shard = ctx.shard_id().unwrap_or("?");
                println!("{name} {shard}: {} message(s)", batch.len());
                count.fetch_add(batch.len(), Ordering::SeqCst);
            }
        });
        let consumer = queue
            .consume(&orders, Arc::new(handler), ConsumerOptions::default())
            .await?;
        instances.push((queue, consumer));
    }
    let observer = TableLeaseStore::new(table.clone());
    settle(&observer, 2).await?;

    // instance-b stops (a crash would do the same, after the membership TTL of 2 s)
    let (queue, consumer) = instances
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no instance"))?;
    consumer.stop().await;
    queue.shutdown().await?;
    println!("instance-b stopped");
    settle(&observer, 1).await?;

    // instance-a now reads every shard, instance-b's included
    let messages = (0..MESSAGES)
        .map(|n| NewMessage::new("order-placed", serde_json::json!({ "order": n })))
        .collect();
    instances[0]
        .0
        .publish(&orders, messages)
        .await?
        .into_result()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while handled.load(Ordering::SeqCst) < MESSAGES {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not all messages handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("instance-a handled all {MESSAGES} message(s)");

    for (queue, consumer) in instances {
        consumer.stop().await;
        queue.shutdown().await?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
