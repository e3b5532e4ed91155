//! What the conformance cases share: the test message, the queue set-up, publishing that must
//! store everything, and the handlers that record deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::{DeliveryLedger, QueueFactory, eventually, queue_name, should_skip};
pub(crate) use super::{
    counting_handler as counting, observed_options as observed, test_message as msg,
};
use crate::handler::{Batch, Handler, HandlerContext, handler_fn};
use crate::message::NewMessage;
use crate::options::{CommonOptions, ConsumerOptions};
use crate::queue::MessageQueue;
use crate::queue_name::QueueName;

/// How long a case waits for what must happen.
pub(crate) const LONG: Duration = Duration::from_secs(60);

/// A queue for `test` built with `common` and its registered name, or `None` (after saying why)
/// when the backend cannot run here.
pub(crate) async fn setup(
    f: &dyn QueueFactory,
    test: &str,
    common: CommonOptions,
) -> Option<(Arc<dyn MessageQueue>, QueueName)> {
    if should_skip(f, test) {
        return None;
    }
    let q = f.create(test, common).await;
    let name = queue_name(test);
    q.register(&name).await.expect("register");
    Some((q, name))
}

/// Publishes `messages` and asserts every one was stored.
pub async fn publish_all(q: &dyn MessageQueue, name: &QueueName, messages: Vec<NewMessage>) {
    q.publish(name, messages)
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
}

/// Runs a consumer of `name` until `cond` holds (failing as `what` after [`LONG`]), then stops it.
pub(crate) async fn consume_until(
    q: &dyn MessageQueue,
    name: &QueueName,
    handler: Arc<dyn Handler>,
    options: ConsumerOptions,
    what: &str,
    cond: impl FnMut() -> bool,
) {
    let c = q.consume(name, handler, options).await.expect("consume");
    eventually(LONG, what, cond).await;
    c.stop().await;
}

/// A handler that does nothing, so every message is acked.
pub(crate) fn ack_all() -> Arc<dyn Handler> {
    Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}))
}

/// A handler that acks everything, records each delivery in the returned ledger, and counts the
/// deliveries at a first attempt.
pub(crate) fn ledgered() -> (Arc<DeliveryLedger>, Arc<AtomicUsize>, Arc<dyn Handler>) {
    let ledger = Arc::new(DeliveryLedger::default());
    let first = Arc::new(AtomicUsize::new(0));
    let (l, fa) = (ledger.clone(), first.clone());
    let h = handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let (l, fa) = (l.clone(), fa.clone());
        async move {
            for m in batch.iter() {
                l.begin(m.id.as_str());
                if m.attempts == 1 {
                    fa.fetch_add(1, Ordering::SeqCst);
                }
                l.end(m.id.as_str());
            }
        }
    });
    (ledger, first, Arc::new(h))
}

/// Two flags, for a handler to say it started and it finished.
pub(crate) fn two_flags() -> (Arc<AtomicBool>, Arc<AtomicBool>) {
    (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    )
}
