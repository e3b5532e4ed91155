//! 20,000 messages with 200 partition keys on a 4-shard stream: all delivered once, per-key order
//! kept; lifecycle events for shards, checkpoints and messages.

#[path = "common/emulator.rs"]
mod emulator;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emulator::Emulator;
use mq_core::testkit::{DeliveryLedger, RecordingObserver, eventually, fast_options};
use mq_core::{
    Batch, CommonOptions, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName,
    handler_fn,
};
use mq_kinesis::{
    InMemoryLeaseStore, KinesisOptions, KinesisQueue, LeaseStore, PartitionKeyStrategy,
    ProducerOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_messages_keep_per_key_order() {
    let stream = "delivery-order";
    let emu = Emulator::with_stream(stream, 4).await;
    let store = Arc::new(InMemoryLeaseStore::new());
    let observer = Arc::new(RecordingObserver::default());
    let common = emulator::observed(&observer);
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(store.clone())
            .instance_id("solo")
            .common(common)
            .discovery_interval(Duration::from_millis(200))
            .producer(
                ProducerOptions::default()
                    .partition_key(PartitionKeyStrategy::payload_field("key")),
            ),
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();

    let messages: Vec<NewMessage> = (0..20_000u64)
        .map(|i| {
            NewMessage::new(
                "t",
                serde_json::json!({"key": format!("k{}", i % 200), "n": i / 200}),
            )
        })
        .collect();
    let report = queue.publish(&q, messages).await.unwrap();
    assert!(report.is_complete(), "{:?}", report.failed.first());
    assert_eq!(report.published.len(), 20_000);

    let ledger = Arc::new(DeliveryLedger::default());
    let per_key: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let (l, pk) = (ledger.clone(), per_key.clone());
    let handler = Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
        let (l, pk) = (l.clone(), pk.clone());
        async move {
            assert!(ctx.shard_id().is_some());
            let mut pk = pk.lock().unwrap();
            for m in batch.iter() {
                l.begin(m.id.as_str());
                let key = m.payload["key"].as_str().unwrap().to_owned();
                pk.entry(key)
                    .or_default()
                    .push(m.payload["n"].as_u64().unwrap());
                l.end(m.id.as_str());
            }
        }
    }));
    let consumer = queue.consume(&q, handler, fast_options()).await.unwrap();
    eventually(Duration::from_secs(120), "all 20,000 delivered", || {
        ledger.distinct() == 20_000
    })
    .await;
    consumer.stop().await;

    let lost = 20_000 - ledger.distinct();
    assert_eq!(lost, 0);
    assert_eq!(ledger.duplicates(), 0, "clean run: no duplicates");
    let per_key = per_key.lock().unwrap().clone();
    assert_eq!(per_key.len(), 200);
    for (key, ns) in per_key.iter() {
        assert_eq!(ns.len(), 100, "{key}");
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "order broken for {key}: {ns:?}"
        );
    }
    // four shard consumers connected and disconnected, checkpoints written, every message acked
    assert_eq!(observer.count("consumed"), 20_000);
    assert_eq!(observer.count("acked"), 20_000);
    assert!(observer.count("checkpoint") >= 4);
    assert!(
        observer.count("consumer_connected") >= 5,
        "{:?}",
        observer.count("consumer_connected")
    );
    for shard in 0..4 {
        let st = store
            .state(stream, &format!("shardId-{shard:012}"))
            .await
            .unwrap();
        assert!(st.checkpoint.is_some(), "shard {shard} has a checkpoint");
        assert!(!st.live, "released on stop");
    }
    queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_records_decode_and_undecodable_ones_are_dead_lettered() {
    use aws_sdk_kinesis::primitives::Blob;
    use mq_core::testkit::RecordingDeadLetters;

    let stream = "decode";
    let emu = Emulator::with_stream(stream, 1).await;
    let c = emu.client();
    let ts = r#"{"_id":{"$oid":"65f1c0ffee0000000000abcd"},"type":"welcome","payload":{"to":"a@b.c",
      "at":{"$date":"2024-03-01T10:00:00.000Z"}},"execute_at":{"$date":"2024-03-01T10:00:00.000Z"},
      "created_at":{"$date":{"$numberLong":"1709287200000"}},"updated_at":{"$date":1709287200000},
      "queue_id":"decode-development","status":"scheduled","retries":0,"retry_after":2000}"#;
    for data in [ts.as_bytes(), b"\xff not json".as_slice()] {
        c.put_record()
            .stream_name(stream)
            .partition_key("k")
            .data(Blob::new(data))
            .send()
            .await
            .unwrap();
    }
    let dead = Arc::new(RecordingDeadLetters::default());
    let queue = KinesisQueue::with_client(
        c,
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .common(CommonOptions::default().dead_letters(dead.clone())),
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    let seen: Arc<Mutex<Vec<mq_core::Message>>> = Arc::default();
    let s2 = seen.clone();
    let handler = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let s2 = s2.clone();
        async move {
            s2.lock().unwrap().extend(batch.iter().cloned());
        }
    }));
    // one batch on demand, without a background consumer
    let report = queue
        .consume_batch(&q, handler, &fast_options().batch_size(10))
        .await
        .unwrap();
    assert_eq!(report.delivered, 1);
    assert_eq!(report.acked, 1);
    assert_eq!(report.dead_lettered, 1);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].id.as_str(), "65f1c0ffee0000000000abcd");
    assert_eq!(seen[0].message_type, "welcome");
    assert_eq!(seen[0].queue.as_str(), "decode");
    assert_eq!(seen[0].created_at.timestamp_millis(), 1_709_287_200_000);
    assert_eq!(seen[0].retry_delay, Some(Duration::from_millis(2000)));
    let letters = dead.letters();
    assert_eq!(letters[0].message.message_type, "undecodable");
    assert!(letters[0].error.to_string().contains("does not decode"));
    // batch_size bounds an on-demand batch
    emulator::publish_all(&queue, &q, emulator::numbered(5)).await;
    assert_eq!(one_batch(&queue, &q, fast_options().batch_size(3)).await, 3);
    assert_eq!(one_batch(&queue, &q, fast_options().batch_size(3)).await, 2);
    // a further on-demand batch finds nothing new: the earlier ones checkpointed
    assert_eq!(one_batch(&queue, &q, fast_options()).await, 0);
    queue.shutdown().await.unwrap();
}

