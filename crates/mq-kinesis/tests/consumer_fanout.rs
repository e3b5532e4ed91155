//! Enhanced fan-out (SubscribeToShard): every record delivered once, per-key order kept, across
//! re-subscriptions (before the subscription limit and after the server ends a subscription),
//! records published while consuming arrive, a restarted consumer continues from its checkpoint,
//! and a closed shard is read to its end and finished, all without a single GetRecords. (The
//! poison-pill scenario runs in both modes in `consumer_poison`.)

#[path = "common/emulator.rs"]
mod emulator;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator::{Emulator, RequestCounter, client, store_options};
use mq_core::testkit::{DeliveryLedger, RecordingObserver, eventually, fast_options};
use mq_core::{
    Batch, CommonOptions, ConsumerHandle, HandlerContext, MessageQueue, NewMessage, QueueName,
    handler_fn,
};
use mq_kinesis::{
    InMemoryLeaseStore, KinesisOptions, KinesisQueue, LeaseStore, PartitionKeyStrategy,
    ProducerOptions, ShardOptions,
};

type PerKey = Arc<Mutex<HashMap<String, Vec<u64>>>>;

fn messages(range: std::ops::Range<u64>, keys: u64) -> Vec<NewMessage> {
    range
        .map(|i| {
            NewMessage::new(
                "t",
                serde_json::json!({"key": format!("k{}", i % keys), "n": i / keys}),
            )
        })
        .collect()
}

/// A handler that records deliveries, the order per key and the largest batch.
fn recording_handler(
    ledger: Arc<DeliveryLedger>,
    per_key: PerKey,
    largest: Arc<AtomicUsize>,
    pause: Duration,
) -> Arc<dyn mq_core::Handler> {
    Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
        let (l, pk, largest) = (ledger.clone(), per_key.clone(), largest.clone());
        async move {
            assert!(ctx.shard_id().is_some());
            largest.fetch_max(batch.len(), Ordering::SeqCst);
            for m in batch.iter() {
                l.begin(m.id.as_str());
                let key = m.payload["key"].as_str().unwrap().to_owned();
                pk.lock()
                    .unwrap()
                    .entry(key)
                    .or_default()
                    .push(m.payload["n"].as_u64().unwrap());
                l.end(m.id.as_str());
            }
            tokio::time::sleep(pause).await;
        }
    }))
}

fn queue_on(
    c: aws_sdk_kinesis::Client,
    store: Arc<dyn LeaseStore>,
    instance: &str,
    shard: ShardOptions,
    common: CommonOptions,
) -> KinesisQueue {
    KinesisQueue::with_client(
        c,
        KinesisOptions::new(store)
            .instance_id(instance)
            .common(common)
            .discovery_interval(Duration::from_millis(200))
            .producer(
                ProducerOptions::default()
                    .partition_key(PartitionKeyStrategy::payload_field("key")),
            )
            .shard(shard),
    )
}

/// The sequence number of the last record of `shard`, read with a client outside the counted one.
async fn last_sequence_number(emu: &Emulator, stream: &str, shard: &str) -> Option<String> {
    let records = emulator::shard_records(&emu.client(), stream, shard).await;
    records.last().map(|r| r.sequence_number().to_owned())
}

