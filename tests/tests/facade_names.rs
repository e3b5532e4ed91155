//! Through the facade: the original's `<name>-<env>` naming addresses one queue under both
//! spellings, and bad names are refused before anything is stored.

use std::sync::Arc;

use mq::{
    Batch, CommonOptions, ConsumerOptions, EnvSuffixResolver, Error, HandlerContext,
    InMemoryOptions, InMemoryQueue, MessageQueue, NewMessage, QueueName, handler_fn,
};
use serde_json::json;

#[tokio::test]
async fn suffixed_and_plain_names_address_the_same_queue() {
    let resolver = EnvSuffixResolver::new("staging-eu").unwrap();
    let queue = InMemoryQueue::new(
        InMemoryOptions::default().common(CommonOptions::default().resolver(resolver)),
    );
    let plain = QueueName::new("order-events-v2").unwrap();
    let suffixed = QueueName::new("order-events-v2-staging-eu").unwrap();
    queue.register(&plain).await.unwrap();
    queue
        .publish(
            &suffixed,
            vec![NewMessage::new("created", json!({"id": 1}))],
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    queue
        .publish(&plain, vec![NewMessage::new("created", json!({"id": 2}))])
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let h = Arc::new(handler_fn(|b: Batch, ctx: HandlerContext| async move {
        assert_eq!(ctx.queue().as_str(), "order-events-v2-staging-eu");
        assert!(
            b.iter()
                .all(|m| m.queue.as_str() == "order-events-v2-staging-eu")
        );
    }));
    let report = queue
        .consume_batch(&plain, h, &ConsumerOptions::default())
        .await
        .unwrap();
    assert_eq!(report.acked, 2, "both spellings reached one queue");
}

#[tokio::test]
async fn bad_names_and_payloads_are_refused() {
    assert!(matches!(
        QueueName::new("orders/eu"),
        Err(Error::InvalidQueueName { .. })
    ));
    let mut m = std::collections::BTreeMap::new();
    m.insert(vec![1u8], 1u8); // a JSON object key must be a string
    let err = NewMessage::json("t", &m).unwrap_err();
    assert!(matches!(err, Error::Payload { .. }), "{err}");
    let queue = InMemoryQueue::default();
    let q = QueueName::new("never-registered").unwrap();
    let err = queue
        .publish(&q, vec![NewMessage::new("t", json!(null))])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("register"), "{err}");
    queue.register(&q).await.unwrap();
    assert_eq!(
        queue.store().pending(&q),
        0,
        "the refused publish stored nothing"
    );
}