/// On-demand batches take turns over the shards: with more than a batch waiting on every shard,
/// two calls read two different shards (the first shard used to fill every call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_batches_take_turns_over_the_shards() {
    let stream = "turns";
    let emu = Emulator::with_stream(stream, 2).await;
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new())),
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    let messages = (0..40)
        .map(|i| NewMessage::new("t", serde_json::json!({ "i": i })).partition_key(format!("k{i}")))
        .collect();
    emulator::publish_all(&queue, &q, messages).await;
    let shards: Arc<Mutex<Vec<String>>> = Arc::default();
    for _ in 0..2 {
        let s = shards.clone();
        let handler = Arc::new(handler_fn(move |_b: Batch, ctx: HandlerContext| {
            let s = s.clone();
            async move {
                s.lock()
                    .unwrap()
                    .push(ctx.shard_id().unwrap_or_default().to_owned());
            }
        }));
        let report = queue
            .consume_batch(&q, handler, &fast_options().batch_size(5))
            .await
            .unwrap();
        assert_eq!(report.delivered, 5);
    }
    let mut read = shards.lock().unwrap().clone();
    eprintln!("shards read by two on-demand batches: {read:?}");
    read.dedup();
    assert_eq!(read.len(), 2, "two calls read two shards: {read:?}");
    queue.shutdown().await.unwrap();
}

/// Consumes one batch on demand with a handler that acks everything; how many were delivered.
async fn one_batch(queue: &KinesisQueue, q: &QueueName, options: ConsumerOptions) -> usize {
    queue
        .consume_batch(
            q,
            Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {})),
            &options,
        )
        .await
        .unwrap()
        .delivered
}
