//! What the MongoDB tests share: the server's address and one fresh database per test, dropped
//! when the test starts (a failed test leaves its data for inspection until it runs again).
#![allow(dead_code, unreachable_pub)]

use mq_core::testkit::{queue_name, service_url};
use mq_core::{MessageQueue, NewMessage, QueueName};
use mq_mongo::mongodb::Client;
use mq_mongo::{MongoOptions, MongoQueue};

/// `MONGODB_URI`, or `None` after printing why `test` skips (under `MQ_REQUIRE_SERVICES=1` a
/// missing variable fails instead).
pub fn url(test: &str) -> Option<String> {
    match service_url("MONGODB_URI") {
        Ok(u) => Some(u),
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            None
        }
    }
}

/// The database of `test`: `mqt_` and the test name, within MongoDB's 63 bytes.
pub fn database_for(test: &str) -> String {
    let cleaned: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(58)
        .collect();
    format!("mqt_{cleaned}")
}

/// A client on `url` and options naming the database of `test`, which has just been dropped.
pub async fn fresh(url: &str, test: &str) -> (Client, MongoOptions) {
    let client = Client::with_uri_str(url).await.expect("client");
    let db = database_for(test);
    client
        .database(&db)
        .drop()
        .await
        .expect("drop the test's database");
    (client, MongoOptions::default().database(db))
}

/// A queue in the fresh database of `test`, with `options` applied to its options.
pub async fn fresh_queue(
    url: &str,
    test: &str,
    options: impl FnOnce(MongoOptions) -> MongoOptions,
) -> MongoQueue {
    let (client, defaults) = fresh(url, test).await;
    MongoQueue::from_client(client, options(defaults))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "open the queue of {test}: {e}: {:?}",
                std::error::Error::source(&e)
            )
        })
}

/// The server's address and a queue in the fresh database of `test`, with `test`'s queue
/// registered; `None` when the test skips.
pub async fn registered_queue(test: &str) -> Option<(String, MongoQueue, QueueName)> {
    let url = url(test)?;
    let queue = fresh_queue(&url, test, |o| o).await;
    let name = queue_name(test);
    queue.register(&name).await.expect("register");
    Some((url, queue, name))
}

/// Another queue (its own client) on the database of `test`, as a second host would open it.
pub async fn another_queue(url: &str, test: &str) -> MongoQueue {
    MongoQueue::connect(url, MongoOptions::default().database(database_for(test)))
        .await
        .expect("connect")
}

/// Publishes `messages` to `name`, expecting every one stored (`what` says which).
pub async fn publish_all(
    q: &dyn MessageQueue,
    name: &QueueName,
    messages: Vec<NewMessage>,
    what: &str,
) {
    let report = q.publish(name, messages).await.expect("publish");
    report.into_result().expect(what);
}
