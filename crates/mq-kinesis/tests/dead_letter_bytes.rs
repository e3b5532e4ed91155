//! Dead letters keep the bytes a record was read from. A record that does not decode reaches the
//! dead letters with its original bytes (and as text when it is UTF-8) and its partition key;
//! publishing the dead letter again, as a replay does, writes exactly those bytes under that key.
//! A record that decodes but fails for good keeps its bytes too, and a replay writes them back.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/kpl.rs"]
mod kpl;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_smithy_types::Blob;
use base64::prelude::{BASE64_STANDARD, Engine as _};
use emulator::Emulator;
use mq_core::testkit::{
    DeliveryLedger, RecordingDeadLetters, eventually, fast_options, wait_until,
};
use mq_core::{
    Batch, CommonOptions, DeadLetterFilter, DeadLetterStore, HandlerContext, MessageQueue,
    NewMessage, QueueName, RetryPolicy, handler_fn,
};
use mq_dlq::{ReplayOptions, Replayer};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, UNDECODABLE_MESSAGE_TYPE};
use mq_memory::MemoryDeadLetterStore;

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

/// A record the consumer decodes but its handler fails for good keeps the exact bytes it was
/// read from in its dead letter (here relaxed extended JSON with odd spacing and a field mq does
/// not know, which mq would never write itself), and so does a user record of a KPL aggregate
/// (its own bytes, not the aggregate's) and a record that does not decode at all. Replaying the
/// dead letters to the stream with the `mq-dlq` replayer writes each back byte for byte under
/// its partition key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_original_bytes_and_replay_writes_them_back() {
    let emu = Emulator::start().await;
    let stream = "bytes-orig";
    emu.create_stream(stream, 1).await;
    let c = emu.client();
    let ejson = b"{ \"_id\" :{\"$oid\":\"65f1c0ffee01\"},\"type\":\"poison\",\n  \"payload\":{\"at\":{\"$date\":\"2024-03-01T10:00:00.000Z\"},\"n\":{\"$numberLong\":\"7\"}},\t\"unknown_field\": [1, 2 ,3 ],\"execute_at\":{\"$date\":1709287200000}   }\r\n".to_vec();
    let binary: Vec<u8> = vec![0xff, 0x00, 0xfe, 0x80, b'{', 0xc3, 0x28];
    let inner =
        b"{\"_id\":{\"$oid\":\"65f1c0ffee02\"}, \"type\" : \"poison\", \"x-extra\":true}".to_vec();
    for (data, key) in [(&ejson, "ejson-key"), (&binary, "bin-key")] {
        c.put_record()
            .stream_name(stream)
            .partition_key(key)
            .data(Blob::new(data.clone()))
            .send()
            .await
            .unwrap();
    }
    kpl::put(
        &c,
        stream,
        vec![vec![
            kpl::UserRecord {
                partition_key: "agg-ok".into(),
                explicit_hash_key: None,
                data: br#"{"type":"ok","payload":{}}"#.to_vec(),
            },
            kpl::UserRecord {
                partition_key: "agg-poison".into(),
                explicit_hash_key: None,
                data: inner.clone(),
            },
        ]],
    )
    .await;

    let store = Arc::new(MemoryDeadLetterStore::new());
    let queue = Arc::new(KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .common(CommonOptions::default().dead_letters(store.clone()))
            .discovery_interval(Duration::from_millis(100)),
    ));
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    let handled_ok = Arc::new(AtomicUsize::new(0));
    let ok = handled_ok.clone();
    let handler = Arc::new(handler_fn(move |batch: Batch, _c: HandlerContext| {
        let ok = ok.clone();
        async move {
            if batch.iter().any(|m| m.message_type == "poison") {
                return Err(std::io::Error::other("poison"));
            }
            ok.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }));
    let options = fast_options().retry(
        RetryPolicy::default()
            .max_attempts(2)
            .base_delay(Duration::from_millis(10))
            .jitter(0.0),
    );
    let consumer = queue.consume(&q, handler, options).await.unwrap();
    let s = store.clone();
    wait_until(Duration::from_secs(30), "3 dead letters", move || {
        let s = s.clone();
        async move { s.count(&DeadLetterFilter::default()).await.unwrap() == 3 }
    })
    .await;
    consumer.stop().await;
    assert!(
        handled_ok.load(Ordering::SeqCst) >= 1,
        "the good user record"
    );

    let entries = store.list(&DeadLetterFilter::default()).await.unwrap();
    let by_id = |id: &str| {
        entries
            .iter()
            .find(|e| e.message.id.as_str() == id)
            .unwrap_or_else(|| panic!("dead letter {id}: {entries:?}"))
    };
    let decoded = by_id("65f1c0ffee01");
    assert_eq!(decoded.message.message_type, "poison", "kept as decoded");
    assert_eq!(decoded.message.payload["n"], 7);
    assert_eq!(
        decoded.original_bytes.as_deref(),
        Some(&ejson[..]),
        "the record's bytes, exactly"
    );
    let aggregated = by_id("65f1c0ffee02");
    assert_eq!(
        aggregated.original_bytes.as_deref(),
        Some(&inner[..]),
        "the user record's own bytes"
    );
    let undecodable = entries
        .iter()
        .find(|e| e.message.message_type == UNDECODABLE_MESSAGE_TYPE)
        .expect("the undecodable record");
    assert_eq!(undecodable.original_bytes.as_deref(), Some(&binary[..]));

    let before = emulator::shard_records(&c, stream, "shardId-000000000000")
        .await
        .len();
    let report = Replayer::new(store.clone(), queue.clone())
        .run(&ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(report.published.len(), 3, "{report:?}");
    let records = emulator::shard_records(&c, stream, "shardId-000000000000").await;
    let mut replayed: Vec<(Vec<u8>, String)> = records[before..]
        .iter()
        .map(|r| {
            (
                r.data().as_ref().to_vec(),
                r.partition_key().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    replayed.sort();
    let mut expected = vec![
        (ejson, "ejson-key".to_owned()),
        (binary, "bin-key".to_owned()),
        (inner, "agg-poison".to_owned()),
    ];
    expected.sort();
    println!(
        "replayed {} records, {} byte-identical",
        replayed.len(),
        replayed.iter().filter(|r| expected.contains(r)).count()
    );
    assert_eq!(
        replayed, expected,
        "replayed byte for byte under their keys"
    );
    queue.shutdown().await.unwrap();
}
