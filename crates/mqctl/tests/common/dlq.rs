//! What the `mqctl dlq` tests share: running the binary, reading its JSON, and dead-lettering
//! messages through a real queue.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use mq::{
    Batch, DeadLetterFilter, DeadLetterStore, HandlerContext, MessageQueue, NewMessage, QueueName,
    handler_fn,
};
use mq_core::testkit::{fast_options, service_url, wait_until};

/// The `mqctl` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mqctl");

/// The URL in `var`, or `None` after printing why the test skips (under
/// `MQ_REQUIRE_SERVICES=1` a missing variable fails instead).
pub fn service(var: &str) -> Option<String> {
    service_url(var)
        .inspect_err(|reason| eprintln!("skipping: {reason}"))
        .ok()
}

/// Parses `out` as JSON, or panics showing it.
pub fn json_of(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// Runs `mqctl` with `args`, asserts it succeeds, and returns its standard output.
pub fn mqctl_ok<I, S>(args: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    assert_cmd::Command::new(BIN)
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone()
}

/// Runs `mqctl` with `args`, asserts it succeeds, and parses its output as JSON.
pub fn mqctl_json<I, S>(args: I) -> serde_json::Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    json_of(&mqctl_ok(args))
}

/// Publishes `messages` to `queue` (registered here), then consumes them with a handler that
/// always fails until `store` holds that many dead letters, and shuts the queue down.
pub async fn dead_letter_all(
    queue: &dyn MessageQueue,
    store: &dyn DeadLetterStore,
    messages: Vec<NewMessage>,
) {
    let orders = QueueName::new("orders").expect("name");
    queue.register(&orders).await.expect("register");
    let n = messages.len() as u64;
    queue
        .publish(&orders, messages)
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async move {
        Err::<(), _>(std::io::Error::other("payment gateway down"))
    }));
    let options = fast_options().batch_size(100);
    wait_until(Duration::from_secs(60), "messages dead-lettered", || {
        let (handler, options, orders) = (handler.clone(), &options, &orders);
        async move {
            let _report = queue
                .consume_batch(orders, handler, options)
                .await
                .expect("consume");
            store
                .count(&DeadLetterFilter::default())
                .await
                .expect("count")
                >= n
        }
    })
    .await;
    queue.shutdown().await.expect("shutdown");
}
