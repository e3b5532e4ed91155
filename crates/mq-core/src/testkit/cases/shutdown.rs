//! Conformance cases for shutdown and handler timeouts: in-flight work is awaited, cancelled
//! after its grace, or dropped when it hangs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::error::Error;
use crate::handler::{Batch, HandlerContext, Outcomes, handler_fn};
use crate::message::NewMessage;
use crate::options::CommonOptions;
use crate::testkit::support::{LONG, consume_until, msg, observed, publish_all, setup, two_flags};
use crate::testkit::{
    DeliveryLedger, QueueFactory, RecordingDeadLetters, eventually, fast_options,
};

/// A handler past its timeout sees its token cancelled; the message comes back only after the
/// handler has returned.
pub async fn handler_timeout_cancels_and_retries(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    publish_all(&*q, &name, vec![msg(1)]).await;
    let ledger = Arc::new(DeliveryLedger::default());
    let cancelled_seen = Arc::new(AtomicBool::new(false));
    let (l, cs) = (ledger.clone(), cancelled_seen.clone());
    let h = handler_fn(move |batch: Batch, ctx: HandlerContext| {
        let (l, cs) = (l.clone(), cs.clone());
        async move {
            let id = batch[0].id.to_string();
            l.begin(&id);
            let out = if batch[0].attempts == 1 {
                ctx.cancelled().await;
                cs.store(true, Ordering::SeqCst);
                // still running after cancellation: the message must not be handed out meanwhile
                tokio::time::sleep(Duration::from_millis(300)).await;
                Outcomes::retry_all(crate::ErrorChain::msg("gave up"))
            } else {
                Outcomes::ack_all()
            };
            l.end(&id);
            out
        }
    });
    let opts = fast_options().handler_timeout(Duration::from_millis(200));
    consume_until(
        &*q,
        &name,
        Arc::new(h),
        opts.concurrency(2),
        "second delivery",
        || ledger.duplicates() >= 1,
    )
    .await;
    assert!(
        cancelled_seen.load(Ordering::SeqCst),
        "token cancelled at the timeout"
    );
    assert_eq!(
        ledger.overlaps(),
        0,
        "re-delivered while the timed-out handler still ran"
    );
    q.shutdown().await.expect("shutdown");
}

/// Shutdown waits for a handler that is running.
pub async fn shutdown_waits_for_in_flight_handler(f: &dyn QueueFactory, test: &str) {
    let (rec, common) = observed();
    let (q, name) = or_skip!(setup(f, test, common).await);
    publish_all(&*q, &name, vec![msg(1)]).await;
    let (started, finished) = two_flags();
    let (s, fi) = (started.clone(), finished.clone());
    let h = handler_fn(move |_batch: Batch, ctx: HandlerContext| {
        let (s, fi) = (s.clone(), fi.clone());
        async move {
            s.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert!(!ctx.is_cancelled(), "cancelled within the grace period");
            fi.store(true, Ordering::SeqCst);
        }
    });
    let _c = q
        .consume(&name, Arc::new(h), fast_options())
        .await
        .expect("consume");
    eventually(LONG, "handler started", || started.load(Ordering::SeqCst)).await;
    q.shutdown().await.expect("shutdown");
    assert!(
        finished.load(Ordering::SeqCst),
        "shutdown returned before the handler finished"
    );
    assert_eq!(rec.count("acked"), 1, "the in-flight message was completed");
    assert!(matches!(
        q.publish(&name, vec![msg(2)]).await,
        Err(Error::ShutDown { .. })
    ));
}

