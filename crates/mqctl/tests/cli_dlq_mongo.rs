//! `mqctl` run as a real binary against the MongoDB-compatible server: dead letters made by a
//! real `MongoQueue`, replayed twice (the second run publishes nothing), and queue stats.

#[path = "common/dlq.rs"]
mod common;

use std::sync::Arc;

use common::{dead_letter_all, mqctl_json, service};
use mq::mongo::MongoDeadLetterStore;
use mq::{CommonOptions, MongoOptions, MongoQueue, NewMessage};

const DB: &str = "mqctl_cli_test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_stats_on_mongo() {
    let Some(uri) = service("MONGODB_URI") else {
        return;
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
    let msgs = (0..10)
        .map(|i| NewMessage::new("charge", serde_json::json!({ "n": i })).max_attempts(1))
        .collect();
    dead_letter_all(&queue, &*store, msgs).await;

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
    let report = mqctl_json(replay);
    assert_eq!(
        report["published"].as_array().map(Vec::len),
        Some(10),
        "{report}"
    );
    let report = mqctl_json(replay);
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

    let stats = mqctl_json([
        "queue",
        "stats",
        "--url",
        uri.as_str(),
        "--mongo-database",
        DB,
        "--table",
        coll,
        "--json",
    ]);
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
