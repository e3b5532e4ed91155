//! Messages MongoDB cannot store are refused one by one with their reason, before anything is
//! written; the others in the same publish are stored and consumed (needs `MONGODB_URI`).

#[path = "common/mongo.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mq_core::testkit::{fast_options, queue_name};
use mq_core::{Batch, CommonOptions, HandlerContext, MessageQueue, NewMessage, handler_fn};
use serde_json::{Value, json};

/// `[[[...]]]`, `depth` arrays deep.
fn nested(depth: usize) -> Value {
    let mut v = json!("bottom");
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstorable_messages_are_refused_alone_with_their_reason() {
    const TEST: &str = "unstorable_messages_are_refused_alone_with_their_reason";
    let Some(url) = common::url(TEST) else { return };
    let queue = common::fresh_queue(&url, TEST, |o| {
        o.change_stream(false)
            .common(CommonOptions::default().max_message_bytes(32 * 1024 * 1024))
    })
    .await;
    let name = queue_name(TEST);
    queue.register(&name).await.expect("register");
    let mut batch: Vec<NewMessage> = (0..8)
        .map(|n| NewMessage::new("t", json!({ "n": n })))
        .collect();
    // A field name with a NUL (BSON field names cannot hold one), a payload nested deeper than
    // MongoDB stores (100 levels; the publish path refuses it first), and one over MongoDB's
    // 16 MiB document limit.
    batch.insert(2, NewMessage::new("t", json!({ "a\u{0}b": 1 })));
    batch.insert(5, NewMessage::new("t", nested(110)));
    batch.insert(
        7,
        NewMessage::new("t", json!({ "big": "x".repeat(17 * 1024 * 1024) })),
    );
    let report = queue.publish(&name, batch).await.expect("publish");
    let refused: Vec<(usize, String)> = report
        .failed
        .iter()
        .map(|f| (f.index, f.error.to_string()))
        .collect();
    println!("stored {}, refused {refused:?}", report.published.len());
    assert_eq!(report.published.len(), 8, "{refused:?}");
    assert_eq!(
        refused.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [2, 5, 7]
    );
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let handler = Arc::new(handler_fn(move |b: Batch, _c: HandlerContext| {
        let h = h.clone();
        async move {
            h.fetch_add(b.len(), Ordering::SeqCst);
        }
    }));
    let report = queue
        .consume_batch(&name, handler, &fast_options().batch_size(20))
        .await
        .expect("consume");
    assert_eq!((report.acked, handled.load(Ordering::SeqCst)), (8, 8));
    queue.shutdown().await.expect("shutdown");
}
