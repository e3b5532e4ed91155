//! Records aggregated by the Kinesis Producer Library: each user record is handled on its own,
//! with its own partition key; a restart resumes inside an aggregated record; an aggregated
//! record whose digest or protobuf is wrong goes to the dead letters whole, with its bytes.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/kpl.rs"]
mod kpl;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use emulator::Emulator;
use md5::{Digest, Md5};
use mq_core::testkit::{RecordingDeadLetters, eventually, fast_options};
use mq_core::{Batch, HandlerContext, Message, MessageQueue, QueueName, handler_fn};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue, LeaseStore};

/// `count` aggregated records of `per` user records each; user record `i` of aggregate `a` has
/// the payload `{"a": a, "i": i}` and the partition key `key-<a>-<i % 3>`.
fn aggregates(count: usize, per: usize) -> Vec<Vec<kpl::UserRecord>> {
    (0..count)
        .map(|a| {
            (0..per)
                .map(|i| kpl::UserRecord {
                    partition_key: format!("key-{a}-{}", i % 3),
                    explicit_hash_key: (i % 4 == 0).then(|| (a * 1000 + i).to_string()),
                    data: serde_json::to_vec(&serde_json::json!({
                        "type": "t",
                        "payload": {"a": a, "i": i},
                    }))
                    .unwrap(),
                })
                .collect()
        })
        .collect()
}

/// A handled message: (a, i, partition key).
type Seen = (u64, u64, Option<String>);

/// Every message handled, in order.
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<Vec<Seen>>>);

