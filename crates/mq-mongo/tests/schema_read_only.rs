//! `create_schema(false)`: nothing is created, and what is missing is named (needs
//! `MONGODB_URI`).

#[path = "common/mongo.rs"]
mod common;

use std::time::Duration;

use mq_core::{DeadLetterStore, Error as CoreError};
use mq_mongo::mongodb::Client;
use mq_mongo::mongodb::bson::Document;
use mq_mongo::{
    Error, MongoCheckpointStore, MongoDeadLetterStore, MongoLeaseTable, MongoOptions, MongoQueue,
};

/// Opens a queue, a dead-letter store, a checkpoint store and a lease table on `client` with
/// `options`.
async fn open_all(client: &Client, options: &MongoOptions) -> [Result<(), CoreError>; 4] {
    [
        MongoQueue::from_client(client.clone(), options.clone())
            .await
            .map(drop),
        MongoDeadLetterStore::from_client(client.clone(), options.clone())
            .await
            .map(drop),
        MongoCheckpointStore::from_client(client.clone(), options.clone())
            .await
            .map(drop),
        MongoLeaseTable::from_client(client.clone(), options.clone())
            .await
            .map(drop),
    ]
}

/// The missing object an error names.
fn missing(result: Result<(), CoreError>) -> String {
    let err = result.expect_err("something is missing");
    let CoreError::Backend { source, .. } = &err else {
        panic!("not a backend error: {err}");
    };
    match source.downcast_ref::<Error>() {
        Some(Error::MissingSchema { object }) => {
            assert!(
                source.to_string().contains("create_schema(true)"),
                "says what to do: {source}"
            );
            object.clone()
        }
        _ => panic!("not a missing-schema error: {err}: {source}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_open_creates_nothing_and_names_what_is_missing() {
    const TEST: &str = "read_only_open_creates_nothing";
    let Some(url) = common::url(TEST) else { return };
    let (client, options) = common::fresh(&url, TEST).await;
    let db = client.database(options.get_database());
    let read_only = options.clone().create_schema(false);

    let [queue, dead_letters, checkpoints, leases] = open_all(&client, &read_only).await;
    let database = options.get_database();
    assert_eq!(missing(queue), format!("collection {database}.mq_messages"));
    assert_eq!(
        missing(dead_letters),
        format!("collection {database}.mq_dead_letters")
    );
    assert_eq!(
        missing(checkpoints),
        format!("collection {database}.mq_checkpoints")
    );
    assert_eq!(missing(leases), format!("collection {database}.mq_leases"));
    let created = db.list_collection_names().await.expect("list");
    assert!(created.is_empty(), "a read-only open created {created:?}");

    // Created once by a writer, every read-only open works and still writes nothing.
    for result in open_all(&client, &options).await {
        result.expect("create the schema");
    }
    for result in open_all(&client, &read_only).await {
        result.expect("open read-only");
    }
    let queue = MongoQueue::from_client(client.clone(), read_only.clone())
        .await
        .expect("read-only queue");
    assert!(queue.queue_stats(None).await.expect("stats").is_empty());

    // A read-only dead-letter store's migrate() checks and recreates nothing.
    let dead_letters = MongoDeadLetterStore::from_client(client.clone(), read_only.clone())
        .await
        .expect("read-only dead-letter store");
    let coll = dead_letters.collection();
    coll.drop_index("last_failed_at_1")
        .await
        .expect("drop index");
    let object = missing(dead_letters.migrate().await);
    assert!(object.contains("last_failed_at"), "{object}");
    let names = coll.list_index_names().await.expect("indexes");
    assert!(!names.iter().any(|n| n == "last_failed_at_1"), "{names:?}");

    // A missing index is named, as is the retention index a writer never made.
    let messages = db.collection::<Document>("mq_messages");
    messages.drop_index("mq_expiry").await.expect("drop index");
    let [queue, ..] = open_all(&client, &read_only).await;
    let object = missing(queue);
    assert!(
        object.starts_with("index mq_expiry")
            && object.ends_with(&format!("{database}.mq_messages")),
        "{object}"
    );
    let mut left: Vec<String> = messages.list_index_names().await.expect("indexes");
    left.sort();
    assert_eq!(left, ["_id_", "mq_claim"], "nothing was recreated");

    // Back in place, the retention index a writer never made is named in turn.
    MongoQueue::from_client(client.clone(), options.clone())
        .await
        .expect("recreate the index");
    let with_retention = options
        .clone()
        .retention(Some(Duration::from_secs(3600)))
        .create_schema(false);
    let [queue, ..] = open_all(&client, &with_retention).await;
    let object = missing(queue);
    assert!(
        object.starts_with("index mq_retention") && object.contains("expiring after 3600s"),
        "{object}"
    );

    // A lease table whose listing index is gone is refused, naming the index.
    db.collection::<Document>("mq_leases")
        .drop_index("mq_lease_stream_kind")
        .await
        .expect("drop index");
    let [.., leases] = open_all(&client, &read_only).await;
    let object = missing(leases);
    assert!(
        object.starts_with("index mq_lease_stream_kind")
            && object.ends_with(&format!("{database}.mq_leases")),
        "{object}"
    );
}