/// Past the grace period, shutdown cancels the handler's token, waits for it to return, and the
/// message is released for another delivery instead of being lost.
pub async fn shutdown_cancels_handlers_after_the_grace_period(f: &dyn QueueFactory, test: &str) {
    let (rec, common) = observed();
    let (q, name) = or_skip!(setup(f, test, common).await);
    publish_all(&*q, &name, vec![msg(1)]).await;
    let (started, returned) = two_flags();
    let (s, r) = (started.clone(), returned.clone());
    let h = handler_fn(move |_b: Batch, ctx: HandlerContext| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            s.store(true, Ordering::SeqCst);
            ctx.cancelled().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            r.store(true, Ordering::SeqCst);
            Err::<(), _>(std::io::Error::other("interrupted by shutdown"))
        }
    });
    let opts = fast_options().shutdown_grace(Duration::from_millis(200));
    let _c = q.consume(&name, Arc::new(h), opts).await.expect("consume");
    eventually(LONG, "handler started", || started.load(Ordering::SeqCst)).await;
    let t0 = tokio::time::Instant::now();
    q.shutdown().await.expect("shutdown");
    assert!(
        returned.load(Ordering::SeqCst),
        "shutdown returned while the handler still ran"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "cancelled before the grace period"
    );
    assert_eq!(
        rec.count("retried"),
        1,
        "the interrupted message is released, not lost"
    );
    assert_eq!(rec.count("acked") + rec.count("failed"), 0);
}

/// A handler stopped by shutdown on its message's last attempt does not use that attempt up:
/// the message is released for the next consumer, neither failed nor dead-lettered.
pub async fn shutdown_abort_on_the_last_attempt_releases_the_message(
    f: &dyn QueueFactory,
    test: &str,
) {
    let dlq = Arc::new(RecordingDeadLetters::default());
    let (rec, common) = observed();
    let (q, name) = or_skip!(setup(f, test, common.dead_letters(dlq.clone())).await);
    publish_all(&*q, &name, vec![msg(1).max_attempts(1)]).await;
    let (started, _) = two_flags();
    let s = started.clone();
    let h = handler_fn(move |_b: Batch, ctx: HandlerContext| {
        let s = s.clone();
        async move {
            s.store(true, Ordering::SeqCst);
            ctx.cancelled().await;
            Err::<(), _>(std::io::Error::other("interrupted by shutdown"))
        }
    });
    let opts = fast_options().shutdown_grace(Duration::from_millis(100));
    let _c = q.consume(&name, Arc::new(h), opts).await.expect("consume");
    eventually(LONG, "handler started", || started.load(Ordering::SeqCst)).await;
    q.shutdown().await.expect("shutdown");
    assert_eq!(rec.count("failed"), 0, "the last attempt was not failed");
    assert_eq!(dlq.len(), 0, "nothing was dead-lettered");
    assert_eq!(rec.count("retried"), 1, "the message was released");
    let store = f.store(test).await.expect("a polling backend has a store");
    let holder = crate::backend::Holder::new("next-consumer", Duration::from_secs(30));
    let claimed = store.claim(&name, holder, 10).await.expect("claim");
    assert_eq!(
        claimed.messages.len(),
        1,
        "released at once for the next consumer"
    );
    assert_eq!(
        claimed.messages[0].attempts, 1,
        "the delivery cut short by shutdown was not counted"
    );
}

/// Shutdown waits for a `consume_batch` call in flight, and a second, concurrent shutdown
/// returns only when the first has finished.
pub async fn shutdown_waits_for_consume_batch_and_repeats_safely(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    publish_all(&*q, &name, vec![msg(1)]).await;
    let (started, finished) = two_flags();
    let (s, fi) = (started.clone(), finished.clone());
    let h = Arc::new(handler_fn(move |_b: Batch, _c: HandlerContext| {
        let (s, fi) = (s.clone(), fi.clone());
        async move {
            s.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            fi.store(true, Ordering::SeqCst);
        }
    }));
    let q2 = q.clone();
    let n2 = name.clone();
    let batch = tokio::spawn(async move { q2.consume_batch(&n2, h, &fast_options()).await });
    eventually(LONG, "batch handler started", || {
        started.load(Ordering::SeqCst)
    })
    .await;
    let (a, b) = tokio::join!(q.shutdown(), q.shutdown());
    a.expect("first shutdown");
    b.expect("second shutdown");
    assert!(
        finished.load(Ordering::SeqCst),
        "a shutdown returned before the batch finished"
    );
    let report = batch.await.expect("join").expect("batch");
    assert_eq!(report.acked, 1);
}

