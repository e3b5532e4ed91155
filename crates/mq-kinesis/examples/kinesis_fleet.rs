//! A fleet on one machine: three instances share an 8-shard stream on an embedded ferrokinesis
//! emulator, a fourth joins, one leaves; the shard assignment is printed after each step.
//!
//! ```text
//! cargo run -p mq-kinesis --example kinesis_fleet
//! ```
//!
//! The instances share an `InMemoryLeaseStore` here; across machines use `RedisLeaseStore`.

// the emulator the integration tests run on
#[path = "../tests/common/emulator.rs"]
mod emulator;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use emulator::Emulator;
use mq_core::{Batch, ConsumerOptions, HandlerContext, MessageQueue, QueueName, handler_fn};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, LeaseStore};

const STREAM: &str = "orders";

/// Live lease owners and how many shards each holds.
async fn owners(store: &InMemoryLeaseStore) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for l in store.leases(STREAM).await? {
        if let (true, Some(o)) = (l.live, l.owner) {
            *out.entry(o).or_default() += 1;
        }
    }
    Ok(out)
}

/// Waits until `want` instances hold leases on all 8 shards, then prints the assignment.
async fn settle(store: &InMemoryLeaseStore, step: &str, want: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let o = owners(store).await?;
        if o.len() == want && o.values().sum::<usize>() == 8 {
            println!("{step}: {o:?} after {:?}", started.elapsed());
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "{step}: not settled, {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn instance(
    client: Client,
    store: Arc<InMemoryLeaseStore>,
    id: &str,
) -> anyhow::Result<(KinesisQueue, mq_core::ConsumerHandle)> {
    let queue = KinesisQueue::with_client(client, KinesisOptions::new(store).instance_id(id));
    let q = QueueName::new(STREAM)?;
    queue.register(&q).await?;
    let handler = Arc::new(handler_fn(|_batch: Batch, _ctx: HandlerContext| async {}));
    let consumer = queue
        .consume(&q, handler, ConsumerOptions::default())
        .await?;
    Ok((queue, consumer))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let emu = Emulator::with_stream(STREAM, 8).await;
    let client = emu.client();

    let store = Arc::new(InMemoryLeaseStore::new());
    let mut fleet = Vec::new();
    for id in ["a", "b", "c"] {
        fleet.push(instance(client.clone(), store.clone(), id).await?);
    }
    settle(&store, "3 instances", 3).await?;
    fleet.push(instance(client.clone(), store.clone(), "d").await?);
    settle(&store, "d joined", 4).await?;
    let (queue, consumer) = fleet.remove(0);
    consumer.stop().await;
    queue.shutdown().await?;
    settle(&store, "a left", 3).await?;
    for (queue, consumer) in fleet {
        consumer.stop().await;
        queue.shutdown().await?;
    }
    Ok(())
}
