//! A queue whose indexes were built with other settings (a different retention, an older layout
//! of the claim index) still connects, and the new settings take effect (needs `MONGODB_URI`).

#[path = "common/mongo.rs"]
mod common;

use std::time::Duration;

use mq_mongo::MongoQueue;
use mq_mongo::mongodb::bson::{Document, doc};
use mq_mongo::mongodb::options::IndexOptions;
use mq_mongo::mongodb::{Collection, IndexModel};

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
        mq_core::MessageQueue::shutdown(&q).await.expect("shutdown");
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
    let queue = MongoQueue::from_client(client.clone(), options.clone())
        .await
        .expect("connect over the older claim index");
    let claim = index(&coll, "mq_claim").await.expect("claim index");
    assert_eq!(
        claim.keys,
        doc! { "queue": 1, "status": 1, "priority": -1, "execute_at": 1 }
    );
    mq_core::MessageQueue::shutdown(&queue)
        .await
        .expect("shutdown");
}
