//! Publish errors say what is wrong in their own text: a partition key too long names its
//! length and the limit; a record above 1 MiB names the Kinesis limit (no option raises
//! it); and an error that can never succeed is reported without retries.

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use emulator::{Emulator, RequestCounter, client};
use mq_core::{CommonOptions, Message, MessageId, MessageQueue, NewMessage, QueueName};
use mq_kinesis::{
    Error, InMemoryLeaseStore, KinesisOptions, KinesisProducer, KinesisQueue, PartitionKeyStrategy,
    ProducerOptions,
};

async fn queue(emu: &Emulator, stream: &str, common: CommonOptions) -> (KinesisQueue, QueueName) {
    emu.create_stream(stream, 1).await;
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .common(common)
            .producer(
                ProducerOptions::default()
                    .partition_key(PartitionKeyStrategy::payload_field("key")),
            ),
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    (queue, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_key_too_long_says_so_with_the_limit() {
    let emu = Emulator::start().await;
    let (queue, q) = queue(&emu, "errors-key", CommonOptions::default()).await;
    let key = "k".repeat(300);
    let report = queue
        .publish(
            &q,
            vec![NewMessage::new("t", serde_json::json!({})).partition_key(key)],
        )
        .await
        .unwrap();
    let text = report.failed[0].error.to_string();
    println!("{text}");
    assert!(text.contains("300 characters"), "{text}");
    assert!(text.contains("256"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_error_names_the_kinesis_limit() {
    let emu = Emulator::start().await;
    for (stream, common) in [
        ("errors-size", CommonOptions::default()),
        (
            "errors-size-raised",
            CommonOptions::default().max_message_bytes(4 << 20),
        ),
    ] {
        let (queue, q) = queue(&emu, stream, common).await;
        let big = "x".repeat(1_100_000);
        let report = queue
            .publish(
                &q,
                vec![NewMessage::new(
                    "t",
                    serde_json::json!({ "key": "a", "big": big }),
                )],
            )
            .await
            .unwrap();
        let text = report.failed[0].error.to_string();
        println!("{text}");
        assert!(text.contains("Kinesis limit of 1048576 bytes"), "{text}");
        assert!(!text.contains("max_message_bytes"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_that_cannot_succeed_is_not_retried() {
    let emu = Emulator::start().await;
    let counter = RequestCounter::default();
    // SDK retries off: every request counted is one of the producer's attempts
    let producer = KinesisProducer::new(
        client(&emu.endpoint, false, Some(counter.clone()), None),
        ProducerOptions::default().max_attempts(5),
    );
    let m = Message::new(
        MessageId::new("m1").unwrap(),
        QueueName::new("no-such-stream").unwrap(),
        "t",
        serde_json::json!({}),
        chrono::Utc::now(),
    );
    let report = producer.put("no-such-stream", &[m]).await.unwrap();
    let requests = counter.put_records.load(Ordering::SeqCst);
    println!("PutRecords requests {requests}: {}", report.failed[0].error);
    assert_eq!(requests, 1, "sent once, not retried");
    assert!(matches!(
        &report.failed[0].error,
        Error::RecordRejected { code, attempts: 1, .. } if code == "ResourceNotFoundException"
    ));
}
