//! Backoff measured from a recorder, not slept for: an SDK interceptor answers the first reads
//! with `ProvisionedThroughputExceededException` and records when each `GetRecords` went out
//! (the waits start short, double, with jitter); another fails every `ListShards` for a while
//! (each listing is retried with growing waits, the shards keep being read on the last
//! listing, nothing is given up, and a split afterwards is picked up).

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use emulator::Emulator;
use mq_core::testkit::{DeliveryLedger, RecordingObserver, eventually, fast_options};
use mq_core::{LifecycleEvent, MessageQueue, NewMessage};
use mq_kinesis::{InMemoryLeaseStore, KinesisQueue};

#[derive(Debug, Clone)]
struct Operation(String);

impl Storable for Operation {
    type Storer = StoreReplace<Self>;
}

/// Records when each request of `operation` went out, and answers the first `first` of them
/// (and every one while `failing` is set) with `error` instead of the emulator's answer.
#[derive(Debug, Clone)]
struct Faults {
    operation: &'static str,
    error: &'static str,
    first: usize,
    failing: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<(Instant, bool)>>>,
    seen: Arc<AtomicUsize>,
}

impl Faults {
    fn new(operation: &'static str, error: &'static str, first: usize) -> Self {
        Faults {
            operation,
            error,
            first,
            failing: Arc::default(),
            sent: Arc::default(),
            seen: Arc::default(),
        }
    }

    fn sent(&self) -> Vec<(Instant, bool)> {
        self.sent.lock().unwrap().clone()
    }

    fn failed(&self) -> usize {
        self.sent().iter().filter(|(_, f)| *f).count()
    }
}

impl Intercept for Faults {
    fn name(&self) -> &'static str {
        "Faults"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        let op = ctx
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        cfg.interceptor_state().store_put(Operation(op));
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        if cfg
            .load::<Operation>()
            .is_none_or(|o| o.0 != self.operation)
        {
            return Ok(());
        }
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = n <= self.first || self.failing.load(Ordering::SeqCst);
        // the time the request went out is close enough to the time its answer came back here:
        // the emulator answers in well under a millisecond
        self.sent.lock().unwrap().push((Instant::now(), fail));
        if fail {
            let resp = ctx.response_mut();
            *resp.status_mut() = 400u16.try_into().unwrap();
            *resp.body_mut() = SdkBody::from(format!(
                r#"{{"__type":"{}","message":"injected"}}"#,
                self.error
            ));
        }
        Ok(())
    }
}

