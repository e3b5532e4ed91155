//! An embedded ferrokinesis emulator on a loopback port, SDK clients for it, and interceptors
//! that count or throttle requests.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_sdk_kinesis::types::{Record, ShardIteratorType, StreamStatus};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use ferrokinesis::store::{Store, StoreOptions};
use mq_core::testkit::{RecordingObserver, wait_until};
use mq_core::{
    CommonOptions, DispatchMode, LifecycleDispatcher, MessageQueue, NewMessage, QueueName,
};
use mq_kinesis::{KinesisOptions, KinesisQueue, LeaseStore};
use tokio::task::JoinHandle;

pub struct Emulator {
    pub endpoint: String,
    server: JoinHandle<()>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn store_options() -> StoreOptions {
    StoreOptions {
        create_stream_ms: 0,
        delete_stream_ms: 0,
        update_stream_ms: 0,
        shard_limit: 1000,
        ..StoreOptions::default()
    }
}

impl Emulator {
    pub async fn start() -> Self {
        Self::start_with(store_options()).await
    }

    /// An emulator holding one active stream of `shards` shards.
    pub async fn with_stream(stream: &str, shards: i32) -> Self {
        let emu = Self::start().await;
        emu.create_stream(stream, shards).await;
        emu
    }

    pub async fn start_with(options: StoreOptions) -> Self {
        Self::start_layered(options, Hang::default()).await
    }

    /// An emulator that leaves the requests of `hang.operation` unanswered while `hang.on` is set.
    pub async fn start_hanging(hang: Hang) -> Self {
        Self::start_layered(store_options(), hang).await
    }

    async fn start_layered(options: StoreOptions, hang: Hang) -> Self {
        let (app, store) = ferrokinesis::create_app(options);
        let app = app
            .layer(axum::extract::DefaultBodyLimit::max(7 << 20))
            .layer(axum::middleware::from_fn_with_state(
                store,
                subscribe_from_position,
            ))
            .layer(axum::middleware::from_fn_with_state(hang, hang_requests));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Emulator {
            endpoint: format!("http://{addr}"),
            server,
        }
    }

    pub fn client(&self) -> Client {
        client(&self.endpoint, true, None, None)
    }

    /// Creates `stream` with `shards` shards and waits until it is active.
    pub async fn create_stream(&self, stream: &str, shards: i32) {
        let c = self.client();
        c.create_stream()
            .stream_name(stream)
            .shard_count(shards)
            .send()
            .await
            .unwrap();
        self.wait_active(stream).await;
    }

    /// Splits `shard` of `stream` at the middle of its hash key range (it closes, two children
    /// open) and waits until the stream is active again.
    pub async fn split_in_half(&self, stream: &str, shard: &str) {
        let c = self.client();
        let listed = c.list_shards().stream_name(stream).send().await.unwrap();
        let parent = listed.shards().iter().find(|s| s.shard_id() == shard);
        let range = parent.and_then(|s| s.hash_key_range()).unwrap();
        let lo: u128 = range.starting_hash_key().parse().unwrap();
        let hi: u128 = range.ending_hash_key().parse().unwrap();
        c.split_shard()
            .stream_name(stream)
            .shard_to_split(shard)
            .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
            .send()
            .await
            .unwrap();
        self.wait_active(stream).await;
    }

    /// Waits until `stream` is active (after a create, split or merge).
    pub async fn wait_active(&self, stream: &str) {
        wait_active(&self.client(), stream).await;
    }
}

/// Waits (up to 10 s) until `stream` is active.
pub async fn wait_active(client: &Client, stream: &str) {
    wait_until(Duration::from_secs(10), "stream active", || async {
        let s = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        s.stream_description_summary()
            .is_some_and(|d| d.stream_status() == &StreamStatus::Active)
    })
    .await;
}

/// Every record of `shard` from its trim horizon to the newest, read with GetRecords.
pub async fn shard_records(client: &Client, stream: &str, shard: &str) -> Vec<Record> {
    let mut records = Vec::new();
    let mut it = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator()
        .map(str::to_owned);
    while let Some(i) = it {
        let page = client
            .get_records()
            .shard_iterator(i)
            .limit(10_000)
            .send()
            .await
            .unwrap();
        if page.records.is_empty() {
            break;
        }
        // moved, not copied: the benchmark's bare reader uses this too
        records.extend(page.records);
        it = page.next_shard_iterator;
    }
    records
}

/// The ids of the shards of `stream`, as ListShards gives them.
pub async fn shard_ids(client: &Client, stream: &str) -> Vec<String> {
    let listed = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    listed
        .shards()
        .iter()
        .map(|s| s.shard_id().to_owned())
        .collect()
}

/// Common options whose lifecycle events reach `obs` synchronously, before the consumer goes on.
pub fn observed(obs: &Arc<RecordingObserver>) -> CommonOptions {
    CommonOptions::default().lifecycle(
        LifecycleDispatcher::builder()
            .observer(obs.clone())
            .mode(DispatchMode::Sync)
            .build(),
    )
}

/// Options of instance `instance` over `store` whose lifecycle events reach `obs`
/// synchronously, looking for new shards every 50 ms.
pub fn observed_options(
    store: Arc<dyn LeaseStore>,
    instance: &str,
    obs: &Arc<RecordingObserver>,
) -> KinesisOptions {
    KinesisOptions::new(store)
        .instance_id(instance)
        .common(observed(obs))
        .discovery_interval(Duration::from_millis(50))
}

/// `n` messages of type `t` whose payloads are `{"i": 0}`, `{"i": 1}`, ...
pub fn numbered(n: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|i| NewMessage::new("t", serde_json::json!({ "i": i })))
        .collect()
}

