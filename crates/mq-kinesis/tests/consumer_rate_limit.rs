//! Token buckets: with a backlog far larger than the limit, the records handed to handlers per
//! second stay within 10% of the limit over a 10 s window, for a cap on the whole instance and
//! for a cap per shard.

#[path = "common/emulator.rs"]
mod emulator;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator::Emulator;
use mq_core::testkit::{eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, ShardOptions};

const WINDOW: Duration = Duration::from_secs(10);

/// Publishes `backlog` messages, consumes with `options` and returns the records handled per
/// second over the 10 s after the first batch.
async fn measured_rate(stream: &str, shards: i32, backlog: usize, options: KinesisOptions) -> f64 {
    let emu = Emulator::with_stream(stream, shards).await;
    let q = QueueName::new(stream).unwrap();
    let queue = KinesisQueue::with_client(emu.client(), options);
    queue.register(&q).await.unwrap();
    for chunk in (0..backlog).collect::<Vec<_>>().chunks(500) {
        let msgs = chunk
            .iter()
            .map(|i| NewMessage::new("t", serde_json::json!({ "i": i })))
            .collect();
        emulator::publish_all(&queue, &q, msgs).await;
    }
    let times: Arc<Mutex<Vec<(Instant, usize)>>> = Arc::default();
    let t = times.clone();
    let handler = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let t = t.clone();
        async move {
            t.lock().unwrap().push((Instant::now(), batch.len()));
        }
    }));
    let consumer = queue.consume(&q, handler, fast_options()).await.unwrap();
    let t = times.clone();
    eventually(Duration::from_secs(30), "first batch", move || {
        !t.lock().unwrap().is_empty()
    })
    .await;
    let first = times.lock().unwrap()[0].0;
    let t = times.clone();
    eventually(
        WINDOW + Duration::from_secs(10),
        "the window passed",
        move || {
            t.lock()
                .unwrap()
                .last()
                .is_some_and(|(at, _)| *at > first + WINDOW)
        },
    )
    .await;
    consumer.stop().await;
    queue.shutdown().await.unwrap();
    let handled: usize = times
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at <= first + WINDOW)
        .map(|(_, n)| n)
        .sum();
    assert!(handled < backlog, "the backlog ran out: raise it");
    handled as f64 / WINDOW.as_secs_f64()
}

fn report(what: &str, rate: f64, limit: f64) {
    let off = (rate - limit) / limit * 100.0;
    println!("{what}: {rate:.1} records/s against a limit of {limit} ({off:+.1}%)");
    assert!(
        (rate - limit).abs() <= limit * 0.1,
        "{what}: {rate:.1}/s is not within 10% of {limit}/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cap_holds_within_ten_percent() {
    let limit = 300;
    let options = KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
        .instance_id("capped")
        .max_records_per_second(NonZeroU32::new(limit).unwrap());
    let rate = measured_rate("rate-instance", 4, 6_000, options).await;
    report("instance cap over 4 shards", rate, f64::from(limit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_cap_holds_within_ten_percent() {
    let limit = 100;
    let options = KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
        .instance_id("capped")
        .shard(ShardOptions::default().max_records_per_second(NonZeroU32::new(limit).unwrap()));
    // two shards, each capped: twice the limit in all
    let rate = measured_rate("rate-shard", 2, 4_000, options).await;
    report("per-shard cap on 2 shards", rate, f64::from(limit * 2));
}
