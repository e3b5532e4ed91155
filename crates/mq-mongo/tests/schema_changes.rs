//! A queue whose indexes were built with other settings (a different retention, an older layout
//! of the claim index) still connects, and the new settings take effect (needs `MONGODB_URI`).

#[path = "common/mongo.rs"]
mod common;

use std::time::Duration;

use mq_core::backend::{Holder, QueueStore};
use mq_core::testkit::queue_name;
use mq_core::{MessageQueue, NewMessage};
use mq_mongo::MongoQueue;
use mq_mongo::mongodb::bson::{DateTime, Document, doc};
use mq_mongo::mongodb::options::IndexOptions;
use mq_mongo::mongodb::{Collection, IndexModel};
use serde_json::json;

/// The index of `coll` named `name`.
async fn index(coll: &Collection<Document>, name: &str) -> Option<IndexModel> {
    let mut cursor = coll.list_indexes().await.expect("list indexes");
    while cursor.advance().await.expect("list indexes") {
        let model = cursor.deserialize_current().expect("index");
        if model.options.as_ref().and_then(|o| o.name.as_deref()) == Some(name) {
            return Some(model);
        }
    }
    None
}

#[tokio::test]
async fn a_changed_retention_replaces_the_ttl_index() {
    const TEST: &str = "a_changed_retention_replaces_the_ttl_index";
    let Some(url) = common::url(TEST) else { return };
    let (client, options) = common::fresh(&url, TEST).await;
    let hour = Duration::from_secs(3600);
    let first = MongoQueue::from_client(client.clone(), options.clone().retention(Some(hour)))
        .await
        .expect("connect with a retention of one hour");
    let second = MongoQueue::from_client(client.clone(), options.clone().retention(Some(2 * hour)))
        .await
        .expect("connect again with a retention of two hours");
    let coll = client
        .database(options.get_database())
        .collection::<Document>(options.get_collection());
    let ttl = index(&coll, "mq_retention").await.expect("retention index");
    assert_eq!(
        ttl.options.and_then(|o| o.expire_after),
        Some(2 * hour),
        "the second retention is in effect"
    );
    // No retention given: the index is left as it is.
    let third = MongoQueue::from_client(client.clone(), options.clone())
        .await
        .expect("connect without a retention");
    let ttl = index(&coll, "mq_retention").await.expect("retention index");
    assert_eq!(ttl.options.and_then(|o| o.expire_after), Some(2 * hour));
    for q in [first, second, third] {
        q.shutdown().await.expect("shutdown");
    }
}

#[tokio::test]
async fn the_claim_index_of_an_older_version_is_replaced() {
    const TEST: &str = "the_claim_index_of_an_older_version_is_replaced";
    let Some(url) = common::url(TEST) else { return };
    let (client, options) = common::fresh(&url, TEST).await;
    let coll = client
        .database(options.get_database())
        .collection::<Document>(options.get_collection());
    // The claim index as versions without priorities built it.
    coll.create_index(
        IndexModel::builder()
            .keys(doc! { "queue": 1, "status": 1, "execute_at": 1 })
            .options(IndexOptions::builder().name("mq_claim".to_owned()).build())
            .build(),
    )
    .await
    .expect("the older claim index");
    // A message waiting since then: no `priority` field.
    let name = queue_name(TEST);
    let now = DateTime::now();
    coll.insert_one(doc! {
        "_id": format!("{name}/old"), "queue": name.as_str(), "type": "t",
        "payload": { "n": "old" }, "status": "scheduled", "execute_at": now,
        "created_at": now, "updated_at": now, "attempts": 0_i64,
    })
    .await
    .expect("a message of the older layout");
    let queue = MongoQueue::from_client(client.clone(), options.clone())
        .await
        .expect("connect over the older claim index");
    queue.register(&name).await.expect("register");
    common::publish_all(
        &queue,
        &name,
        vec![NewMessage::new("t", json!({ "n": "new" }))],
        "stored",
    )
    .await;
    let claimed = queue
        .store()
        .claim(&name, Holder::new("c", Duration::from_secs(60)), 2)
        .await
        .expect("claim");
    let order: Vec<&str> = claimed.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(order.len(), 2, "{order:?}");
    assert_eq!(order[0], "old", "the older message keeps its place in line");
    let claim = index(&coll, "mq_claim").await.expect("claim index");
    assert_eq!(
        claim.keys,
        doc! { "queue": 1, "status": 1, "priority": -1, "execute_at": 1 }
    );
    queue.shutdown().await.expect("shutdown");
}
