//! Throughput of the mq Kinesis producer and consumer against bare SDK loops, on one embedded
//! ferrokinesis emulator in one run.
//!
//! ```text
//! cargo run --release -p mq-kinesis --example bench_kinesis            # 50,000 records, 4 shards
//! BENCH_RECORDS=200000 cargo run --release -p mq-kinesis --example bench_kinesis
//! ```
//!
//! Prints records/s for each side and the ratio mq / bare (target >= 0.9), best of two rounds
//! whose order alternates (bare first, then mq first). The bare producer JSON-encodes the same messages and sends them in chunks of 500, one
//! request at a time, like the mq producer (which also validates, picks keys and checks every
//! entry's result); the bare consumer reads every shard in parallel with GetRecords (limit 10,000)
//! and parses each record as JSON; the mq consumer runs a `KinesisQueue` consumer (in-memory
//! leases, batch up to 10,000) with an ack-all handler.

// the emulator the integration tests run on
#[path = "../tests/common/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use emulator::Emulator;
use mq_bench_report::{Goal, target};
use mq_core::backend::{AimdOptions, AimdStrategy};
use mq_core::{
    Batch, ConsumerOptions, HandlerContext, Message, MessageQueue, NewMessage, QueueName,
    UlidGenerator, handler_fn,
};
use mq_kinesis::{
    InMemoryLeaseStore, KinesisOptions, KinesisProducer, KinesisQueue, ProducerOptions,
};

const SHARDS: i32 = 4;
const ROUNDS: usize = 2;

/// Reads every shard of `stream` in parallel from the trim horizon, parsing each record as JSON.
async fn bare_read(client: &Client, stream: &str) -> anyhow::Result<usize> {
    let shards = client.list_shards().stream_name(stream).send().await?;
    let mut tasks = tokio::task::JoinSet::new();
    for s in shards.shards() {
        let (c, shard, stream) = (client.clone(), s.shard_id().to_owned(), stream.to_owned());
        tasks.spawn(async move {
            let mut count = 0usize;
            let mut it = c
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator()
                .map(str::to_owned);
            while let Some(i) = it {
                let out = c
                    .get_records()
                    .shard_iterator(i)
                    .limit(10_000)
                    .send()
                    .await?;
                if out.records().is_empty() {
                    break;
                }
                for r in out.records() {
                    let v: serde_json::Value = serde_json::from_slice(r.data().as_ref())?;
                    count += usize::from(v.is_object());
                }
                it = out.next_shard_iterator().map(str::to_owned);
            }
            anyhow::Ok(count)
        });
    }
    let mut read = 0;
    for r in tasks.join_all().await {
        read += r?;
    }
    Ok(read)
}

/// Writes `messages` to stream `bare` with PutRecords, 500 at a time, one request after another.
async fn bare_put_all(client: &Client, messages: &[Message]) -> anyhow::Result<()> {
    for chunk in messages.chunks(500) {
        let entries = chunk
            .iter()
            .map(|m| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(serde_json::to_vec(m).unwrap_or_default()))
                    .partition_key(m.id.to_string())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = client
            .put_records()
            .stream_name("bare")
            .set_records(Some(entries))
            .send()
            .await?;
        anyhow::ensure!(
            out.failed_record_count().unwrap_or(0) == 0,
            "bare put failed"
        );
    }
    Ok(())
}

/// Consumes `queue` from the trim horizon with a fresh lease store until `total` were handled.
async fn mq_read(client: &Client, q: &QueueName, total: usize) -> anyhow::Result<()> {
    let queue = KinesisQueue::with_client(
        client.clone(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .strategy(Arc::new(AimdStrategy::new(
                AimdOptions::default()
                    .initial_batch(10_000)
                    .max_batch(10_000)
                    .base_delay(Duration::from_millis(10)),
            )))
            .discovery_interval(Duration::from_secs(1)),
    );
    queue.register(q).await?;
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    let handler = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let c2 = c2.clone();
        async move {
            c2.fetch_add(batch.len(), Ordering::Relaxed);
        }
    }));
    let consumer = queue
        .consume(
            q,
            handler,
            ConsumerOptions::default()
                .batch_size(10_000)
                .poll_interval(Duration::from_millis(2))
                .max_poll_interval(Duration::from_millis(20)),
        )
        .await?;
    while count.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    consumer.stop().await;
    queue.shutdown().await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let emu = Emulator::start().await;
    for s in ["bare", "mq"] {
        emu.create_stream(s, SHARDS).await;
    }
    let client = emu.client();
    let q = QueueName::new("mq")?;
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            NewMessage::new("bench", serde_json::json!({"i": i, "pad": "x".repeat(100)}))
                .into_message(&UlidGenerator, q.clone(), chrono::Utc::now())
        })
        .collect();
    println!(
        "records: {n} x {ROUNDS} rounds of ~{} bytes, {SHARDS} shards, embedded ferrokinesis",
        messages[0].encoded_len()
    );

    // producer: two rounds, best of each; the order alternates (bare first, then mq first) so
    // neither side always writes into the fuller emulator
    let producer = KinesisProducer::new(client.clone(), ProducerOptions::default());
    let (mut bare_put, mut mq_put) = (0f64, 0f64);
    for round in 0..ROUNDS {
        for bare_turn in [round % 2 == 0, round % 2 == 1] {
            let t = Instant::now();
            if bare_turn {
                bare_put_all(&client, &messages).await?;
                bare_put = bare_put.max(n as f64 / t.elapsed().as_secs_f64());
            } else {
                let report = producer.put("mq", &messages).await?;
                anyhow::ensure!(report.is_complete(), "mq put failed");
                mq_put = mq_put.max(n as f64 / t.elapsed().as_secs_f64());
            }
        }
    }
    println!(
        "producer: bare PutRecords {bare_put:>10.0} rec/s | mq KinesisProducer {mq_put:>10.0} rec/s | ratio {:.2}",
        mq_put / bare_put
    );

    // consumer: each side reads its whole stream, two alternating rounds, best of each
    let total = n * ROUNDS;
    let (mut bare_get, mut mq_get) = (0f64, 0f64);
    for round in 0..ROUNDS {
        for bare_turn in [round % 2 == 0, round % 2 == 1] {
            let t = Instant::now();
            if bare_turn {
                let read = bare_read(&client, "bare").await?;
                anyhow::ensure!(read == total, "bare read {read} of {total}");
                bare_get = bare_get.max(total as f64 / t.elapsed().as_secs_f64());
            } else {
                mq_read(&client, &q, total).await?;
                mq_get = mq_get.max(total as f64 / t.elapsed().as_secs_f64());
            }
        }
    }
    println!(
        "consumer: bare GetRecords {bare_get:>10.0} rec/s | mq KinesisQueue   {mq_get:>10.0} rec/s | ratio {:.2}",
        mq_get / bare_get
    );
    target(
        "KinesisProducer rate / bare PutRecords rate",
        mq_put / bare_put,
        "x",
        Goal::AtLeast(0.9),
    );
    target(
        "KinesisQueue rate / bare GetRecords rate",
        mq_get / bare_get,
        "x",
        Goal::AtLeast(0.9),
    );
    Ok(())
}
