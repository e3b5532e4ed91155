//! `mqctl kinesis status` run as a real binary against an embedded Kinesis emulator (with a
//! split shard) and a real Redis lease store.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::StreamStatus;
use fred::interfaces::ClientLike;
use mq::kinesis::{LeaseStore, RedisLeaseStore};
use mq_core::testkit::service_url;

const BIN: &str = env!("CARGO_BIN_EXE_mqctl");

async fn emulator() -> (String, tokio::task::JoinHandle<()>) {
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
    (format!("http://{addr}"), server)
}

async fn wait_active(c: &Client, stream: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = c
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .expect("describe");
        if s.stream_description_summary().map(|d| d.stream_status()) == Some(&StreamStatus::Active)
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "stream not active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_lineage_leases_checkpoints_poison_and_instances() {
    let redis = match service_url("REDIS_URL") {
        Ok(u) => u,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let (endpoint, server) = emulator().await;
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .build();
    let kinesis = Client::from_conf(config);
    let stream = "mqctl-status";
    kinesis
        .create_stream()
        .stream_name(stream)
        .shard_count(1)
        .send()
        .await
        .expect("create");
    wait_active(&kinesis, stream).await;
    kinesis
        .split_shard()
        .stream_name(stream)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await
        .expect("split");
    wait_active(&kinesis, stream).await;

    let prefix = format!("mqctl-test-{}", std::process::id());
    let leases = RedisLeaseStore::connect(&redis, prefix.clone())
        .await
        .expect("redis");
    let ttl = Duration::from_secs(60);
    let parent = leases
        .acquire(stream, "shardId-000000000000", "instance-b", ttl)
        .await
        .expect("acquire")
        .expect("free");
    assert!(leases.finish(&parent).await.expect("finish"));
    assert!(leases.release(&parent).await.expect("release"));
    let child = leases
        .acquire(stream, "shardId-000000000001", "instance-a", ttl)
        .await
        .expect("acquire")
        .expect("free");
    leases
        .checkpoint(&child, "4959033827149025660855969253836")
        .await
        .expect("checkpoint");
    for _ in 0..2 {
        leases
            .record_failure(
                stream,
                "shardId-000000000001",
                "4959033827149025660855969253836",
            )
            .await
            .expect("failure");
    }
    leases
        .heartbeat(stream, "instance-a", ttl)
        .await
        .expect("heartbeat");

    let args = vec![
        "kinesis".to_owned(),
        "status".into(),
        "--stream".into(),
        stream.into(),
        "--redis-url".into(),
        redis.clone(),
        "--prefix".into(),
        prefix.clone(),
        "--endpoint-url".into(),
        endpoint.clone(),
        "--region".into(),
        "us-east-1".into(),
    ];
    let run = move |json: bool| {
        let mut args = args.clone();
        if json {
            args.push("--json".into());
        }
        assert_cmd::Command::new(BIN)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .timeout(Duration::from_secs(60))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    };
    let run2 = run.clone();
    let out = tokio::task::spawn_blocking(move || run(true))
        .await
        .expect("run");
    let status: serde_json::Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
    assert_eq!(status["live_instances"], serde_json::json!(["instance-a"]));
    let shards = status["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3, "{status}");
    let p = &shards[0];
    assert_eq!(p["shard"], "shardId-000000000000");
    assert_eq!(p["closed"], true);
    assert_eq!(p["finished"], true);
    assert_eq!(p["owner"], serde_json::Value::Null, "released");
    assert_eq!(p["epoch"], 1);
    assert_eq!(
        p["children"],
        serde_json::json!(["shardId-000000000001", "shardId-000000000002"])
    );
    let c = &shards[1];
    assert_eq!(c["parent"], "shardId-000000000000");
    assert_eq!(c["owner"], "instance-a");
    assert_eq!(c["live"], true);
    assert_eq!(c["epoch"], 1);
    assert_eq!(c["checkpoint"], "4959033827149025660855969253836");
    assert_eq!(c["poison"]["4959033827149025660855969253836"], 2);
    assert_eq!(shards[2]["owner"], serde_json::Value::Null);
    // the parent is finished, so both children may be read; the only live instance gets both
    assert_eq!(
        p["assigned_to"],
        serde_json::Value::Null,
        "finished: never assigned"
    );
    assert_eq!(c["assigned_to"], "instance-a");
    assert_eq!(shards[2]["assigned_to"], "instance-a");
    assert_eq!(c["waiting_for_parents"], false);

    let human = tokio::task::spawn_blocking(move || run2(false))
        .await
        .expect("run");
    let human = String::from_utf8_lossy(&human);
    eprintln!("{human}");
    assert!(human.contains("live instances  instance-a"), "{human}");
    assert!(human.contains("finished"), "{human}");
    assert!(human.contains("ASSIGNED"), "{human}");
    let keys: Vec<String> = leases
        .client()
        .custom(fred::cmd!("KEYS"), vec![format!("{prefix}:*")])
        .await
        .expect("keys");
    let _: i64 = leases
        .client()
        .custom(fred::cmd!("DEL"), keys)
        .await
        .expect("del");
    server.abort();
}
