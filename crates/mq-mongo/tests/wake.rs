//! Change-stream wake-up: a consumer on another host, polling once an hour, handles a message
//! as soon as it is published (needs `MONGODB_URI`, and a server with change streams).

#[path = "common/mongo.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mq_core::testkit::{fast_options, wait_until};
use mq_core::{Batch, HandlerContext, MessageQueue, NewMessage, handler_fn};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_wakes_an_idle_consumer_on_another_host() {
    const TEST: &str = "a_change_stream_wakes_an_idle_consumer_on_another_host";
    let Some((url, publisher, name)) = common::registered_queue(TEST).await else {
        return;
    };
    let consumer_host = common::another_queue(&url, TEST).await;
    consumer_host.register(&name).await.expect("register");
    let store = consumer_host.shared_store();
    wait_until(
        Duration::from_secs(20),
        "the change stream opens (the server must be a replica set)",
        || async { store.change_stream_live() },
    )
    .await;
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let handler = Arc::new(handler_fn(move |batch: Batch, _c: HandlerContext| {
        let h = h.clone();
        async move {
            h.fetch_add(batch.len(), Ordering::SeqCst);
        }
    }));
    let hour = Duration::from_secs(3600);
    let options = fast_options().poll_interval(hour).max_poll_interval(hour);
    let consumer = consumer_host
        .consume(&name, handler, options)
        .await
        .expect("consume");
    // Each message finds the consumer asleep for its hour after the previous one. A payload of
    // 512 KiB: the event that wakes the consumer does not carry it.
    let big = "x".repeat(512 * 1024);
    for i in 0..3 {
        publisher
            .publish(
                &name,
                vec![NewMessage::new("t", json!({ "n": i, "big": big }))],
            )
            .await
            .expect("publish")
            .into_result()
            .expect("stored");
        wait_until(
            Duration::from_secs(20),
            "woken by the change stream, not by the hourly poll",
            || async { handled.load(Ordering::SeqCst) == i + 1 },
        )
        .await;
    }
    consumer.stop().await;
    consumer_host.shutdown().await.expect("shutdown");
    publisher.shutdown().await.expect("shutdown");
}
