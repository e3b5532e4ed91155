//! What the `mqctl kinesis` tests share: an embedded Kinesis emulator with a client for it,
//! running the binary against it, and removing a test's Redis keys.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::StreamStatus;
use fred::interfaces::ClientLike;
use mq::kinesis::RedisLeaseStore;
use mq_core::testkit::wait_until;

/// The `mqctl` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mqctl");

/// A ferrokinesis emulator on a loopback port (stopped when dropped) and a client for it.
pub struct Emulator {
    pub endpoint: String,
    pub client: Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Emulator {
    /// Starts the emulator; streams are active as soon as they are created.
    pub async fn start() -> Self {
        let options = ferrokinesis::store::StoreOptions {
            create_stream_ms: 0,
            delete_stream_ms: 0,
            update_stream_ms: 0,
            shard_limit: 100,
            ..ferrokinesis::store::StoreOptions::default()
        };
        let (app, _store) = ferrokinesis::create_app(options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let endpoint = format!("http://{addr}");
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .build();
        Emulator {
            endpoint,
            client: Client::from_conf(config),
            server,
        }
    }

    /// Creates `stream` with `shards` shards and waits until it is active.
    pub async fn create_stream(&self, stream: &str, shards: i32) {
        self.client
            .create_stream()
            .stream_name(stream)
            .shard_count(shards)
            .send()
            .await
            .expect("create stream");
        self.wait_active(stream).await;
    }

    /// Waits (up to 10 s) until `stream` is active (after a create, split or merge).
    pub async fn wait_active(&self, stream: &str) {
        wait_until(Duration::from_secs(10), "stream active", || async {
            let s = self
                .client
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
                .expect("describe");
            s.stream_description_summary()
                .is_some_and(|d| d.stream_status() == &StreamStatus::Active)
        })
        .await;
    }
}

/// `kinesis <args>` followed by the options that point `mqctl` at the Redis lease store under
/// `prefix` and at the emulator at `endpoint`.
pub fn kinesis_args(args: &[&str], redis_url: &str, prefix: &str, endpoint: &str) -> Vec<String> {
    let mut all: Vec<String> = vec!["kinesis".into()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.extend(
        [
            "--redis-url",
            redis_url,
            "--prefix",
            prefix,
            "--endpoint-url",
            endpoint,
            "--region",
            "us-east-1",
        ]
        .map(str::to_owned),
    );
    all
}

/// The `mqctl` command with `args`, test credentials, no instance metadata and a 60 s timeout.
pub fn mqctl(args: &[String]) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(BIN);
    cmd.args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .timeout(Duration::from_secs(60));
    cmd
}

/// Deletes every Redis key under `prefix`; how many there were.
pub async fn delete_keys(leases: &RedisLeaseStore, prefix: &str) -> usize {
    let client = leases.client();
    let keys: Vec<String> = client
        .custom(fred::cmd!("KEYS"), vec![format!("{prefix}:*")])
        .await
        .expect("keys");
    let n = keys.len();
    if n > 0 {
        let _: i64 = client.custom(fred::cmd!("DEL"), keys).await.expect("del");
    }
    n
}
