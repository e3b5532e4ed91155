//! An embedded ferrokinesis emulator on a loopback port, SDK clients for it, and interceptors
//! that count or throttle requests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
use ferrokinesis::store::StoreOptions;
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

    pub async fn start_with(options: StoreOptions) -> Self {
        let (app, _store) = ferrokinesis::create_app(options);
        let app = app.layer(axum::extract::DefaultBodyLimit::max(7 << 20));
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = c
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
                .unwrap();
            let status = s
                .stream_description_summary()
                .map(|d| d.stream_status().as_str().to_owned());
            if status.as_deref() == Some("ACTIVE") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stream never active"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
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

/// Counts requests per operation.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    pub put_records: Arc<AtomicUsize>,
    pub get_records: Arc<AtomicUsize>,
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
