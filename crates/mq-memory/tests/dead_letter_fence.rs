//! A message is never both in the dead letters and live: when the dead-letter store is slow
//! enough for the lease to lapse (and another consumer to take the message), the dead letter is
//! given up and the message retried, instead of stored for a message that stays in the queue.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mq_core::backend::{Holder, PollingQueue, QueueStore};
use mq_core::testkit::{eventually, fast_options};
use mq_core::{
    Batch, BoxError, CommonOptions, DeadLetter, DeadLetterSink, HandlerContext, MessageQueue,
    NewMessage, Outcomes, QueueName, async_trait, handler_fn,
};
use mq_memory::MemoryStore;

/// A dead-letter store that answers after 1.5 s, well after a 600 ms lease lapsed.
#[derive(Debug, Default)]
struct SlowSink {
    called: AtomicBool,
    letters: Mutex<Vec<DeadLetter>>,
}

#[async_trait]
impl DeadLetterSink for SlowSink {
    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), BoxError> {
        self.called.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.letters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(letters);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_not_stored_once_the_lease_may_have_lapsed() {
    let sink = Arc::new(SlowSink::default());
    let common = CommonOptions::default().dead_letters(sink.clone());
    let queue = PollingQueue::new(MemoryStore::new(100), common);
    let name = QueueName::new("fence").expect("name");
    queue.register(&name).await.expect("register");
    queue
        .publish(
            &name,
            vec![NewMessage::new("doomed", serde_json::Value::Null)],
        )
        .await
        .expect("publish")
        .into_result()
        .expect("stored");
    let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {
        Outcomes::all(mq_core::Outcome::fail("cannot be processed"))
    }));
    let options = fast_options()
        .lease_duration(Duration::from_millis(600))
        .retry(
            mq_core::RetryPolicy::default()
                .base_delay(Duration::from_millis(10))
                .jitter(0.0),
        );
    let consumer = queue
        .consume(&name, handler, options)
        .await
        .expect("consume");
    eventually(
        Duration::from_secs(20),
        "the consumer dead-letters the message",
        || sink.called.load(Ordering::SeqCst),
    )
    .await;
    // Stopping waits for the batch in flight, dead letters and completion included.
    consumer.stop().await;
    let letters = sink.letters.lock().unwrap_or_else(|e| e.into_inner()).len();
    // The message is still in the queue for the next consumer, whatever happened.
    let other = Holder::new("next-consumer", Duration::from_secs(60));
    let mut live = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while live == 0 && tokio::time::Instant::now() < deadline {
        live = queue
            .store()
            .claim(&name, other, 1)
            .await
            .expect("claim")
            .messages
            .len();
        if live == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "dead letters stored: {letters}; message still live: {}",
        live == 1
    );
    assert_eq!(live, 1, "the message is not lost");
    assert_eq!(
        letters, 0,
        "a dead letter was stored for a message that stays live in the queue"
    );
    queue.shutdown().await.expect("shutdown");
}
