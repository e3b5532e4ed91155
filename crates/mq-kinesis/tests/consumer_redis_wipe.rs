//! FLUSHALL under load: two consumers (separate queues, each with its own `DurableLeaseStore`
//! over the test's own Redis and PostgreSQL) read a 2-shard stream while 5,000 messages are
//! published; half-way the Redis forgets everything. The consumers lose their leases, acquire
//! again with epochs above the durable ones and resume from the durable checkpoints: nothing is
//! lost, duplicates stay within the batches in flight, and the log of every write the durable
//! store applied shows that no write with a stale epoch was accepted.

#[path = "common/durable.rs"]
mod durable;
#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/recorder.rs"]
mod recorder;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use emulator::Emulator;
use mq_core::backend::{AimdOptions, AimdStrategy};
use mq_core::testkit::{DeliveryLedger, eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn};
use mq_kinesis::{DurableLeaseStore, KinesisOptions, KinesisQueue, LeaseStore, RedisLeaseStore};
use recorder::Recorder;
use redis_server::RedisServer;

const TOTAL: usize = 5_000;
const CHUNK: usize = 250;
const SHARDS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_under_load_loses_nothing_and_accepts_no_stale_checkpoint() {
    let test = "flushall_under_load";
    let Some(pg) = durable::postgres(test).await else {
        return;
    };
    let Some(redis) = RedisServer::start_or_skip(test).await else {
        return;
    };
    let recorder = Arc::new(Recorder::new(pg));
    let stream = "redis-wipe";
    let emu = Emulator::with_stream(stream, SHARDS as i32).await;
    let q = QueueName::new(stream).unwrap();

    let mut queues = Vec::new();
    for id in ["publisher", "a", "b"] {
        let leases = RedisLeaseStore::connect(&redis.url(), "mq").await.unwrap();
        let store: Arc<dyn LeaseStore> =
            Arc::new(DurableLeaseStore::new(Arc::new(leases), recorder.clone()));
        let strategy = AimdStrategy::new(AimdOptions::default().initial_batch(50).max_batch(100));
        let queue = KinesisQueue::with_client(
            emu.client(),
            KinesisOptions::new(store)
                .instance_id(id)
                .discovery_interval(Duration::from_millis(100))
                .strategy(Arc::new(strategy)),
        );
        queue.register(&q).await.unwrap();
        queues.push(queue);
    }

    let ledger = Arc::new(DeliveryLedger::default());
    let max_batch = Arc::new(AtomicUsize::new(0));
    let (l, mb) = (ledger.clone(), max_batch.clone());
    let handler = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let (l, mb) = (l.clone(), mb.clone());
        async move {
            mb.fetch_max(batch.len(), Ordering::SeqCst);
            for m in batch.iter() {
                l.begin(m.id.as_str());
            }
            // keep batches in flight long enough for the wipe to land in the middle of some
            tokio::time::sleep(Duration::from_millis(3)).await;
            for m in batch.iter() {
                l.end(m.id.as_str());
            }
        }
    }));
    let opts = fast_options().lease_duration(Duration::from_secs(1));
    let ca = queues[1]
        .consume(&q, handler.clone(), opts.clone())
        .await
        .unwrap();
    let cb = queues[2].consume(&q, handler, opts).await.unwrap();

    let publish = |from: usize| {
        let publisher = &queues[0];
        let q = q.clone();
        async move {
            for start in (from..from + TOTAL / 2).step_by(CHUNK) {
                let msgs: Vec<NewMessage> = (start..start + CHUNK)
                    .map(|i| {
                        NewMessage::new("t", serde_json::json!({ "i": i }))
                            .partition_key(format!("k{i}"))
                    })
                    .collect();
                emulator::publish_all(publisher, &q, msgs).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    publish(0).await;
    eventually(
        Duration::from_secs(60),
        "half of the messages delivered",
        || ledger.distinct() >= TOTAL * 2 / 5,
    )
    .await;
    let at_flush = ledger.distinct();
    recorder.mark("flushall").await;
    redis.flushall().await;
    publish(TOTAL / 2).await;
    eventually(
        Duration::from_secs(120),
        "every message delivered after the wipe",
        || ledger.distinct() == TOTAL,
    )
    .await;
    ca.stop().await;
    cb.stop().await;

    let lost = TOTAL - ledger.distinct();
    let duplicates = ledger.duplicates();
    let batch = max_batch.load(Ordering::SeqCst);
    // per shard: the batch in flight when the wipe hit, and one more handled before the old
    // owner learnt (from the refused checkpoint or the failed renewal) that it was fenced
    let bound = SHARDS * 2 * batch;
    let summary = recorder.check().await;
    let (advanced, fenced, not_forward): (usize, usize, usize) =
        summary.values().fold((0, 0, 0), |(a, f, n), s| {
            (a + s.advanced, f + s.fenced, n + s.not_forward)
        });
    println!(
        "delivered {at_flush} before the wipe; lost {lost}, duplicates {duplicates} (bound {bound}: \
         {SHARDS} shards x 2 batches of at most {batch}); checkpoint writes accepted {advanced}, \
         fenced {fenced}, not forward {not_forward}"
    );
    for (shard, s) in &summary {
        println!(
            "{shard}: acquisitions at epochs {:?}, epoch at the wipe {:?}",
            s.epochs, s.epoch_at_mark
        );
    }
    assert_eq!(lost, 0);
    assert!(duplicates <= bound, "{duplicates} duplicates > {bound}");
    assert_eq!(summary.len(), SHARDS, "both shards checkpointed");
    for (shard, s) in &summary {
        let before = s.epoch_at_mark.expect("acquired before the wipe");
        assert!(
            s.epochs.iter().any(|e| *e > before),
            "{shard} acquired again above epoch {before} after the wipe: {:?}",
            s.epochs
        );
    }
    for queue in &queues {
        queue.shutdown().await.unwrap();
    }
}
