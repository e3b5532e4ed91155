//! Try the Kinesis backend without AWS: an embedded Kinesis emulator, a two-shard stream,
//! messages published through `KinesisQueue` and consumed shard by shard.
//!
//! Run with `cargo run -p mq-rs --features kinesis --example kinesis_quickstart`. Shard leases
//! live in Redis when one answers at `REDIS_URL` (default `redis://127.0.0.1:6379`), as they
//! would across machines (under a key prefix of this run's own, since each run's emulator starts
//! a new stream); otherwise in memory, which is enough for one process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mq::kinesis::{InMemoryLeaseStore, KinesisOptions, LeaseStore, RedisLeaseStore};
use mq::prelude::*;

const STREAM: &str = "orders";
const MESSAGES: usize = 20;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // The emulator, in this process, on a free port.
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
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // Checkpoints of an earlier run's stream must not apply to this run's new one.
    let prefix = format!(
        "mq-quickstart-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let leases: Arc<dyn LeaseStore> = match tokio::time::timeout(
        Duration::from_secs(2),
        RedisLeaseStore::connect(&redis_url, &prefix),
    )
    .await
    {
        Ok(Ok(store)) => {
            println!("shard leases in Redis at {redis_url}");
            Arc::new(store)
        }
        _ => {
            println!("no Redis at {redis_url}: shard leases in memory");
            Arc::new(InMemoryLeaseStore::new())
        }
    };

    // Local credentials: the emulator accepts any.
    let options = KinesisOptions::new(leases)
        .region("us-east-1")
        .endpoint_url(&endpoint)
        .credentials("local", "local", None);
    let queue = KinesisQueue::connect(options).await?;
    queue
        .client()
        .create_stream()
        .stream_name(STREAM)
        .shard_count(2)
        .send()
        .await?;
    println!("emulator on {endpoint}, stream {STREAM:?} with 2 shards");
    let orders = QueueName::new(STREAM)?;
    queue.register(&orders).await?;

    let per_shard: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let (done, mut seen) = tokio::sync::mpsc::unbounded_channel::<()>();
    let counts = per_shard.clone();
    let handler = handler_fn(move |batch: Batch, ctx: HandlerContext| {
        let (counts, done) = (counts.clone(), done.clone());
        async move {
            let shard = ctx.shard_id().unwrap_or("?").to_owned();
            println!("{shard}: {} message(s)", batch.len());
            *counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(shard)
                .or_default() += batch.len();
            for _ in batch.iter() {
                let _ = done.send(());
            }
        }
    });
    let consumer = queue
        .consume(&orders, Arc::new(handler), ConsumerOptions::default())
        .await?;

    let messages = (0..MESSAGES)
        .map(|n| NewMessage::new("order-placed", serde_json::json!({ "order": n })))
        .collect();
    let report = queue.publish(&orders, messages).await?;
    println!("published {} message(s)", report.into_result()?.len());

    for _ in 0..MESSAGES {
        tokio::time::timeout(Duration::from_secs(30), seen.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the consumer stopped early"))?;
    }
    consumer.stop().await;
    queue.shutdown().await?;
    let counts = per_shard.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!("consumed {MESSAGES} message(s): {counts:?}");
    Ok(())
}
