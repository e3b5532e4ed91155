//! `KinesisDeadLetterSink` against an embedded Kinesis emulator: dead letters land on the
//! secondary stream and read back unchanged, then feed a store.

#[path = "common/emulator.rs"]
mod emulator;

use aws_sdk_kinesis::types::ShardIteratorType;
use emulator::Emulator;
use mq_core::testkit::dead_letter::letter;
use mq_core::{DeadLetterFilter, DeadLetterStore};
use mq_core::{DeadLetterOrigin, DeadLetterSink, QueueName};
use mq_kinesis::{
    KinesisDeadLetterSink, KinesisProducer, ProducerOptions, dead_letter_from_message,
    decode_record,
};
use mq_memory::MemoryDeadLetterStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_round_trip_through_the_stream() {
    let stream = "orders-dlq";
    let emu = Emulator::with_stream(stream, 1).await;
    let client = emu.client();

    let sink = KinesisDeadLetterSink::new(
        KinesisProducer::new(client.clone(), ProducerOptions::default()),
        stream,
    )
    .expect("sink");
    let mut letters: Vec<_> = (0..5)
        .map(|i| letter("orders", &format!("m{i}"), "charge", "declined"))
        .collect();
    letters[0].origin = DeadLetterOrigin::shard("kinesis", "shardId-000000000003", "4959");
    sink.dead_letter(letters.clone()).await.expect("forward");
    sink.dead_letter(vec![]).await.expect("empty is a no-op");

    let iterator = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id("shardId-000000000000")
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("iterator")
        .shard_iterator
        .expect("iterator");
    let records = client
        .get_records()
        .shard_iterator(iterator)
        .send()
        .await
        .expect("records")
        .records;
    assert_eq!(records.len(), 5);
    let queue = QueueName::new(stream).expect("name");
    let back: Vec<_> = records
        .iter()
        .map(|r| {
            let m = decode_record(
                r.data().as_ref(),
                &queue,
                "shardId-000000000000",
                r.sequence_number(),
                chrono::Utc::now(),
            )
            .expect("decode");
            dead_letter_from_message(&m).expect("dead letter")
        })
        .collect();
    assert_eq!(back, letters, "every field survives the stream");

    let store = MemoryDeadLetterStore::new();
    store.insert(back).await.expect("insert");
    assert_eq!(
        store
            .count(&DeadLetterFilter::default())
            .await
            .expect("count"),
        5
    );
}
