//! A record that does not decode reaches the dead letters with its original bytes (and as text
//! when it is UTF-8) and its partition key; publishing the dead letter again, as a replay does,
//! writes exactly those bytes under that key.

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::time::Duration;

use aws_smithy_types::Blob;
use base64::prelude::{BASE64_STANDARD, Engine as _};
use emulator::Emulator;
use mq_core::testkit::{DeliveryLedger, RecordingDeadLetters, eventually, fast_options};
use mq_core::{CommonOptions, MessageQueue, NewMessage, QueueName};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, UNDECODABLE_MESSAGE_TYPE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_keep_their_bytes_and_replay_unchanged() {
    let emu = Emulator::start().await;
    emu.create_stream("bytes-in", 1).await;
    emu.create_stream("bytes-replayed", 1).await;
    let c = emu.client();
    let binary: Vec<u8> = vec![0xff, 0x00, 0xfe, 0x80, b'{', 0xc3, 0x28];
    let text = b"not json at all".to_vec();
    for (data, key) in [(&binary, "bin-key"), (&text, "text-key")] {
        c.put_record()
            .stream_name("bytes-in")
            .partition_key(key)
            .data(Blob::new(data.clone()))
            .send()
            .await
            .unwrap();
    }
    let dead = Arc::new(RecordingDeadLetters::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .common(CommonOptions::default().dead_letters(dead.clone()))
            .discovery_interval(Duration::from_millis(100)),
    );
    let q = QueueName::new("bytes-in").unwrap();
    queue.register(&q).await.unwrap();
    let ledger = Arc::new(DeliveryLedger::default());
    let consumer = queue
        .consume(&q, ledger.handler(), fast_options())
        .await
        .unwrap();
    let d = dead.clone();
    eventually(Duration::from_secs(20), "2 dead letters", move || {
        d.len() == 2
    })
    .await;
    consumer.stop().await;

    let letters = dead.letters();
    let (bin, txt) = (&letters[0].message, &letters[1].message);
    assert_eq!(bin.message_type, UNDECODABLE_MESSAGE_TYPE);
    let kept = BASE64_STANDARD
        .decode(bin.payload["data_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(kept, binary, "the original bytes");
    assert!(
        bin.payload.get("text").is_none(),
        "no text for bytes that are not UTF-8"
    );
    assert_eq!(txt.payload["text"], "not json at all");
    assert_eq!(bin.partition_key.as_deref(), Some("bin-key"));

    // a replay publishes the dead letter's message again
    let target = QueueName::new("bytes-replayed").unwrap();
    queue.register(&target).await.unwrap();
    let again: Vec<NewMessage> = [bin, txt]
        .into_iter()
        .map(|m| {
            NewMessage::new(m.message_type.clone(), m.payload.clone())
                .partition_key(m.partition_key.clone().unwrap())
        })
        .collect();
    emulator::publish_all(&queue, &target, again).await;
    let records = emulator::shard_records(&c, "bytes-replayed", "shardId-000000000000").await;
    let written: Vec<(Vec<u8>, String)> = records
        .iter()
        .map(|r| {
            (
                r.data().as_ref().to_vec(),
                r.partition_key().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    println!("replayed records: {written:?}");
    assert_eq!(
        written,
        vec![
            (binary, "bin-key".to_owned()),
            (text, "text-key".to_owned())
        ]
    );
}
