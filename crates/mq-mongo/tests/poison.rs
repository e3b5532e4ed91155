//! A claimed document that does not decode as a message (written by another program, a field
//! of the wrong type) is dead-lettered alone: its batch-mates are handled once, on their first
//! attempt (needs `MONGODB_URI`).

#[path = "common/mongo.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mq_core::testkit::{fast_options, queue_name, wait_until};
use mq_core::{Batch, CommonOptions, HandlerContext, MessageQueue, NewMessage, handler_fn};
use mq_mongo::mongodb::bson::{DateTime, Document, doc};
use mq_mongo::{ClaimStrategy, MongoDeadLetterStore, MongoQueue};
use serde_json::json;

async fn poison_is_dead_lettered_alone(test: &str, strategy: ClaimStrategy) {
    let Some(url) = common::url(test) else { return };
    let (client, options) = common::fresh(&url, test).await;
    let dead_letters = MongoDeadLetterStore::from_client(client.clone(), options.clone())
        .await
        .expect("dead-letter store");
    let options = options
        .change_stream(false)
        .claim_strategy(strategy)
        .common(CommonOptions::default().dead_letters(Arc::new(dead_letters)));
    let queue = MongoQueue::from_client(client.clone(), options.clone())
        .await
        .expect("queue");
    let name = queue_name(test);
    queue.register(&name).await.expect("register");
    let coll = client
        .database(options.get_database())
        .collection::<Document>(options.get_collection());
    let good: Vec<NewMessage> = (0..30)
        .map(|n| NewMessage::new("t", json!({ "n": n })))
        .collect();
    common::publish_all(&queue, &name, good[..15].to_vec(), "stored").await;
    // Another program's document: `created_at` is text, not a date.
    let now = DateTime::now();
    coll.insert_one(doc! {
        "_id": format!("{name}/poison"), "queue": name.as_str(), "type": "t",
        "payload": { "n": "poison" }, "status": "scheduled", "priority": 0_i32,
        "execute_at": now, "created_at": "yesterday", "updated_at": now, "attempts": 0_i64,
    })
    .await
    .expect("insert the poison document");
    common::publish_all(&queue, &name, good[15..].to_vec(), "stored").await;

    let seen: Arc<Mutex<HashMap<u64, Vec<u32>>>> = Arc::default();
    let s = seen.clone();
    let handler = Arc::new(handler_fn(move |batch: Batch, _c: HandlerContext| {
        let s = s.clone();
        async move {
            let mut s = s.lock().unwrap();
            for m in batch.iter() {
                if let Some(n) = m.payload["n"].as_u64() {
                    s.entry(n).or_default().push(m.attempts);
                }
            }
        }
    }));
    let consumer = queue
        .consume(&name, handler, fast_options().batch_size(10))
        .await
        .expect("consume");
    let settled = || async {
        let poison = coll
            .find_one(doc! { "_id": format!("{name}/poison") })
            .await
            .expect("find");
        let done = poison.is_some_and(|d| d.get_str("status") == Ok("dead_lettered"));
        done && seen.lock().unwrap().len() == 30
    };
    wait_until(
        Duration::from_secs(30),
        "30 good messages handled and the poison document dead-lettered",
        settled,
    )
    .await;
    consumer.stop().await;
    let seen = seen.lock().unwrap().clone();
    let twice = seen.values().filter(|a| a.len() > 1).count();
    let later = seen.values().filter(|a| a.iter().any(|&n| n != 1)).count();
    let poison = coll
        .find_one(doc! { "_id": format!("{name}/poison") })
        .await
        .expect("find")
        .expect("the poison document");
    println!(
        "{strategy:?}: good handled {}, twice {twice}, not on attempt 1 {later}; poison {} after {} attempt(s)",
        seen.len(),
        poison.get_str("status").unwrap_or("?"),
        poison.get_i64("attempts").unwrap_or(-1)
    );
    assert_eq!((seen.len(), twice, later), (30, 0, 0), "{seen:?}");
    assert_eq!(poison.get_i64("attempts"), Ok(1));
    queue.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_document_is_dead_lettered_alone_batch_claim() {
    poison_is_dead_lettered_alone(
        "a_poison_document_is_dead_lettered_alone_batch_claim",
        ClaimStrategy::Batch,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_document_is_dead_lettered_alone_one_by_one() {
    poison_is_dead_lettered_alone(
        "a_poison_document_is_dead_lettered_alone_one_by_one",
        ClaimStrategy::FindOneAndUpdate,
    )
    .await;
}
