//! `KinesisQueue` set-up: a client built from options (region, endpoint, credentials), queue names
//! resolved to stream names (hyphenated, environment suffix), registration checks, and per-message
//! publish reports.

#[path = "common/emulator.rs"]
mod emulator;

use std::sync::Arc;

use emulator::Emulator;
use mq_core::{CommonOptions, EnvSuffixResolver, MessageQueue, NewMessage, QueueName};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_build_the_client_and_names_resolve_to_streams() {
    let emu = Emulator::with_stream("order-events-eu-prod", 2).await;
    let queue = KinesisQueue::connect(
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .region("us-east-1")
            .endpoint_url(&emu.endpoint)
            .credentials("AKID", "SECRET", None)
            .common(CommonOptions::default().resolver(EnvSuffixResolver::new("eu-prod").unwrap())),
    )
    .await
    .unwrap();
    let q = QueueName::new("order-events").unwrap();
    let err = queue
        .publish(&q, vec![NewMessage::new("t", serde_json::json!({}))])
        .await
        .unwrap_err();
    assert!(matches!(err, mq_core::Error::NotRegistered { .. }), "{err}");
    queue.register(&q).await.unwrap();
    // both spellings address the same stream
    queue
        .register(&QueueName::new("order-events-eu-prod").unwrap())
        .await
        .unwrap();
    let missing = queue
        .register(&QueueName::new("no-such").unwrap())
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");

    let mut msgs = emulator::numbered(5);
    msgs.insert(
        2,
        NewMessage::new("t", serde_json::json!({"pad": "x".repeat(1100 * 1024)})),
    );
    msgs.insert(4, NewMessage::new("", serde_json::json!({})));
    let queue_big = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new())).common(
            CommonOptions::default()
                .resolver(EnvSuffixResolver::new("eu-prod").unwrap())
                .max_message_bytes(4 << 20),
        ),
    );
    queue_big.register(&q).await.unwrap();
    let report = queue_big.publish(&q, msgs).await.unwrap();
    assert_eq!(report.published.len(), 5);
    let failed: Vec<usize> = report.failed.iter().map(|f| f.index).collect();
    assert_eq!(
        failed,
        vec![2, 4],
        "the oversize record and the empty type, by index"
    );
    let oversize = &report.failed[0].error;
    assert!(
        matches!(
            oversize,
            mq_core::Error::InvalidMessage {
                field: "record",
                ..
            }
        ) && oversize
            .to_string()
            .contains("Kinesis limit of 1048576 bytes"),
        "{oversize}"
    );
    queue.shutdown().await.unwrap();
    queue_big.shutdown().await.unwrap();
}