/// A handler that never returns and ignores its token (one message among 50 good ones) is
/// dropped after its timeout and the cancel grace: its slot frees, the good messages are each
/// handled once at their first attempt, the hung one is retried and then dead-lettered, and a
/// shutdown with a hung handler in flight returns within its grace plus a second.
pub async fn hung_handler_is_dropped_and_shutdown_returns(f: &dyn QueueFactory, test: &str) {
    let dlq = Arc::new(RecordingDeadLetters::default());
    let Some((q, name)) = setup(f, test, CommonOptions::default().dead_letters(dlq.clone())).await
    else {
        return;
    };
    let hung = |n: usize| NewMessage::new("hang", json!({ "n": n })).max_attempts(2);
    let mut batch: Vec<NewMessage> = (1..=50).map(msg).collect();
    batch.insert(25, hung(0));
    publish_all(&*q, &name, batch).await;
    let ledger = Arc::new(DeliveryLedger::default());
    let first_attempts = Arc::new(AtomicUsize::new(0));
    let hangs = Arc::new(AtomicUsize::new(0));
    let (l, fa, hs) = (ledger.clone(), first_attempts.clone(), hangs.clone());
    let h = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let (l, fa, hs) = (l.clone(), fa.clone(), hs.clone());
        async move {
            for m in batch.iter() {
                if m.message_type == "hang" {
                    hs.fetch_add(1, Ordering::SeqCst);
                    // Awaits forever and never looks at its token.
                    std::future::pending::<()>().await;
                }
                l.begin(m.id.as_str());
                if m.attempts == 1 {
                    fa.fetch_add(1, Ordering::SeqCst);
                }
                l.end(m.id.as_str());
            }
        }
    }));
    let opts = fast_options()
        .batch_size(1)
        .concurrency(2)
        .handler_timeout(Duration::from_secs(1))
        .cancel_grace(Duration::from_millis(300))
        .retry(
            crate::RetryPolicy::default()
                .base_delay(Duration::from_millis(20))
                .jitter(0.0),
        );
    let started = std::time::Instant::now();
    let c = q
        .consume(&name, h.clone(), opts.clone())
        .await
        .expect("consume");
    eventually(LONG, "50 good messages handled", || ledger.distinct() == 50).await;
    let good_done = started.elapsed();
    eventually(LONG, "the hung message dead-lettered", || dlq.len() == 1).await;
    let hung_done = started.elapsed();
    c.stop().await;
    eprintln!(
        "{test}: 50 good handled after {good_done:?}; hung message dead-lettered after {hung_done:?}"
    );
    assert_eq!(ledger.duplicates(), 0, "a good message was handled twice");
    assert_eq!(
        first_attempts.load(Ordering::SeqCst),
        50,
        "every good message at attempt 1"
    );
    let letter = &dlq.letters()[0];
    assert_eq!(letter.message.message_type, "hang");
    assert!(letter.exhausted);
    assert!(
        letter.error.to_string().contains("was dropped"),
        "{}",
        letter.error
    );

    // A shutdown with a hung handler in flight returns within its grace plus a second.
    let before = hangs.load(Ordering::SeqCst);
    publish_all(&*q, &name, vec![hung(99)]).await;
    let grace = Duration::from_millis(500);
    let _c = q
        .consume(&name, h, opts.handler_timeout(LONG).shutdown_grace(grace))
        .await
        .expect("consume");
    eventually(LONG, "the second hung handler running", || {
        hangs.load(Ordering::SeqCst) > before
    })
    .await;
    let stopping = std::time::Instant::now();
    q.shutdown().await.expect("shutdown");
    let took = stopping.elapsed();
    eprintln!("{test}: shutdown with a hung handler took {took:?} (grace {grace:?})");
    assert!(
        took < grace + Duration::from_secs(1),
        "shutdown took {took:?}, grace {grace:?}"
    );
}
