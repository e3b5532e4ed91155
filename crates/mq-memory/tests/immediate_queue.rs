//! `ImmediateQueue`: the conformance cases that apply to a queue without storage, and its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mq_core::testkit::{
    RecordingDeadLetters, counting_handler, eventually, fast_options, observed_options,
    test_message as msg,
};
use mq_core::{
    Batch, CommonOptions, Error, HandlerContext, MessageId, MessageQueue, NewMessage, Outcome,
    Outcomes, QueueName, handler_fn,
};
use mq_memory::ImmediateQueue;
use serde_json::json;

fn q() -> QueueName {
    QueueName::new("immediate-test").unwrap()
}

#[tokio::test]
async fn publish_runs_the_handler_and_reports_acks() {
    let (rec, common) = observed_options();
    let queue = ImmediateQueue::new(common);
    queue.register(&q()).await.unwrap();
    let (seen, counter) = counting_handler();
    let c = queue
        .consume(&q(), counter, fast_options().batch_size(2))
        .await
        .unwrap();
    let report = queue
        .publish(&q(), (0..5).map(msg).collect())
        .await
        .unwrap();
    assert_eq!(
        seen.load(Ordering::SeqCst),
        5,
        "handled before publish returned"
    );
    assert_eq!(report.published.len(), 5);
    c.stop().await;
    eventually(Duration::from_secs(5), "disconnect", || {
        rec.count("consumer_disconnected") == 1
    })
    .await;
    let names = rec.names();
    assert_eq!(names.first(), Some(&"consumer_connected"));
    assert_eq!(rec.count("published"), 5);
    assert_eq!(rec.count("consumed"), 5);
    assert_eq!(rec.count("acked"), 5);
    assert_eq!(names.last(), Some(&"consumer_disconnected"));
}

#[tokio::test]
async fn bad_input_is_refused() {
    let queue = ImmediateQueue::new(CommonOptions::default().max_message_bytes(512));
    let err = queue.publish(&q(), vec![msg(1)]).await.unwrap_err();
    assert!(matches!(err, Error::NotRegistered { .. }), "{err}");
    queue.register(&q()).await.unwrap();
    let err = queue.publish(&q(), vec![msg(1)]).await.unwrap_err();
    assert!(matches!(err, Error::NoConsumer { .. }), "{err}");
    assert!(queue.publish(&q(), vec![]).await.unwrap().is_complete());
    let (ran, counter) = counting_handler();
    let _c = queue.consume(&q(), counter, fast_options()).await.unwrap();
    let big = NewMessage::new("test", json!({ "blob": "x".repeat(1024) }));
    let report = queue.publish(&q(), vec![big, msg(2)]).await.unwrap();
    assert_eq!(report.published.len(), 1);
    assert!(matches!(
        report.failed[0].error,
        Error::MessageTooLarge { .. }
    ));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the oversize message never ran"
    );
}

#[tokio::test]
async fn outcomes_other_than_ack_come_back_to_the_publisher() {
    let dlq = Arc::new(RecordingDeadLetters::default());
    let queue = ImmediateQueue::new(CommonOptions::default().dead_letters(dlq.clone()));
    queue.register(&q()).await.unwrap();
    let _c = queue
        .consume(
            &q(),
            Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {
                Outcomes::ack_all()
                    .set(MessageId::new("r").unwrap(), Outcome::retry())
                    .set(MessageId::new("f").unwrap(), Outcome::fail("bad"))
            })),
            fast_options(),
        )
        .await
        .unwrap();
    let ids = ["a", "r", "f"].map(|s| MessageId::new(s).unwrap());
    let report = queue
        .publish(&q(), ids.iter().map(|id| msg(0).id(id.clone())).collect())
        .await
        .unwrap();
    assert_eq!(report.published, vec![ids[0].clone()]);
    let failed: Vec<(usize, bool)> = report
        .failed
        .iter()
        .map(|f| (f.index, matches!(f.error, Error::NotAcknowledged { .. })))
        .collect();
    assert_eq!(failed, vec![(1, true), (2, true)]);
    assert_eq!(dlq.len(), 1, "the failed message is dead-lettered");
    assert_eq!(dlq.letters()[0].message.id, ids[2]);
}

#[tokio::test]
async fn timeout_cancels_and_the_handler_is_awaited() {
    let queue = ImmediateQueue::new(CommonOptions::default());
    queue.register(&q()).await.unwrap();
    let finished = Arc::new(AtomicBool::new(false));
    let fi = finished.clone();
    let _c = queue
        .consume(
            &q(),
            Arc::new(handler_fn(move |_b: Batch, ctx: HandlerContext| {
                let fi = fi.clone();
                async move {
                    ctx.cancelled().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    fi.store(true, Ordering::SeqCst);
                    Err::<(), _>(std::io::Error::other("interrupted"))
                }
            })),
            fast_options().handler_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let report = queue.publish(&q(), vec![msg(1)]).await.unwrap();
    assert!(
        finished.load(Ordering::SeqCst),
        "publish returned while the handler ran"
    );
    assert!(
        report.failed[0].error.to_string().contains("timed out"),
        "{}",
        report.failed[0].error
    );
}

#[tokio::test]
async fn shutdown_waits_for_a_running_publish() {
    let queue = ImmediateQueue::new(CommonOptions::default());
    queue.register(&q()).await.unwrap();
    let (started, finished) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (s, fi) = (started.clone(), finished.clone());
    let _c = queue
        .consume(
            &q(),
            Arc::new(handler_fn(move |_b: Batch, _c: HandlerContext| {
                let (s, fi) = (s.clone(), fi.clone());
                async move {
                    s.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    fi.store(true, Ordering::SeqCst);
                }
            })),
            fast_options(),
        )
        .await
        .unwrap();
    let q2 = queue.clone();
    let publisher = tokio::spawn(async move { q2.publish(&q(), vec![msg(1)]).await });
    eventually(Duration::from_secs(5), "handler started", || {
        started.load(Ordering::SeqCst)
    })
    .await;
    queue.shutdown().await.unwrap();
    assert!(
        finished.load(Ordering::SeqCst),
        "shutdown returned before the handler finished"
    );
    assert!(publisher.await.unwrap().unwrap().is_complete());
    assert!(matches!(
        queue.publish(&q(), vec![msg(2)]).await,
        Err(Error::ShutDown { .. })
    ));
}