fn faulty_client(endpoint: &str, faults: Faults) -> Client {
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        // every request counted is one the consumer made
        .retry_config(RetryConfig::disabled())
        .interceptor(faults)
        .build();
    Client::from_conf(conf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_reads_wait_short_first_then_longer() {
    let stream = "backoff-throttle";
    let emu = Emulator::with_stream(stream, 1).await;
    let throttled = 4;
    let faults = Faults::new(
        "GetRecords",
        "ProvisionedThroughputExceededException",
        throttled,
    );
    let queue = KinesisQueue::with_client(
        faulty_client(&emu.endpoint, faults.clone()),
        mq_kinesis::KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .discovery_interval(Duration::from_millis(100)),
    );
    let q = emulator::register_and_publish(&queue, stream, 20).await;
    let ledger = Arc::new(DeliveryLedger::default());
    let consumer = queue
        .consume(&q, ledger.handler(), fast_options())
        .await
        .unwrap();
    let l = ledger.clone();
    eventually(Duration::from_secs(30), "all 20 delivered", move || {
        l.distinct() == 20
    })
    .await;
    consumer.stop().await;
    let sent = faults.sent();
    let gaps: Vec<Duration> = sent.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let waits: Vec<u128> = gaps[..throttled].iter().map(Duration::as_millis).collect();
    println!(
        "GetRecords {} ({} throttled); waits after the throttled ones (ms): {waits:?}",
        sent.len(),
        faults.failed()
    );
    assert_eq!(faults.failed(), throttled);
    // wait k is drawn between half of and all of 200 ms * 2^k; reads are at least 200 ms apart
    let slack = Duration::from_millis(400);
    for (k, gap) in gaps[..throttled].iter().enumerate() {
        let cap = Duration::from_millis(200) * 2u32.pow(k as u32);
        let least = (cap / 2).max(Duration::from_millis(200)) - Duration::from_millis(20);
        assert!(
            *gap >= least && *gap <= cap + slack,
            "wait {k} was {gap:?}, expected {least:?}..={:?}",
            cap + slack
        );
    }
    assert!(
        gaps[0] <= Duration::from_millis(200) + slack,
        "the first wait is short"
    );
    assert!(gaps[throttled - 1] > gaps[0], "the waits grow");
    assert_eq!(ledger.duplicates(), 0);
    queue.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_listings_are_retried_and_the_shards_keep_being_read() {
    let stream = "backoff-listing";
    let emu = Emulator::with_stream(stream, 2).await;
    let faults = Faults::new("ListShards", "InternalFailure", 0);
    let obs = Arc::new(RecordingObserver::default());
    let queue = KinesisQueue::with_client(
        faulty_client(&emu.endpoint, faults.clone()),
        emulator::observed_options(Arc::new(InMemoryLeaseStore::new()), "a", &obs),
    );
    let q = emulator::register_and_publish(&queue, stream, 50).await;
    let ledger = Arc::new(DeliveryLedger::default());
    let consumer = queue
        .consume(&q, ledger.handler(), fast_options())
        .await
        .unwrap();
    let l = ledger.clone();
    eventually(
        Duration::from_secs(30),
        "the first 50 delivered",
        move || l.distinct() == 50,
    )
    .await;

    // every listing fails for a while: two whole listings (five attempts each) at least
    let before = faults.sent().len();
    faults.failing.store(true, Ordering::SeqCst);
    let outage_started = Instant::now();
    let f = faults.clone();
    eventually(Duration::from_secs(30), "two listings failed", move || {
        f.failed() >= 10
    })
    .await;
    let publish = emulator::numbered(100)
        .into_iter()
        .skip(50)
        .collect::<Vec<NewMessage>>();
    emulator::publish_all(&queue, &q, publish).await;
    let l = ledger.clone();
    eventually(
        Duration::from_secs(30),
        "50 more delivered during the outage",
        move || l.distinct() == 100,
    )
    .await;
    faults.failing.store(false, Ordering::SeqCst);
    let outage = outage_started.elapsed();
    let failed: Vec<Instant> = faults.sent()[before..]
        .iter()
        .filter(|(_, f)| *f)
        .map(|(t, _)| *t)
        .collect();
    let disconnects_during = obs.count("consumer_disconnected");

    // the listing is back: a split is picked up, its children are read
    emu.split_in_half(stream, "shardId-000000000000").await;
    let publish = emulator::numbered(150)
        .into_iter()
        .skip(100)
        .collect::<Vec<NewMessage>>();
    emulator::publish_all(&queue, &q, publish).await;
    let l = ledger.clone();
    let children = tokio::time::timeout(
        Duration::from_secs(30),
        eventually(Duration::from_secs(30), "150 delivered", move || {
            l.distinct() == 150
        }),
    )
    .await;
    consumer.stop().await;
    let child_consumers = obs
        .events()
        .iter()
        .filter(|e| {
            matches!(e, LifecycleEvent::ConsumerConnected { consumer }
            if consumer.shard_id.as_deref().is_some_and(|s| {
                s != "shardId-000000000000" && s != "shardId-000000000001"
            }))
        })
        .count();

    // within one listing the waits grow: at least 100, 200, 400, 800 ms (jitter adds on top)
    let first_listing: Vec<u128> = failed
        .windows(2)
        .take(4)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    println!(
        "ListShards failed {} times over an outage of {outage:?}; waits within the first failed listing (ms) {first_listing:?}; shard consumers disconnected during it {disconnects_during}; delivered {} of 150, duplicates {}; child shard consumers started {child_consumers}",
        failed.len(),
        ledger.distinct(),
        ledger.duplicates()
    );
    assert_eq!(
        disconnects_during, 0,
        "no shard consumer gave up during the outage"
    );
    for (k, wait) in first_listing.iter().enumerate() {
        let least = 100u128 << k;
        assert!(*wait + 20 >= least, "wait {k} {wait} ms < {least} ms");
    }
    assert!(children.is_ok(), "the split was picked up after the outage");
    assert!(child_consumers >= 1, "a child shard was read");
    queue.shutdown().await.unwrap();
}
