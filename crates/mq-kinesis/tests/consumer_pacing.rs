//! Paced reads: a shard with a large backlog is read with at most five `GetRecords` calls per
//! second (the default 200 ms between two reads), counted by an SDK interceptor over a busy 10 s.

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_kinesis::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use emulator::Emulator;
use mq_core::backend::{AimdOptions, AimdStrategy};
use mq_core::testkit::{DeliveryLedger, eventually, fast_options};
use mq_core::{MessageQueue, NewMessage, QueueName};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue};

/// When each GetRecords request went out.
#[derive(Debug, Clone, Default)]
struct ReadTimes(Arc<Mutex<Vec<Instant>>>);

impl Intercept for ReadTimes {
    fn name(&self) -> &'static str {
        "ReadTimes"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        let target = ctx
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        if target.ends_with(".GetRecords") {
            self.0.lock().unwrap().push(Instant::now());
        }
        Ok(())
    }
}

fn counting_client(endpoint: &str, times: ReadTimes) -> Client {
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .interceptor(times)
        .build();
    Client::from_conf(conf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_shard_is_read_at_most_five_times_a_second() {
    let stream = "paced";
    let emu = Emulator::with_stream(stream, 1).await;
    let q = QueueName::new(stream).unwrap();
    let publisher = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new())),
    );
    publisher.register(&q).await.unwrap();
    for chunk in 0..10 {
        let msgs = (0..500)
            .map(|i| NewMessage::new("t", serde_json::json!({ "i": chunk * 500 + i })))
            .collect();
        emulator::publish_all(&publisher, &q, msgs).await;
    }

    // small reads: the 5,000 records need far more than 50 of them
    let times = ReadTimes::default();
    let strategy = AimdStrategy::new(AimdOptions::default().initial_batch(20).max_batch(20));
    let queue = KinesisQueue::with_client(
        counting_client(&emu.endpoint, times.clone()),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .strategy(Arc::new(strategy))
            .discovery_interval(Duration::from_millis(100)),
    );
    queue.register(&q).await.unwrap();
    let ledger = Arc::new(DeliveryLedger::default());
    let consumer = queue
        .consume(&q, ledger.handler(), fast_options())
        .await
        .unwrap();
    let t = times.clone();
    eventually(Duration::from_secs(30), "the first read", move || {
        !t.0.lock().unwrap().is_empty()
    })
    .await;
    let first = times.0.lock().unwrap()[0];
    let window = Duration::from_secs(10);
    // the measurement window itself
    tokio::time::sleep_until((first + window).into()).await;
    consumer.stop().await;

    let calls: Vec<Instant> = times
        .0
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|t| *t < first + window)
        .collect();
    let per_second = calls.len() as f64 / window.as_secs_f64();
    let busiest = calls
        .iter()
        .map(|s| {
            calls
                .iter()
                .filter(|t| **t >= *s && **t < *s + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let delivered = ledger.distinct();
    println!(
        "GetRecords calls on the shard over 10 s: {}, {per_second:.2}/s, busiest second {busiest}; {delivered} of 5000 records delivered",
        calls.len()
    );
    assert!(
        delivered < 5000,
        "the shard stayed busy for the whole window"
    );
    assert!(
        per_second <= 5.0,
        "{per_second:.2} GetRecords calls per second"
    );
}