impl Handled {
    fn handler(&self) -> Arc<dyn mq_core::Handler> {
        let log = self.0.clone();
        Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
            let log = log.clone();
            async move {
                let mut l = log.lock().unwrap();
                for m in batch.iter() {
                    l.push(key_of(m));
                }
            }
        }))
    }
    fn runs(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn distinct(&self) -> usize {
        let mut seen: HashMap<(u64, u64), usize> = HashMap::new();
        for (a, i, _) in self.0.lock().unwrap().iter() {
            *seen.entry((*a, *i)).or_default() += 1;
        }
        seen.len()
    }
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

fn key_of(m: &Message) -> Seen {
    (
        m.payload["a"].as_u64().unwrap_or(u64::MAX),
        m.payload["i"].as_u64().unwrap_or(u64::MAX),
        m.partition_key.clone(),
    )
}

async fn setup(
    stream: &str,
) -> (
    Emulator,
    KinesisQueue,
    QueueName,
    Arc<RecordingDeadLetters>,
    Arc<InMemoryLeaseStore>,
) {
    let emu = Emulator::with_stream(stream, 1).await;
    let store = Arc::new(InMemoryLeaseStore::new());
    let dead = Arc::new(RecordingDeadLetters::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(store.clone())
            .instance_id("kpl")
            .common(mq_core::CommonOptions::default().dead_letters(dead.clone()))
            .discovery_interval(Duration::from_millis(100)),
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    (emu, queue, q, dead, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_user_records_in_a_hundred_aggregates_are_all_handled() {
    let stream = "kpl-thousand";
    let (emu, queue, q, dead, _store) = setup(stream).await;
    kpl::put(&emu.client(), stream, aggregates(100, 10)).await;

    let handled = Handled::default();
    let consumer = queue
        .consume(&q, handled.handler(), fast_options())
        .await
        .unwrap();
    let h = handled.clone();
    let d = dead.clone();
    // a failure here is counted below
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        eventually(Duration::from_secs(60), "1,000 user records", move || {
            h.distinct() == 1000 || !d.letters().is_empty()
        }),
    )
    .await;
    consumer.stop().await;
    let letters = dead.letters().len();
    println!(
        "handled {} distinct user records in {} handler runs, {letters} dead-lettered",
        handled.distinct(),
        handled.runs()
    );
    assert_eq!(letters, 0);
    assert_eq!(handled.distinct(), 1000);
    for (a, i, key) in handled.all() {
        assert_eq!(
            key.as_deref(),
            Some(format!("key-{a}-{}", i % 3).as_str()),
            "user record {a}/{i} has its own partition key"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_inside_an_aggregated_record() {
    let stream = "kpl-restart";
    let (emu, queue, q, dead, store) = setup(stream).await;
    kpl::put(&emu.client(), stream, aggregates(100, 10)).await;

    let handled = Handled::default();
    // thirteen on-demand batches of 25 user records: each ends inside an aggregated record and is
    // checkpointed there
    for _ in 0..13 {
        let report = queue
            .consume_batch(&q, handled.handler(), &fast_options().batch_size(25))
            .await
            .unwrap();
        assert_eq!(report.delivered, 25);
    }
    let checkpoint = store
        .state(stream, "shardId-000000000000")
        .await
        .unwrap()
        .checkpoint
        .unwrap_or_default();
    assert_eq!(handled.runs(), 325);
    // inside aggregated record 32, after its first 5 user records (the long form: 128 digits
    // ending in the count of user records done)
    assert_eq!(checkpoint.len(), 128, "{checkpoint}");
    assert!(checkpoint.ends_with("0000005"), "{checkpoint}");

    // a new consumer goes on from there
    let consumer = queue
        .consume(&q, handled.handler(), fast_options())
        .await
        .unwrap();
    let h = handled.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        eventually(Duration::from_secs(60), "1,000 user records", move || {
            h.distinct() == 1000
        }),
    )
    .await;
    consumer.stop().await;
    let rerun = handled.runs() - handled.distinct();
    println!(
        "handled {} distinct user records in {} handler runs: {rerun} run again after the restart",
        handled.distinct(),
        handled.runs()
    );
    assert_eq!(handled.distinct(), 1000);
    assert!(rerun <= 10, "at most one aggregated record run again");
    assert!(dead.letters().is_empty());
    // the first record after the restart is the sixth user record of aggregate 32
    let first = &handled.all()[325];
    assert_eq!(
        (first.0, first.1),
        (32, 5),
        "resumed inside the aggregated record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregated_record_with_a_bad_digest_or_protobuf_is_dead_lettered_whole() {
    let stream = "kpl-broken";
    let (emu, queue, q, dead, _store) = setup(stream).await;
    let mut good = aggregates(2, 10);
    let second = good.pop().unwrap();
    // the digest of another content
    let mut bad_digest = kpl::aggregate(&second);
    let last = bad_digest.len() - 1;
    bad_digest[last] ^= 0xff;
    // a digest that matches a protobuf that is cut short
    let mut proto = kpl::protobuf(&second);
    proto.truncate(proto.len() - 3);
    let mut bad_proto = kpl::MAGIC.to_vec();
    bad_proto.extend_from_slice(&proto);
    bad_proto.extend_from_slice(&Md5::digest(&proto));
    kpl::put(&emu.client(), stream, good).await;
    let c = emu.client();
    for data in [&bad_digest, &bad_proto] {
        c.put_record()
            .stream_name(stream)
            .partition_key("broken")
            .data(aws_smithy_types::Blob::new(data.clone()))
            .send()
            .await
            .unwrap();
    }

    let handled = Handled::default();
    let consumer = queue
        .consume(&q, handled.handler(), fast_options())
        .await
        .unwrap();
    let (h, d) = (handled.clone(), dead.clone());
    eventually(
        Duration::from_secs(30),
        "10 handled, 2 dead-lettered",
        move || h.distinct() == 10 && d.letters().len() == 2,
    )
    .await;
    consumer.stop().await;
    let letters = dead.letters();
    for (letter, bytes, why) in [
        (&letters[0], &bad_digest, "MD5"),
        (&letters[1], &bad_proto, "truncated"),
    ] {
        assert_eq!(
            letter.message.message_type,
            mq_kinesis::UNDECODABLE_MESSAGE_TYPE
        );
        let stored = letter.message.payload["data_base64"].as_str().unwrap();
        assert_eq!(&BASE64_STANDARD.decode(stored).unwrap(), bytes);
        assert!(letter.error.to_string().contains(why), "{}", letter.error);
    }
}
