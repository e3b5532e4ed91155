//! Producer: chunking to 500 records per request, pre-send validation, per-record retries and an
//! exact failure report, against the embedded emulator.

#[path = "common/emulator.rs"]
mod emulator;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use emulator::{Emulator, RequestCounter, client};
use mq_core::{Message, NewMessage, QueueName, UlidGenerator};
use mq_kinesis::{Error, KinesisProducer, PartitionKeyStrategy, ProducerOptions};

fn messages(n: usize, size: usize) -> Vec<Message> {
    let q = QueueName::new("p").unwrap();
    (0..n)
        .map(|i| {
            NewMessage::new("t", serde_json::json!({"i": i, "pad": "x".repeat(size)})).into_message(
                &UlidGenerator,
                q.clone(),
                chrono::Utc::now(),
            )
        })
        .collect()
}

/// An emulator with `stream` of `shards` shards and a client (SDK retries on) whose requests
/// are counted.
async fn counted(stream: &str, shards: i32) -> (Emulator, RequestCounter, aws_sdk_kinesis::Client) {
    let emu = Emulator::with_stream(stream, shards).await;
    let counter = RequestCounter::default();
    let c = client(&emu.endpoint, true, Some(counter.clone()), None);
    (emu, counter, c)
}

async fn stored_count(c: &aws_sdk_kinesis::Client, stream: &str) -> usize {
    let mut total = 0;
    for shard in emulator::shard_ids(c, stream).await {
        total += emulator::shard_records(c, stream, &shard).await.len();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_hundred_messages_take_three_requests() {
    let (_emu, counter, c) = counted("chunks", 2).await;
    let producer = KinesisProducer::new(c.clone(), ProducerOptions::default());
    let msgs = messages(1200, 10);
    let report = producer.put("chunks", &msgs).await.unwrap();
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(report.published.len(), 1200);
    assert_eq!(report.requests, 3);
    assert_eq!(counter.put_records.load(Ordering::SeqCst), 3);
    let idx: HashSet<usize> = report.published.iter().map(|p| p.index).collect();
    assert_eq!(idx.len(), 1200);
    assert_eq!(stored_count(&c, "chunks").await, 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_mib_requests_are_split_by_size() {
    let (_emu, counter, c) = counted("bysize", 1).await;
    let producer = KinesisProducer::new(c, ProducerOptions::default());
    // 12 records of ~900 KiB: at most 5 per 5 MiB request -> 3 requests
    let report = producer
        .put("bysize", &messages(12, 900 * 1024))
        .await
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(counter.put_records.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_record_or_key_fails_before_sending() {
    let (_emu, counter, c) = counted("oversize", 1).await;
    let producer = KinesisProducer::new(c.clone(), ProducerOptions::default());
    let mut msgs = messages(10, 10);
    msgs.extend(messages(1, 1024 * 1024));
    let err = producer.put("oversize", &msgs).await.unwrap_err();
    assert!(
        matches!(err, Error::RecordTooLarge { index: 10, .. }),
        "{err}"
    );
    let mut msgs = messages(3, 10);
    msgs[1].partition_key = Some("k".repeat(257));
    let err = producer.put("oversize", &msgs).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidPartitionKey { index: 1, len: 257 }),
        "{err}"
    );
    assert_eq!(
        counter.put_records.load(Ordering::SeqCst),
        0,
        "nothing sent"
    );
    assert_eq!(stored_count(&c, "oversize").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_entries_are_retried_and_failures_reported_exactly() {
    let mut opts = emulator::store_options();
    opts.enforce_limits = true;
    let emu = Emulator::start_with(opts).await;
    emu.create_stream("throttled", 1).await;
    // SDK retries off: every throttled entry is ours to handle
    let counter = RequestCounter::default();
    let c = client(&emu.endpoint, false, Some(counter.clone()), None);

    // one attempt only: the report names exactly the entries that were not stored
    let once = KinesisProducer::new(
        c.clone(),
        ProducerOptions::default()
            .max_attempts(1)
            .partition_key(PartitionKeyStrategy::MessageType),
    );
    let report = once.put("throttled", &messages(2500, 10)).await.unwrap();
    assert!(
        !report.failed.is_empty(),
        "the emulator should throttle 2500 records at once"
    );
    assert_eq!(report.published.len() + report.failed.len(), 2500);
    let stored = stored_count(&c, "throttled").await;
    assert_eq!(
        stored,
        report.published.len(),
        "published = stored, exactly"
    );
    for f in &report.failed {
        assert!(
            matches!(&f.error, Error::RecordRejected { code, .. } if code == "ProvisionedThroughputExceededException"),
            "{}",
            f.error
        );
    }

    // with retries and backoff, everything lands
    let retrying = KinesisProducer::new(
        c.clone(),
        ProducerOptions::default()
            .max_attempts(20)
            .base_delay(Duration::from_millis(200))
            .max_delay(Duration::from_secs(1)),
    );
    let before = stored_count(&c, "throttled").await;
    let report = retrying
        .put("throttled", &messages(2500, 10))
        .await
        .unwrap();
    assert!(report.is_complete(), "{} failed", report.failed.len());
    assert!(
        report.requests > 5,
        "retries happened: {} requests",
        report.requests
    );
    assert_eq!(stored_count(&c, "throttled").await, before + 2500);
}
