//! `cargo xtask bench memory`: 1,000,000 small messages published and consumed through
//! `InMemoryQueue`, and the same messages through a bare `tokio::sync::mpsc` channel, in one run.
//!
//! Both sides build the same `NewMessage` values (type + small JSON payload) and count them on the
//! consumer side; the queue adds ids, timestamps, claiming under a lease, the handler call and the
//! completion. Printed: messages/s of each and their ratio, then the targets, one a line:
//! `target <what>: <measured> <unit> (goal <= or >= <limit>) met|NOT met`.
//!
//! `MQ_BENCH_N` changes the message count; `MQ_BENCH_ONLY=bare|queue` runs one side once, for
//! instruction counts under `valgrind --tool=callgrind`, which stay comparable on a busy machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mq_bench_report::{Goal, target};
use mq_core::{
    Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn,
};
use mq_memory::InMemoryQueue;
use serde_json::json;

const CHUNK: usize = 1_000;

/// The queue may take at most this many times as long as the bare channel.
const MAX_SLOWDOWN: f64 = 5.0;

/// The queue's own throughput, messages per second, at least.
const MIN_RATE: f64 = 250_000.0;

fn count() -> usize {
    std::env::var("MQ_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
        / CHUNK
        * CHUNK
}

fn message(i: usize) -> NewMessage {
    NewMessage::new("bench", json!({ "n": i }))
}

async fn bare_channel() -> Duration {
    let n_total = count();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<NewMessage>(CHUNK * 4);
    let started = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut n = 0usize;
        let mut buf = Vec::with_capacity(CHUNK);
        while rx.recv_many(&mut buf, CHUNK).await > 0 {
            n += buf.len();
            buf.clear();
        }
        n
    });
    for i in 0..n_total {
        if tx.send(message(i)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let n = consumer.await.unwrap_or(0);
    assert_eq!(n, n_total);
    started.elapsed()
}

async fn in_memory_queue() -> anyhow::Result<Duration> {
    let n_total = count();
    let queue = InMemoryQueue::default();
    let q = QueueName::new("bench")?;
    queue.register(&q).await?;
    let seen = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    let s = seen.clone();
    let handler = handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let s = s.clone();
        let done = done_tx.clone();
        async move {
            if s.fetch_add(batch.len(), Ordering::Relaxed) + batch.len() == n_total
                && let Some(tx) = done.lock().ok().and_then(|mut d| d.take())
            {
                let _ = tx.send(());
            }
        }
    });
    let options = ConsumerOptions::default()
        .batch_size(CHUNK)
        .concurrency(2)
        .poll_interval(Duration::from_millis(1))
        .max_poll_interval(Duration::from_millis(5));
    let started = Instant::now();
    let consumer = queue.consume(&q, Arc::new(handler), options).await?;
    for start in (0..n_total).step_by(CHUNK) {
        let report = queue
            .publish(&q, (start..start + CHUNK).map(message).collect())
            .await?;
        anyhow::ensure!(report.is_complete(), "publish refused messages");
    }
    done_rx.await?;
    let took = started.elapsed();
    consumer.stop().await;
    queue.shutdown().await?;
    anyhow::ensure!(
        seen.load(Ordering::Relaxed) == n_total,
        "lost or duplicated messages"
    );
    Ok(took)
}

fn rate(d: Duration) -> f64 {
    count() as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::var("MQ_BENCH_ONLY").as_deref() {
        Ok("bare") => {
            println!("bare tokio mpsc: {:?}", bare_channel().await);
            return Ok(());
        }
        Ok("queue") => {
            println!("InMemoryQueue: {:?}", in_memory_queue().await?);
            return Ok(());
        }
        _ => {}
    }
    // Warm up allocators and the runtime once, then measure each side three times, interleaved.
    let _ = bare_channel().await;
    let mut bare = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..3 {
        bare.push(bare_channel().await);
        ours.push(in_memory_queue().await?);
    }
    let best = |v: &[Duration]| v.iter().copied().min().unwrap_or_default();
    let (b, o) = (best(&bare), best(&ours));
    println!("messages: {}, runs: 3 each (best shown)", count());
    println!("bare tokio mpsc : {:>12.0} msg/s ({:?})", rate(b), b);
    println!("InMemoryQueue   : {:>12.0} msg/s ({:?})", rate(o), o);
    let slowdown = o.as_secs_f64() / b.as_secs_f64();
    println!("ratio (mpsc / InMemoryQueue time): {slowdown:.2}x slower");
    target(
        "InMemoryQueue time / bare mpsc time",
        slowdown,
        "x",
        Goal::AtMost(MAX_SLOWDOWN),
    );
    target(
        "InMemoryQueue throughput",
        rate(o),
        "msg/s",
        Goal::AtLeast(MIN_RATE),
    );
    Ok(())
}
