//! Under an idempotency window, the id of a message the retention removed is still refused as
//! a duplicate (needs `MONGODB_URI`).

#[path = "common/mongo.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use mq_core::backend::{Holder, QueueStore};
use mq_core::testkit::{fast_options, queue_name, wait_until};
use mq_core::{Batch, Error, HandlerContext, MessageId, MessageQueue, NewMessage, handler_fn};
use mq_mongo::mongodb::bson::{Document, doc};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_stays_refused_for_its_window_after_retention() {
    const TEST: &str = "an_id_stays_refused_for_its_window_after_retention";
    let Some(url) = common::url(TEST) else { return };
    let queue = common::fresh_queue(&url, TEST, |o| {
        o.change_stream(false)
            .retention(Some(Duration::from_secs(1)))
            .idempotency_window(Some(Duration::from_secs(3600)))
            .sweep_interval(Duration::from_millis(100))
    })
    .await;
    let name = queue_name(TEST);
    queue.register(&name).await.expect("register");
    let message = || {
        NewMessage::new("charge", json!({ "card": "4242", "cents": 1999 }))
            .id(MessageId::new("charge-1").expect("id"))
    };
    common::publish_all(&queue, &name, vec![message()], "stored").await;
    let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
    let report = queue
        .consume_batch(&name, handler, &fast_options())
        .await
        .expect("consume");
    assert_eq!(report.acked, 1);

    // Wait until the retention has done its work on the message: deleted it, or cut it down
    // to its id. Claims run the sweep that does the latter.
    let store = queue.shared_store();
    let coll = store
        .client()
        .database(store.options().get_database())
        .collection::<Document>(store.options().get_collection());
    wait_until(
        Duration::from_secs(150),
        "the retention removed the message's payload",
        || async {
            let _ = store
                .claim(&name, Holder::new("sweeper", Duration::from_secs(1)), 1)
                .await;
            let doc = coll
                .find_one(doc! { "_id": format!("{name}/charge-1") })
                .await
                .expect("find");
            doc.is_none_or(|d| !d.contains_key("payload"))
        },
    )
    .await;

    let again = queue
        .publish(&name, vec![message()])
        .await
        .expect("publish");
    assert_eq!(again.failed.len(), 1, "a replayed id ran twice: {again:?}");
    assert!(
        matches!(again.failed[0].error, Error::DuplicateId { .. }),
        "{:?}",
        again.failed[0].error
    );
    queue.shutdown().await.expect("shutdown");
}