/// Once all `total` were delivered: gives the stream half a second in which nothing more may
/// arrive, stops `consumer` and returns (lost, duplicates).
async fn settle_and_stop(
    consumer: ConsumerHandle,
    ledger: &DeliveryLedger,
    total: u64,
) -> (usize, usize) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.stop().await;
    (total as usize - ledger.distinct(), ledger.duplicates())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_delivers_once_in_key_order_across_resubscriptions() {
    let started = Instant::now();
    let stream = "fanout-order";
    let emu = Emulator::with_stream(stream, 4).await;
    let counter = RequestCounter::default();
    let store = Arc::new(InMemoryLeaseStore::new());
    let observer = Arc::new(RecordingObserver::default());
    let common = emulator::observed(&observer);
    let queue = queue_on(
        client(&emu.endpoint, true, Some(counter.clone()), None),
        store.clone(),
        "solo",
        ShardOptions::default()
            .enhanced_fan_out("mq-test")
            .resubscribe_interval(Duration::from_secs(1)),
        common,
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();

    // 150 keys; 6,000 messages before the consumer starts, 3,000 more while it runs
    let (keys, before, total) = (150u64, 6_000u64, 9_000u64);
    emulator::publish_all(&queue, &q, messages(0..before, keys)).await;

    let ledger = Arc::new(DeliveryLedger::default());
    let per_key: PerKey = Arc::default();
    let largest = Arc::new(AtomicUsize::new(0));
    let handler = recording_handler(
        ledger.clone(),
        per_key.clone(),
        largest.clone(),
        Duration::from_millis(2),
    );
    let consumer = queue.consume(&q, handler, fast_options()).await.unwrap();
    eventually(Duration::from_secs(60), "the first 6,000 delivered", || {
        ledger.distinct() == before as usize
    })
    .await;
    // published after the consumer started, in 12 slices over about 3 s: several
    // re-subscriptions (every second) happen while records flow
    for slice in 0..12u64 {
        let from = before + slice * 250;
        emulator::publish_all(&queue, &q, messages(from..from + 250, keys)).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eventually(Duration::from_secs(60), "all 9,000 delivered", || {
        ledger.distinct() == total as usize
    })
    .await;
    let shards: Vec<String> = (0..4).map(|s| format!("shardId-{s:012}")).collect();
    eventually(
        Duration::from_secs(30),
        "every shard re-subscribed at least twice",
        || shards.iter().all(|s| counter.subscribes_of(s) >= 3),
    )
    .await;
    let (lost, duplicates) = settle_and_stop(consumer, &ledger, total).await;
    let elapsed = started.elapsed();
    let subscribes: Vec<usize> = shards.iter().map(|s| counter.subscribes_of(s)).collect();
    println!(
        "fan-out: {total} messages, {keys} keys, lost {lost}, duplicates {duplicates}, \
         SubscribeToShard per shard {subscribes:?}, GetRecords {}, largest batch {}, {elapsed:?}",
        counter.get_records.load(Ordering::SeqCst),
        largest.load(Ordering::SeqCst),
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicates, 0, "clean run: no duplicates");
    assert_eq!(
        counter.get_records.load(Ordering::SeqCst),
        0,
        "fan-out never polls"
    );
    for (shard, n) in shards.iter().zip(&subscribes) {
        assert!(*n >= 2, "{shard} re-subscribed ({n} subscriptions)");
    }
    let per_key = per_key.lock().unwrap().clone();
    assert_eq!(per_key.len(), keys as usize);
    for (key, ns) in per_key.iter() {
        assert_eq!(ns.len(), (total / keys) as usize, "{key}");
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "order broken for {key}: {ns:?}"
        );
    }
    assert_eq!(observer.count("consumed"), total as usize);
    assert_eq!(observer.count("acked"), total as usize);
    for shard in &shards {
        let st = store.state(stream, shard).await.unwrap();
        assert!(st.checkpoint.is_some(), "{shard} has a checkpoint");
        assert_eq!(
            st.checkpoint,
            last_sequence_number(&emu, stream, shard).await,
            "{shard} is checkpointed at its last record"
        );
        assert!(!st.live, "released on stop");
    }
    // the stream consumer was registered once and is active
    let summary = emu
        .client()
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let consumers = emu
        .client()
        .list_stream_consumers()
        .stream_arn(summary.stream_description_summary().unwrap().stream_arn())
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = consumers
        .consumers()
        .iter()
        .map(|c| c.consumer_name())
        .collect();
    assert_eq!(names, ["mq-test"]);
    queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_restart_continues_from_the_checkpoint() {
    let started = Instant::now();
    // the server ends every subscription after 1.5 s: re-subscriptions after the end of the event
    // stream, with the default re-subscription interval far away
    let emu = Emulator::start_with(ferrokinesis::store::StoreOptions {
        subscribe_to_shard_session_ms: 1_500,
        ..store_options()
    })
    .await;
    let stream = "fanout-restart";
    emu.create_stream(stream, 2).await;
    let counter = RequestCounter::default();
    let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
    // each instance with its own options and client, as after a restart
    let instance = |id: &str| {
        queue_on(
            client(&emu.endpoint, true, Some(counter.clone()), None),
            store.clone(),
            id,
            ShardOptions::default().enhanced_fan_out("mq-test"),
            CommonOptions::default(),
        )
    };
    let a = instance("a");
    let q = QueueName::new(stream).unwrap();
    a.register(&q).await.unwrap();
    let (keys, first, total) = (100u64, 4_000u64, 5_000u64);
    emulator::publish_all(&a, &q, messages(0..first, keys)).await;

    let ledger = Arc::new(DeliveryLedger::default());
    let per_key: PerKey = Arc::default();
    let largest = Arc::new(AtomicUsize::new(0));
    let handler =
        |pause| recording_handler(ledger.clone(), per_key.clone(), largest.clone(), pause);
    // slowly: the stop lands in the middle of the shards
    let opts = fast_options();
    let consumer = a
        .consume(&q, handler(Duration::from_millis(20)), opts.clone())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "1,500 delivered before the stop",
        || ledger.distinct() >= 1_500,
    )
    .await;
    consumer.stop().await;
    a.shutdown().await.unwrap();
    let at_stop = ledger.distinct();
    let mut checkpoints = Vec::new();
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let st = store.state(stream, shard).await.unwrap();
        assert!(!st.live, "{shard} released on stop");
        checkpoints.push(st.checkpoint);
    }
    assert!(
        checkpoints.iter().all(Option::is_some),
        "both shards checkpointed before the stop: {checkpoints:?}"
    );
    assert!(at_stop < first as usize, "stopped half way ({at_stop})");

    // a second instance, with its own options: it finds the stream consumer registered
    let b = instance("b");
    b.register(&q).await.unwrap();
    let consumer = b
        .consume(&q, handler(Duration::from_millis(2)), opts)
        .await
        .unwrap();
    // more records while b consumes, over about 3 s (two server-side subscription ends)
    for slice in 0..10u64 {
        let from = first + slice * 100;
        emulator::publish_all(&b, &q, messages(from..from + 100, keys)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually(Duration::from_secs(60), "all 5,000 delivered", || {
        ledger.distinct() == total as usize
    })
    .await;
    let (lost, duplicates) = settle_and_stop(consumer, &ledger, total).await;
    let elapsed = started.elapsed();
    let largest = largest.load(Ordering::SeqCst);
    let subscribes = counter.subscribe_to_shard.load(Ordering::SeqCst);
    println!(
        "fan-out restart: {total} messages, {at_stop} before the stop, lost {lost}, \
         duplicates {duplicates} (largest batch {largest}), SubscribeToShard {subscribes}, \
         GetRecords {}, {elapsed:?}",
        counter.get_records.load(Ordering::SeqCst),
    );
    assert_eq!(lost, 0);
    assert!(
        duplicates <= largest,
        "at most one batch again: {duplicates} > {largest}"
    );
    // events of thousands of records are cut to the adaptive batch size (at most 500)
    assert!(largest <= 500, "batches honour the batch size: {largest}");
    assert_eq!(counter.get_records.load(Ordering::SeqCst), 0);
    // 2 shards × 2 instances, plus at least one re-subscription per server-side end
    assert!(subscribes >= 6, "{subscribes} subscriptions");
    // per key, the first deliveries are in order
    for (key, ns) in per_key.lock().unwrap().iter() {
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<u64> = ns.iter().copied().filter(|n| seen.insert(*n)).collect();
        assert_eq!(firsts.len(), (total / keys) as usize, "{key}");
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "order broken for {key}: {ns:?}"
        );
    }
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let st = store.state(stream, shard).await.unwrap();
        assert_eq!(
            st.checkpoint,
            last_sequence_number(&emu, stream, shard).await,
            "{shard} is checkpointed at its last record"
        );
    }
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reads_a_split_shard_to_its_end() {
    let stream = "fanout-split";
    let emu = Emulator::with_stream(stream, 1).await;
    let counter = RequestCounter::default();
    let store = Arc::new(InMemoryLeaseStore::new());
    let queue = queue_on(
        client(&emu.endpoint, true, Some(counter.clone()), None),
        store.clone(),
        "solo",
        ShardOptions::default().enhanced_fan_out("mq-test"),
        CommonOptions::default(),
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    emulator::publish_all(&queue, &q, messages(0..500, 50)).await;
    // split the only shard in two halves of the hash key range: it closes, two children open
    emu.split_in_half(stream, "shardId-000000000000").await;
    let mut children_open = false;
    for _ in 0..100 {
        let shards = emu
            .client()
            .list_shards()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        if shards.shards().len() == 3 {
            children_open = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(children_open, "the split happened");
    emulator::publish_all(&queue, &q, messages(500..1_000, 50)).await;

    let ledger = Arc::new(DeliveryLedger::default());
    let consumer = queue
        .consume(
            &q,
            recording_handler(
                ledger.clone(),
                Arc::default(),
                Arc::default(),
                Duration::ZERO,
            ),
            fast_options(),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "all 1,000 delivered", || {
        ledger.distinct() == 1_000
    })
    .await;
    let parent = store.clone();
    let mut finished = false;
    for _ in 0..200 {
        if parent
            .state(stream, "shardId-000000000000")
            .await
            .unwrap()
            .finished
        {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.stop().await;
    println!(
        "fan-out split: 1000 messages, lost {}, duplicates {}, parent finished {finished}, \
         SubscribeToShard {}",
        1_000 - ledger.distinct(),
        ledger.duplicates(),
        counter.subscribe_to_shard.load(Ordering::SeqCst)
    );
    assert_eq!(ledger.duplicates(), 0);
    assert!(finished, "the closed parent is marked finished");
    assert_eq!(counter.get_records.load(Ordering::SeqCst), 0);
    queue.shutdown().await.unwrap();
}
