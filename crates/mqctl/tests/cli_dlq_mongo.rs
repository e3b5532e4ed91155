//! `mqctl` run as a real binary against the MongoDB-compatible server: dead letters made by a
//! real `MongoQueue`, replayed twice (the second run publishes nothing), and queue stats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mq::mongo::MongoDeadLetterStore;
use mq::{
    Batch, CommonOptions, HandlerContext, MessageQueue, MongoOptions, MongoQueue, NewMessage,
    QueueName, handler_fn,
};
use mq::{DeadLetterFilter, DeadLetterStore};
use mq_core::testkit::{fast_options, service_url};

const BIN: &str = env!("CARGO_BIN_EXE_mqctl");
const DB: &str = "mqctl_cli_test";

fn json_of(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_stats_on_mongo() {
    let uri = match service_url("MONGODB_URI") {
        Ok(u) => u,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let (dlq, coll) = ("mqctl_dlq", "mqctl_q");
    let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
    client.database(DB).drop().await.expect("drop");
    let store = Arc::new(
        MongoDeadLetterStore::from_client(
            client.clone(),
            MongoOptions::default()
                .database(DB)
                .dead_letter_collection(dlq),
        )
        .await
        .expect("store"),
    );
    let queue = MongoQueue::connect(
        &uri,
        MongoOptions::default()
            .database(DB)
            .collection(coll)
            .change_stream(false)
            .common(CommonOptions::default().dead_letters(store.clone())),
    )
    .await
    .expect("queue");
    let orders = QueueName::new("orders").expect("name");
    queue.register(&orders).await.expect("register");
    let msgs = (0..10)
        .map(|i| NewMessage::new("charge", serde_json::json!({ "n": i })).max_attempts(1))
        .collect();
    queue
        .publish(&orders, msgs)
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async move {
        Err::<(), _>(std::io::Error::other("payment gateway down"))
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while store
        .count(&DeadLetterFilter::default())
        .await
        .expect("count")
        < 10
    {
        assert!(Instant::now() < deadline, "messages were not dead-lettered");
        let _report = queue
            .consume_batch(&orders, handler.clone(), &fast_options().batch_size(100))
            .await
            .expect("consume");
    }
    queue.shutdown().await.expect("shutdown");

    let replay = [
        "--json",
        "dlq",
        "--store-url",
        uri.as_str(),
        "--mongo-database",
        DB,
        "--table",
        dlq,
        "replay",
        "--queue-table",
        coll,
        "--to",
        "replayed",
        "--rate",
        "200",
    ];
    let out = assert_cmd::Command::new(BIN)
        .args(replay)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report = json_of(&out);
    assert_eq!(
        report["published"].as_array().map(Vec::len),
        Some(10),
        "{report}"
    );
    let out = assert_cmd::Command::new(BIN)
        .args(replay)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report = json_of(&out);
    assert_eq!(
        report["published"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    assert_eq!(
        report["skipped"].as_array().map(Vec::len),
        Some(10),
        "{report}"
    );

    let out = assert_cmd::Command::new(BIN)
        .args([
            "queue",
            "stats",
            "--url",
            uri.as_str(),
            "--mongo-database",
            DB,
            "--table",
            coll,
            "--json",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let stats = json_of(&out);
    let find = |q: &str| {
        stats
            .as_array()
            .and_then(|a| a.iter().find(|s| s["queue"] == q).cloned())
            .unwrap_or_else(|| panic!("no stats for {q}: {stats}"))
    };
    let replayed = find("replayed");
    assert_eq!(replayed["total"], 10, "{stats}");
    assert_eq!(replayed["counts"]["scheduled"], 10, "{stats}");
    assert!(
        replayed["oldest_ready_age_ms"].as_i64().is_some(),
        "{stats}"
    );
    assert_eq!(find("orders")["total"], 10, "{stats}");
    client.database(DB).drop().await.expect("drop");
}
