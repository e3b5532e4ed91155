//! Backpressure from a slow handler: with the AIMD strategy's fetch pause, batches of a slow
//! handler are smaller and spaced out by the pause; a fast handler on the same backlog reads
//! back to back.

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator::Emulator;
use mq_core::backend::{AimdOptions, AimdStrategy};
use mq_core::testkit::{eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, QueueName, handler_fn};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, ShardOptions};

/// Consumes at least 8 batches from a backlog of 1,000 messages on one shard with a handler that takes `handler_time`; the batch sizes
/// and the idle time between one batch's end and the next one's start.
async fn run(stream: &str, handler_time: Duration) -> (Vec<usize>, Vec<Duration>) {
    let emu = Emulator::with_stream(stream, 1).await;
    let q = QueueName::new(stream).unwrap();
    let strategy = AimdStrategy::new(
        AimdOptions::default()
            .initial_batch(40)
            .min_batch(5)
            .slow_batch(Duration::from_millis(30))
            .min_pause(Duration::from_millis(150))
            .max_pause(Duration::from_millis(300)),
    );
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .strategy(Arc::new(strategy))
            // only the strategy's pause spaces the reads out here
            .shard(ShardOptions::default().min_read_interval(Duration::ZERO)),
    );
    queue.register(&q).await.unwrap();
    let msgs = emulator::numbered(1_000);
    emulator::publish_all(&queue, &q, msgs).await;
    let batches: Arc<Mutex<Vec<(Instant, Instant, usize)>>> = Arc::default();
    let b = batches.clone();
    let handler = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let b = b.clone();
        async move {
            let start = Instant::now();
            tokio::time::sleep(handler_time).await;
            b.lock().unwrap().push((start, Instant::now(), batch.len()));
        }
    }));
    let consumer = queue.consume(&q, handler, fast_options()).await.unwrap();
    let b = batches.clone();
    eventually(Duration::from_secs(60), "8 batches", move || {
        b.lock().unwrap().len() >= 8
    })
    .await;
    consumer.stop().await;
    queue.shutdown().await.unwrap();
    let batches = batches.lock().unwrap().clone();
    let sizes = batches.iter().map(|b| b.2).collect();
    let idle = batches
        .windows(2)
        .map(|w| w[1].0.saturating_duration_since(w[0].1))
        .collect();
    (sizes, idle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_gets_smaller_batches_further_apart() {
    let (fast_sizes, fast_idle) = run("backpressure-fast", Duration::ZERO).await;
    let (slow_sizes, slow_idle) = run("backpressure-slow", Duration::from_millis(60)).await;
    println!("fast handler: batches {fast_sizes:?}, idle between batches {fast_idle:?}");
    println!("slow handler: batches {slow_sizes:?}, idle between batches {slow_idle:?}");
    // after the first slow batch every read waits for the pause (at least 150 ms)
    assert!(
        slow_idle[1..]
            .iter()
            .all(|d| *d >= Duration::from_millis(140)),
        "{slow_idle:?}"
    );
    assert!(slow_sizes[3..].iter().all(|n| *n <= 10), "{slow_sizes:?}");
    // the fast handler never pauses: reads follow each other (read-ahead) well under the pause
    let fast_max = fast_idle.iter().copied().max().unwrap_or_default();
    assert!(fast_max < Duration::from_millis(140), "{fast_idle:?}");
}