/// Registers `stream` on `queue`, publishes `numbered(n)` to it (all accepted) and returns its
/// name.
pub async fn register_and_publish(queue: &KinesisQueue, stream: &str, n: usize) -> QueueName {
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    publish_all(queue, &q, numbered(n)).await;
    q
}

pub use mq_core::testkit::publish_all;

/// Requests of one operation left unanswered while `on` is set (a call that never returns);
/// `held` counts them.
#[derive(Debug, Clone, Default)]
pub struct Hang {
    pub operation: &'static str,
    pub on: Arc<std::sync::atomic::AtomicBool>,
    pub held: Arc<AtomicUsize>,
}

impl Hang {
    pub fn new(operation: &'static str) -> Self {
        Hang {
            operation,
            on: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            held: Arc::default(),
        }
    }
}

async fn hang_requests(State(hang): State<Hang>, req: Request, next: Next) -> Response {
    let hit = !hang.operation.is_empty()
        && hang.on.load(Ordering::SeqCst)
        && req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.rsplit('.').next() == Some(hang.operation));
    if hit {
        hang.held.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    next.run(req).await
}

/// ferrokinesis 0.7 validates SubscribeToShard's `StartingPosition` as a structure with `Type`
/// only and drops its `SequenceNumber` and `Timestamp`, so AFTER_SEQUENCE_NUMBER and
/// AT_SEQUENCE_NUMBER start at the start of the shard and AT_TIMESTAMP at time 0: every
/// re-subscription would read the shard again from its start. This layer hands SubscribeToShard
/// to ferrokinesis's own implementation with the request as sent (it reads the sequence number
/// from there); when that fails, the request takes the normal way and gets ferrokinesis's error.
async fn subscribe_from_position(State(store): State<Store>, req: Request, next: Next) -> Response {
    let subscribe = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.ends_with(".SubscribeToShard"));
    if !subscribe {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    if let Ok(data) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Ok(stream) = ferrokinesis::actions::subscribe_to_shard::execute_streaming(
            &store,
            data,
            ferrokinesis::constants::CONTENT_TYPE_JSON,
        )
        .await
    {
        return Response::builder()
            .status(200)
            .header("Content-Type", "application/vnd.amazon.eventstream")
            .body(stream)
            .unwrap();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

pub fn client(
    endpoint: &str,
    retries: bool,
    counter: Option<RequestCounter>,
    throttle: Option<ReadThrottle>,
) -> Client {
    let mut b = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"));
    if !retries {
        b = b.retry_config(RetryConfig::disabled());
    }
    if let Some(c) = counter {
        b = b.interceptor(c);
    }
    if let Some(t) = throttle {
        b = b.interceptor(t);
    }
    Client::from_conf(b.build())
}

fn target(ctx: &BeforeTransmitInterceptorContextRef<'_>) -> String {
    ctx.request()
        .headers()
        .get("x-amz-target")
        .unwrap_or_default()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Counts requests per operation (SubscribeToShard also per shard).
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    pub put_records: Arc<AtomicUsize>,
    pub get_records: Arc<AtomicUsize>,
    pub subscribe_to_shard: Arc<AtomicUsize>,
    pub list_shards: Arc<AtomicUsize>,
    pub subscribes_by_shard: Arc<Mutex<HashMap<String, usize>>>,
}

impl RequestCounter {
    /// SubscribeToShard requests sent for `shard`.
    pub fn subscribes_of(&self, shard: &str) -> usize {
        self.subscribes_by_shard
            .lock()
            .unwrap()
            .get(shard)
            .copied()
            .unwrap_or(0)
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        match target(ctx).as_str() {
            "PutRecords" => self.put_records.fetch_add(1, Ordering::SeqCst),
            "GetRecords" => self.get_records.fetch_add(1, Ordering::SeqCst),
            "ListShards" => self.list_shards.fetch_add(1, Ordering::SeqCst),
            "SubscribeToShard" => {
                let shard = ctx
                    .request()
                    .body()
                    .bytes()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v["ShardId"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                *self
                    .subscribes_by_shard
                    .lock()
                    .unwrap()
                    .entry(shard)
                    .or_default() += 1;
                self.subscribe_to_shard.fetch_add(1, Ordering::SeqCst)
            }
            _ => 0,
        };
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct IsGetRecords(bool);

impl Storable for IsGetRecords {
    type Storer = StoreReplace<Self>;
}

/// Replaces every `every`-th GetRecords response by a ProvisionedThroughputExceededException.
#[derive(Debug, Clone)]
pub struct ReadThrottle {
    pub every: usize,
    pub seen: Arc<AtomicUsize>,
    pub injected: Arc<AtomicUsize>,
}

impl ReadThrottle {
    pub fn every(n: usize) -> Self {
        ReadThrottle {
            every: n,
            seen: Arc::default(),
            injected: Arc::default(),
        }
    }
}

impl Intercept for ReadThrottle {
    fn name(&self) -> &'static str {
        "ReadThrottle"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        cfg.interceptor_state()
            .store_put(IsGetRecords(target(ctx) == "GetRecords"));
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_kinesis::error::BoxError> {
        if !cfg.load::<IsGetRecords>().is_some_and(|g| g.0) {
            return Ok(());
        }
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n.is_multiple_of(self.every) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            let resp = ctx.response_mut();
            *resp.status_mut() = 400u16.try_into().unwrap();
            *resp.body_mut() = SdkBody::from(
                r#"{"__type":"ProvisionedThroughputExceededException","message":"injected read throttle"}"#,
            );
        }
        Ok(())
    }
}
