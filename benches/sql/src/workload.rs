//! The workload every `SqlQueue` run shares: publish in batches from several tasks, then consume
//! with a counting handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use mq_core::{
    Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn,
};

use crate::cpu::CpuTime;

/// The payload of message `i`: small, like most job arguments.
pub(crate) fn payload(i: usize) -> serde_json::Value {
    serde_json::json!({"i": i, "body": "0123456789abcdef0123456789abcdef"})
}

/// Publishes messages `from..to` to `queue` in chunks of `batch` from `concurrency` tasks;
/// returns the time taken.
pub(crate) async fn publish(
    q: &Arc<dyn MessageQueue>,
    queue: &QueueName,
    (from, to): (usize, usize),
    batch: usize,
    concurrency: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let chunks: Arc<Vec<Vec<usize>>> = Arc::new(
        (from..to)
            .collect::<Vec<_>>()
            .chunks(batch)
            .map(<[usize]>::to_vec)
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut publishers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (q, queue, next, chunks) = (q.clone(), queue.clone(), next.clone(), chunks.clone());
        publishers.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(k) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let msgs = chunk
                    .iter()
                    .map(|&i| NewMessage::new("bench", payload(i)))
                    .collect();
                q.publish(&queue, msgs).await?.into_result()?;
            }
        });
    }
    while let Some(r) = publishers.join_next().await {
        r??;
    }
    Ok(started.elapsed())
}

/// What one consume run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Consumed {
    /// Messages handled.
    pub(crate) handled: usize,
    /// Wall time until `handled` reached the goal.
    pub(crate) took: Duration,
    /// CPU used meanwhile.
    pub(crate) cpu: CpuTime,
}

/// Consumes `queue` with `concurrency` loops claiming `batch` at a time until at least `goal`
/// messages were handled, then stops the consumer.
pub(crate) async fn consume(
    q: &Arc<dyn MessageQueue>,
    queue: &QueueName,
    goal: usize,
    batch: usize,
    concurrency: usize,
) -> Result<Consumed> {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let handler = Arc::new(handler_fn(move |b: Batch, _ctx: HandlerContext| {
        s.fetch_add(b.len(), Ordering::Relaxed);
        async {}
    }));
    let opts = ConsumerOptions::default()
        .batch_size(batch)
        .concurrency(concurrency)
        .poll_interval(Duration::from_millis(5))
        .max_poll_interval(Duration::from_millis(50));
    let started = Instant::now();
    let cpu_started = CpuTime::now();
    let consumer = q.consume(queue, handler, opts).await?;
    let deadline = Instant::now() + Duration::from_secs(900);
    while seen.load(Ordering::Relaxed) < goal {
        anyhow::ensure!(
            Instant::now() < deadline,
            "consumer stalled at {} of {goal}",
            seen.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    let cpu = CpuTime::now().since(cpu_started);
    consumer.stop().await;
    Ok(Consumed {
        handled: seen.load(Ordering::Relaxed),
        took,
        cpu,
    })
}
