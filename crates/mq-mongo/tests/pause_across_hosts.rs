//! A pause made through one host stops claims on every host at once (needs `MONGODB_URI`).

#[path = "common/mongo.rs"]
mod common;

use std::time::Duration;

use mq_core::backend::{Holder, QueueStore};
use mq_core::{MessageQueue, NewMessage};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_on_one_host_stops_claims_on_another() {
    const TEST: &str = "a_pause_on_one_host_stops_claims_on_another";
    let Some((url, operator, name)) = common::registered_queue(TEST).await else {
        return;
    };
    let worker = common::another_queue(&url, TEST).await;
    worker.register(&name).await.expect("register");
    common::publish_all(
        &operator,
        &name,
        (0..4)
            .map(|n| NewMessage::new("t", json!({ "n": n })))
            .collect(),
        "stored",
    )
    .await;
    let store = worker.shared_store();
    let holder = Holder::new("worker", Duration::from_secs(60));

    operator.pause(&name).await.expect("pause");
    assert!(worker.is_paused(&name).await.expect("is_paused"));
    let claimed = store.claim(&name, holder, 10).await.expect("claim");
    assert!(
        claimed.messages.is_empty(),
        "claimed while paused: {:?}",
        claimed.messages
    );

    operator.resume(&name).await.expect("resume");
    assert!(!worker.is_paused(&name).await.expect("is_paused"));
    let claimed = store.claim(&name, holder, 10).await.expect("claim");
    assert_eq!(claimed.messages.len(), 4);
    for q in [worker, operator] {
        q.shutdown().await.expect("shutdown");
    }
}
