//! The conformance cases. Each takes a factory and the case name (for isolation).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use super::{
    DeliveryLedger, QueueFactory, RecordingDeadLetters, RecordingObserver, eventually,
    fast_options, queue_name, should_skip,
};
use crate::error::Error;
use crate::handler::{Batch, HandlerContext, Outcome, Outcomes, handler_fn};
use crate::lifecycle::{DispatchMode, LifecycleDispatcher, LifecycleEvent};
use crate::message::{MessageId, NewMessage};
use crate::options::CommonOptions;
use crate::queue::MessageQueue;
use crate::store::{Completion, CompletionAction};

const LONG: Duration = Duration::from_secs(60);

fn msg(i: usize) -> NewMessage {
    NewMessage::new("test", json!({ "n": i }))
}

fn observed() -> (Arc<RecordingObserver>, CommonOptions) {
    let rec = Arc::new(RecordingObserver::default());
    let common = CommonOptions::default().lifecycle(
        LifecycleDispatcher::builder()
            .observer(rec.clone())
            .mode(DispatchMode::Sync)
            .build(),
    );
    (rec, common)
}

async fn setup(
    f: &dyn QueueFactory,
    test: &str,
    common: CommonOptions,
) -> (Arc<dyn MessageQueue>, crate::QueueName) {
    let q = f.create(test, common).await;
    let name = queue_name(test);
    q.register(&name).await.expect("register");
    (q, name)
}

/// Ready messages are all delivered once, with their payloads.
pub async fn delivers_ready_messages(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (q, name) = setup(f, test, CommonOptions::default()).await;
    let report = q
        .publish(&name, (0..25).map(msg).collect())
        .await
        .expect("publish");
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(report.published.len(), 25);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = handler_fn(move |batch: Batch, ctx: HandlerContext| {
        let s = s.clone();
        async move {
            assert_eq!(ctx.queue().as_str(), batch[0].queue.as_str());
            for m in batch.iter() {
                assert_eq!(m.attempts, 1);
                assert_eq!(m.status, crate::Status::Processing);
                s.lock().unwrap().push(m.payload["n"].as_u64().unwrap());
            }
        }
    });
    let c = q
        .consume(&name, Arc::new(h), fast_options().batch_size(7))
        .await
        .expect("consume");
    eventually(LONG, "25 deliveries", || seen.lock().unwrap().len() >= 25).await;
    c.stop().await;
    let mut got = seen.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..25).collect::<Vec<u64>>(),
        "each message exactly once"
    );
    q.shutdown().await.expect("shutdown");
}

/// A message is not delivered before its `execute_at`.
pub async fn respects_execute_at(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (q, name) = setup(f, test, CommonOptions::default()).await;
    let at = Utc::now() + chrono::Duration::milliseconds(1200);
    q.publish(
        &name,
        vec![
            msg(1).execute_at(at),
            msg(2).delay(Duration::from_millis(1200)),
            msg(0),
        ],
    )
    .await
    .expect("publish")
    .into_result()
    .expect("stored");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let s = s.clone();
        async move {
            for m in batch.iter() {
                s.lock().unwrap().push((
                    m.payload["n"].as_u64().unwrap(),
                    Utc::now(),
                    m.execute_at,
                ));
            }
        }
    });
    let c = q
        .consume(&name, Arc::new(h), fast_options())
        .await
        .expect("consume");
    eventually(LONG, "3 deliveries", || seen.lock().unwrap().len() >= 3).await;
    c.stop().await;
    for (n, delivered, execute_at) in seen.lock().unwrap().iter() {
        assert!(
            delivered >= execute_at,
            "message {n} delivered before execute_at"
        );
        if *n > 0 {
            assert!(
                *delivered >= at - chrono::Duration::milliseconds(50),
                "message {n} too early"
            );
        }
    }
    assert_eq!(
        seen.lock().unwrap()[0].0,
        0,
        "the ready message comes first"
    );
    q.shutdown().await.expect("shutdown");
}

/// A message past `expires_at` is never delivered and is reported expired.
pub async fn expired_messages_are_never_delivered(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (rec, common) = observed();
    let (q, name) = setup(f, test, common).await;
    let past = Utc::now() - chrono::Duration::seconds(1);
    let soon = Utc::now() + chrono::Duration::milliseconds(300);
    q.publish(
        &name,
        vec![
            msg(1).expires_at(past),
            // ready only after it expires
            msg(2).delay(Duration::from_millis(600)).expires_at(soon),
            msg(3),
        ],
    )
    .await
    .expect("publish")
    .into_result()
    .expect("stored");
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let d = delivered.clone();
    let h = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let d = d.clone();
        async move {
            for m in batch.iter() {
                d.lock().unwrap().push(m.payload["n"].as_u64().unwrap());
            }
        }
    }));
    tokio::time::sleep(Duration::from_millis(700)).await; // let message 2 pass its expiry: the case is about time
    let c = q.consume(&name, h, fast_options()).await.expect("consume");
    eventually(LONG, "2 expired events", || rec.count("expired") >= 2).await;
    eventually(LONG, "message 3 delivered", || {
        !delivered.lock().unwrap().is_empty()
    })
    .await;
    c.stop().await;
    assert_eq!(
        *delivered.lock().unwrap(),
        vec![3],
        "expired messages must never be delivered"
    );
    assert_eq!(rec.count("expired"), 2);
    q.shutdown().await.expect("shutdown");
}

/// A retried message comes back after its delay and can then succeed.
pub async fn retry_after_delay_then_success(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (rec, common) = observed();
    let (q, name) = setup(f, test, common).await;
    q.publish(&name, vec![msg(1)])
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    let h = handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let t = t.clone();
        async move {
            let m = &batch[0];
            t.lock()
                .unwrap()
                .push((m.attempts, tokio::time::Instant::now()));
            if m.attempts == 1 {
                Outcomes::all(Outcome::retry_after(Duration::from_millis(300)))
            } else {
                Outcomes::ack_all()
            }
        }
    });
    let c = q
        .consume(&name, Arc::new(h), fast_options())
        .await
        .expect("consume");
    eventually(LONG, "acked after retry", || rec.count("acked") == 1).await;
    c.stop().await;
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 2, "delivered exactly twice");
    assert_eq!(
        (times[0].0, times[1].0),
        (1, 2),
        "attempts count deliveries"
    );
    assert!(
        times[1].1 - times[0].1 >= Duration::from_millis(290),
        "retry delay respected"
    );
    assert_eq!(rec.count("retried"), 1);
    q.shutdown().await.expect("shutdown");
}

/// A message that keeps failing is delivered `max_attempts` times, then marked failed and
/// handed to the dead-letter hook with its error.
pub async fn exhausted_attempts_go_to_dead_letters(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let dlq = Arc::new(RecordingDeadLetters::default());
    let (rec, common) = observed();
    let (q, name) = setup(f, test, common.dead_letters(dlq.clone())).await;
    q.publish(&name, vec![msg(1).max_attempts(3), msg(2)])
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let deliveries = Arc::new(AtomicUsize::new(0));
    let d = deliveries.clone();
    let h = handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let d = d.clone();
        async move {
            d.fetch_add(batch.len(), Ordering::SeqCst);
            Err::<(), _>(std::io::Error::other("smtp server said no"))
        }
    });
    let opts = fast_options().retry(
        crate::RetryPolicy::default()
            .max_attempts(2)
            .base_delay(Duration::from_millis(20))
            .jitter(0.0),
    );
    let c = q.consume(&name, Arc::new(h), opts).await.expect("consume");
    eventually(LONG, "two dead letters", || dlq.len() == 2).await;
    c.stop().await;
    assert_eq!(
        deliveries.load(Ordering::SeqCst),
        5,
        "3 (own max) + 2 (policy max)"
    );
    let letters = dlq.letters();
    for l in &letters {
        assert!(l.exhausted);
        assert_eq!(l.error.to_string(), "smtp server said no");
        assert_eq!(l.origin.backend, q.backend());
        let expected = if l.message.payload["n"] == 1 { 3 } else { 2 };
        assert_eq!(l.message.attempts, expected);
    }
    assert_eq!(rec.count("failed"), 2);
    assert_eq!(rec.count("dead_lettered"), 2);
    // The queue's numbers say where the messages went.
    let store = f.store(test).await.expect("a polling backend has a store");
    let stats = store.queue_stats(Some(&name)).await.expect("queue stats");
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].count(crate::Status::DeadLettered), 2, "{stats:?}");
    assert_eq!(stats[0].count(crate::Status::Failed), 0, "{stats:?}");
    q.shutdown().await.expect("shutdown");
}

/// One batch can ack, retry, fail and dead-letter different messages.
pub async fn mixed_outcomes_in_one_batch(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let dlq = Arc::new(RecordingDeadLetters::default());
    let (q, name) = setup(f, test, CommonOptions::default().dead_letters(dlq.clone())).await;
    let ids: Vec<MessageId> = (0..4)
        .map(|i| MessageId::new(format!("m{i}")).unwrap())
        .collect();
    q.publish(
        &name,
        ids.iter()
            .enumerate()
            .map(|(i, id)| msg(i).id(id.clone()))
            .collect(),
    )
    .await
    .expect("publish")
    .into_result()
    .expect("stored");
    let ids2 = ids.clone();
    let h = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let ids = ids2.clone();
        async move {
            assert_eq!(batch.len(), 4, "one batch of four");
            Outcomes::ack_all()
                .set(
                    ids[1].clone(),
                    Outcome::retry_after(Duration::from_secs(3600)),
                )
                .set(ids[2].clone(), Outcome::fail("bad input"))
                .set(ids[3].clone(), Outcome::dead_letter("no handler for this"))
        }
    }));
    let report = q
        .consume_batch(&name, h.clone(), &fast_options().batch_size(10))
        .await
        .expect("batch");
    assert_eq!(report.delivered, 4);
    assert_eq!(report.acked, 1);
    assert_eq!(report.retried, 1);
    assert_eq!(report.failed, 2);
    assert_eq!(report.dead_lettered, 2);
    let mut dl: Vec<String> = dlq
        .letters()
        .iter()
        .map(|l| l.message.id.to_string())
        .collect();
    dl.sort();
    assert_eq!(dl, vec!["m2", "m3"]);
    // nothing else is deliverable now: the retry waits an hour, the rest are finished
    let again = q
        .consume_batch(&name, h, &fast_options())
        .await
        .expect("batch");
    assert_eq!(again.delivered, 0);
    q.shutdown().await.expect("shutdown");
}

/// A handler past its timeout sees its token cancelled; the message comes back only after the
/// handler has returned.
pub async fn handler_timeout_cancels_and_retries(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (q, name) = setup(f, test, CommonOptions::default()).await;
    q.publish(&name, vec![msg(1)])
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
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
    let c = q
        .consume(&name, Arc::new(h), opts.concurrency(2))
        .await
        .expect("consume");
    eventually(LONG, "second delivery", || ledger.duplicates() >= 1).await;
    c.stop().await;
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

/// Four consumers over 10,000 messages: every message delivered, none while another consumer
/// holds it.
pub async fn concurrent_consumers_never_double_claim(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    const N: usize = 10_000;
    let (q, name) = setup(f, test, CommonOptions::default()).await;
    let ledger = Arc::new(DeliveryLedger::default());
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let l = ledger.clone();
        let h = handler_fn(move |batch: Batch, _ctx: HandlerContext| {
            let l = l.clone();
            async move {
                for m in batch.iter() {
                    l.begin(m.id.as_str());
                }
                tokio::task::yield_now().await;
                for m in batch.iter() {
                    l.end(m.id.as_str());
                }
            }
        });
        consumers.push(
            q.consume(
                &name,
                Arc::new(h),
                fast_options()
                    .batch_size(50)
                    .concurrency(2)
                    .lease_duration(Duration::from_secs(60)),
            )
            .await
            .expect("consume"),
        );
    }
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let r = q
            .publish(&name, chunk.iter().map(|i| msg(*i)).collect())
            .await
            .expect("publish");
        assert!(r.is_complete());
    }
    eventually(Duration::from_secs(240), "all 10,000 delivered", || {
        ledger.distinct() == N
    })
    .await;
    for c in consumers {
        c.stop().await;
    }
    eprintln!(
        "{test}: delivered {} distinct, {} duplicates, {} overlaps",
        ledger.distinct(),
        ledger.duplicates(),
        ledger.overlaps()
    );
    assert_eq!(
        ledger.overlaps(),
        0,
        "a message was delivered while another consumer held it"
    );
    assert_eq!(
        ledger.duplicates(),
        0,
        "no lease expired, so nothing may be delivered twice"
    );
    q.shutdown().await.expect("shutdown");
}

/// Shutdown waits for a handler that is running.
pub async fn shutdown_waits_for_in_flight_handler(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (rec, common) = observed();
    let (q, name) = setup(f, test, common).await;
    q.publish(&name, vec![msg(1)])
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let started = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
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

/// Publishing or consuming an unregistered queue is a clear error and stores nothing.
pub async fn unregistered_queue_is_an_error(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let q = f.create(test, CommonOptions::default()).await;
    let name = queue_name(test);
    let err = q.publish(&name, vec![msg(1)]).await.unwrap_err();
    assert!(matches!(err, Error::NotRegistered { .. }), "{err}");
    assert!(err.to_string().contains(name.as_str()), "{err}");
    let h = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
    assert!(matches!(
        q.consume(&name, h.clone(), fast_options()).await,
        Err(Error::NotRegistered { .. })
    ));
    q.register(&name).await.expect("register");
    let r = q
        .consume_batch(&name, h, &fast_options())
        .await
        .expect("batch");
    assert_eq!(r.delivered, 0, "the refused publish stored nothing");
    q.shutdown().await.expect("shutdown");
}

/// An empty publish is a no-op.
pub async fn empty_publish_is_a_noop(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (rec, common) = observed();
    let (q, name) = setup(f, test, common).await;
    let r = q.publish(&name, vec![]).await.expect("publish");
    assert!(r.published.is_empty() && r.failed.is_empty());
    assert_eq!(rec.count("published"), 0);
    q.shutdown().await.expect("shutdown");
}

/// Oversize messages, invalid messages and duplicate ids are refused one by one; the rest is
/// stored.
pub async fn oversize_and_duplicate_messages_are_refused(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (q, name) = setup(f, test, CommonOptions::default().max_message_bytes(2048)).await;
    let dup = MessageId::new("dup-1").unwrap();
    q.publish(&name, vec![msg(0).id(dup.clone())])
        .await
        .expect("publish")
        .into_result()
        .expect("first copy stored");
    let big = NewMessage::new("test", json!({ "blob": "x".repeat(4096) }));
    let r = q
        .publish(
            &name,
            vec![
                big,
                msg(1),
                msg(2).id(dup.clone()),
                NewMessage::new("", json!(1)),
            ],
        )
        .await
        .expect("publish");
    assert_eq!(r.published.len(), 1, "only the good message is stored");
    let kinds: Vec<(usize, String)> = r
        .failed
        .iter()
        .map(|f| (f.index, f.error.to_string()))
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(kinds[0].0, 0);
    assert!(matches!(
        r.failed[0].error,
        Error::MessageTooLarge { limit: 2048, .. }
    ));
    assert_eq!(kinds[1].0, 2);
    assert!(
        matches!(r.failed[1].error, Error::DuplicateId { .. }),
        "{}",
        kinds[1].1
    );
    assert!(
        kinds[1].1.contains("dup-1"),
        "error names the id: {}",
        kinds[1].1
    );
    assert_eq!(kinds[2].0, 3);
    assert!(matches!(
        r.failed[2].error,
        Error::InvalidMessageType { .. }
    ));
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let h = Arc::new(handler_fn(move |b: Batch, _c: HandlerContext| {
        let s = s.clone();
        async move {
            s.fetch_add(b.len(), Ordering::SeqCst);
        }
    }));
    let rep = q
        .consume_batch(&name, h, &fast_options())
        .await
        .expect("batch");
    assert_eq!(rep.delivered, 2, "the first copy of dup-1 and message 1");
    q.shutdown().await.expect("shutdown");
}

/// Events come in life order: published, connected, consumed, acked, disconnected.
pub async fn lifecycle_events_fire_in_order(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (rec, common) = observed();
    let (q, name) = setup(f, test, common).await;
    q.publish(&name, vec![msg(1)])
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let h = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
    let c = q.consume(&name, h, fast_options()).await.expect("consume");
    eventually(LONG, "acked", || rec.count("acked") == 1).await;
    c.stop().await;
    eventually(LONG, "disconnected", || {
        rec.count("consumer_disconnected") == 1
    })
    .await;
    assert_eq!(
        rec.names(),
        vec![
            "published",
            "consumer_connected",
            "consumed",
            "acked",
            "consumer_disconnected"
        ]
    );
    let events = rec.events();
    let LifecycleEvent::Consumed { consumer_id, .. } = &events[2] else {
        panic!("expected consumed, got {:?}", events[2]);
    };
    let LifecycleEvent::ConsumerDisconnected { consumer, reason } = &events[4] else {
        panic!("expected disconnected");
    };
    assert_eq!(&consumer.consumer_id, consumer_id);
    assert_eq!(*reason, crate::DisconnectReason::Stopped);
    q.shutdown().await.expect("shutdown");
}

#[derive(Debug)]
struct Hostile;
impl crate::LifecycleObserver for Hostile {
    fn on_event(&self, e: &LifecycleEvent) -> Result<(), crate::ObserverError> {
        if e.name() == "consumed" {
            panic!("observer bug");
        }
        Err("observer storage down".into())
    }
}

/// An observer that errors and panics is reported and never stops consumption.
pub async fn failing_observer_does_not_break_consumption(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let failures = Arc::new(AtomicUsize::new(0));
    let fl = failures.clone();
    let common = CommonOptions::default().lifecycle(
        LifecycleDispatcher::builder()
            .observer(Arc::new(Hostile))
            .mode(DispatchMode::Sync)
            .on_error(move |_| {
                fl.fetch_add(1, Ordering::SeqCst);
            })
            .build(),
    );
    let (q, name) = setup(f, test, common).await;
    q.publish(&name, (0..10).map(msg).collect())
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let h = Arc::new(handler_fn(move |b: Batch, _c: HandlerContext| {
        let s = s.clone();
        async move {
            s.fetch_add(b.len(), Ordering::SeqCst);
        }
    }));
    let c = q.consume(&name, h, fast_options()).await.expect("consume");
    eventually(LONG, "10 delivered", || seen.load(Ordering::SeqCst) == 10).await;
    c.stop().await;
    assert!(
        failures.load(Ordering::SeqCst) >= 30,
        "published, consumed, acked per message"
    );
    q.shutdown().await.expect("shutdown");
}

/// `consume_batch` works on its own, with no background consumer.
pub async fn consume_batch_works_without_a_consumer(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (q, name) = setup(f, test, CommonOptions::default()).await;
    q.publish(&name, (0..5).map(msg).collect())
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let h = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
    let opts = fast_options().batch_size(3);
    let a = q
        .consume_batch(&name, h.clone(), &opts)
        .await
        .expect("batch");
    let b = q
        .consume_batch(&name, h.clone(), &opts)
        .await
        .expect("batch");
    let c = q.consume_batch(&name, h, &opts).await.expect("batch");
    assert_eq!((a.delivered, a.acked), (3, 3));
    assert_eq!((b.delivered, b.acked), (2, 2));
    assert_eq!(c.delivered, 0);
    q.shutdown().await.expect("shutdown");
}

/// A claim whose lease expired can be taken by another consumer (crash recovery, counting the
/// attempt), and the old owner can neither renew nor complete it.
pub async fn expired_lease_is_claimed_again_and_fences_the_old_owner(
    f: &dyn QueueFactory,
    test: &str,
) {
    if should_skip(f, test) {
        return;
    }
    let q = f.create(test, CommonOptions::default()).await;
    let Some(store) = f.store(test).await else {
        eprintln!("skipping {test}: backend has no claim store");
        return;
    };
    let name = queue_name(test);
    q.register(&name).await.expect("register");
    q.publish(&name, vec![msg(1)])
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let lease = Duration::from_millis(300);
    // A long lease first, so a slow machine cannot let it lapse before the next assertion.
    let a = store
        .claim(&name, "owner-a", 10, Duration::from_secs(30))
        .await
        .expect("claim a");
    assert_eq!(a.messages.len(), 1);
    assert_eq!(a.messages[0].attempts, 1);
    let none = store
        .claim(&name, "owner-b", 10, lease)
        .await
        .expect("claim b");
    assert!(
        none.messages.is_empty(),
        "claimed twice while the lease is valid"
    );
    let claim_a = crate::store::Claim::of(&a.messages[0]);
    let lost = store
        .renew(&name, "owner-a", std::slice::from_ref(&claim_a), lease)
        .await
        .expect("renew a");
    assert!(lost.is_empty(), "the owner could not renew its own claim");
    // owner A "crashes": it stops renewing; wait for the lease to lapse
    let mut b = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while b.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        b = store
            .claim(&name, "owner-b", 10, Duration::from_secs(30))
            .await
            .expect("claim")
            .messages;
    }
    assert_eq!(
        b[0].attempts, 2,
        "the crashed delivery counts as an attempt"
    );
    let lost = store
        .renew(&name, "owner-a", std::slice::from_ref(&claim_a), lease)
        .await
        .expect("renew");
    assert_eq!(lost, vec![claim_a.clone()], "stale owner renewed");
    let refused = store
        .complete(
            &name,
            "owner-a",
            vec![Completion::new(claim_a.clone(), CompletionAction::Ack)],
        )
        .await
        .expect("complete");
    assert_eq!(refused, vec![claim_a], "stale owner acked");
    let claim_b = crate::store::Claim::of(&b[0]);
    let refused = store
        .complete(
            &name,
            "owner-b",
            vec![Completion::new(claim_b, CompletionAction::Ack)],
        )
        .await
        .expect("complete");
    assert!(refused.is_empty(), "current owner refused");
    let after = store
        .claim(&name, "owner-c", 10, lease)
        .await
        .expect("claim");
    assert!(after.messages.is_empty(), "acked message delivered again");
    q.shutdown().await.expect("shutdown");
}

/// A handler that panics does not kill the consumer; its batch is retried.
pub async fn panicking_handler_retries_the_batch(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (rec, common) = observed();
    let (q, name) = setup(f, test, common).await;
    q.publish(&name, vec![msg(1)])
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let h = handler_fn(|b: Batch, _c: HandlerContext| async move {
        if b[0].attempts == 1 {
            panic!("handler bug");
        }
    });
    let c = q
        .consume(&name, Arc::new(h), fast_options())
        .await
        .expect("consume");
    eventually(LONG, "acked on the second delivery", || {
        rec.count("acked") == 1
    })
    .await;
    c.stop().await;
    let retried = rec
        .events()
        .into_iter()
        .find_map(|e| match e {
            LifecycleEvent::Retried { error, .. } => error,
            _ => None,
        })
        .expect("a retried event with the panic");
    assert!(retried.to_string().contains("handler bug"), "{retried}");
    q.shutdown().await.expect("shutdown");
}

/// Past the grace period, shutdown cancels the handler's token, waits for it to return, and the
/// message is released for another delivery instead of being lost.
pub async fn shutdown_cancels_handlers_after_the_grace_period(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (rec, common) = observed();
    let (q, name) = setup(f, test, common).await;
    q.publish(&name, vec![msg(1)])
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let (started, returned) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
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

/// Shutdown waits for a `consume_batch` call in flight, and a second, concurrent shutdown
/// returns only when the first has finished.
pub async fn shutdown_waits_for_consume_batch_and_repeats_safely(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (q, name) = setup(f, test, CommonOptions::default()).await;
    q.publish(&name, vec![msg(1)])
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let (started, finished) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
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

/// Delays and durations far beyond reason are refused or saturated, never a panic.
pub async fn absurd_delays_are_handled_without_panics(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (q, name) = setup(f, test, CommonOptions::default()).await;
    let r = q
        .publish(
            &name,
            vec![msg(1).delay(Duration::from_secs(u64::MAX)), msg(2)],
        )
        .await
        .expect("publish");
    assert!(
        r.is_complete(),
        "a far-future message is valid: {:?}",
        r.failed
    );
    let h = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {
        Outcomes::all(Outcome::retry_after(Duration::from_secs(u64::MAX)))
    }));
    let rep = q
        .consume_batch(&name, h.clone(), &fast_options())
        .await
        .expect("batch");
    assert_eq!(
        (rep.delivered, rep.retried),
        (1, 1),
        "only the ready message, retried far away"
    );
    let again = q
        .consume_batch(&name, h.clone(), &fast_options())
        .await
        .expect("batch");
    assert_eq!(again.delivered, 0);
    let err = q
        .consume(&name, h, fast_options().handler_timeout(Duration::MAX))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidOption {
                field: "handler_timeout",
                ..
            }
        ),
        "{err}"
    );
    q.shutdown().await.expect("shutdown");
}

/// A handler that never returns and ignores its token (one message among 50 good ones) is
/// dropped after its timeout and the cancel grace: its slot frees, the good messages are each
/// handled once at their first attempt, the hung one is retried and then dead-lettered, and a
/// shutdown with a hung handler in flight returns within its grace plus a second.
pub async fn hung_handler_is_dropped_and_shutdown_returns(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let dlq = Arc::new(RecordingDeadLetters::default());
    let (q, name) = setup(f, test, CommonOptions::default().dead_letters(dlq.clone())).await;
    let hung = |n: usize| NewMessage::new("hang", json!({ "n": n })).max_attempts(2);
    let mut batch: Vec<NewMessage> = (1..=50).map(msg).collect();
    batch.insert(25, hung(0));
    q.publish(&name, batch)
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
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
    q.publish(&name, vec![hung(99)])
        .await
        .expect("publish")
        .into_result()
        .expect("stored");
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

/// Handles every message of `name` with `consume_batch` until `expected` were seen (or the
/// deadline passes), recording deliveries in a ledger.
async fn drain_into(
    q: &dyn MessageQueue,
    name: &crate::QueueName,
    expected: usize,
) -> Arc<DeliveryLedger> {
    let ledger = Arc::new(DeliveryLedger::default());
    let l = ledger.clone();
    let h = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let l = l.clone();
        async move {
            for m in batch.iter() {
                l.begin(m.id.as_str());
                l.end(m.id.as_str());
            }
        }
    }));
    let opts = fast_options().batch_size(100);
    let deadline = std::time::Instant::now() + LONG;
    while ledger.distinct() < expected && std::time::Instant::now() < deadline {
        let report = q
            .consume_batch(name, h.clone(), &opts)
            .await
            .expect("consume_batch");
        if report.delivered == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ledger
}

/// A payload nested 200 levels deep among 200 good messages is refused at publish, alone, with
/// its reason; every good message is handled once, at its first attempt.
pub async fn too_deep_payload_is_refused_alone(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (q, name) = setup(f, test, CommonOptions::default()).await;
    let mut deep = json!("bottom");
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let mut batch: Vec<NewMessage> = (0..200).map(msg).collect();
    batch.insert(100, NewMessage::new("poison", deep));
    let report = q.publish(&name, batch).await.expect("publish");
    assert_eq!(report.published.len(), 200, "{:?}", report.failed);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].index, 100);
    assert!(
        matches!(
            report.failed[0].error,
            Error::InvalidMessage {
                field: "payload",
                ..
            }
        ),
        "{}",
        report.failed[0].error
    );
    let ledger = Arc::new(DeliveryLedger::default());
    let first = Arc::new(AtomicUsize::new(0));
    let (l, fa) = (ledger.clone(), first.clone());
    let h = Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
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
    }));
    let c = q
        .consume(&name, h, fast_options().batch_size(10))
        .await
        .expect("consume");
    eventually(LONG, "200 good messages handled", || {
        ledger.distinct() == 200
    })
    .await;
    c.stop().await;
    eprintln!(
        "{test}: {} backend: 200 good handled ({} at attempt 1, {} duplicates), poison refused at publish",
        q.backend(),
        first.load(Ordering::SeqCst),
        ledger.duplicates()
    );
    assert_eq!(ledger.duplicates(), 0);
    assert_eq!(first.load(Ordering::SeqCst), 200);
    q.shutdown().await.expect("shutdown");
}

/// In a publish of 10, a message with a NUL in its payload and one with a partition key too
/// long for any backend are each refused alone, with their reason, or (the NUL, where the
/// backend can keep it) stored and delivered intact; the 8 others are stored and consumed. In a
/// publish of 6,000, a bad message at #5,500 is refused alone and the 5,999 others are stored:
/// never part of the batch stored with an error for the whole call.
pub async fn bad_messages_are_refused_alone(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (q, name) = setup(f, test, CommonOptions::default()).await;
    let mut batch: Vec<NewMessage> = (0..8).map(msg).collect();
    batch.insert(3, NewMessage::new("nul", json!({ "text": "a\u{0}b" })));
    batch.insert(7, msg(99).partition_key("k".repeat(300)));
    let report = q.publish(&name, batch).await.expect("publish");
    let refused: Vec<(usize, String)> = report
        .failed
        .iter()
        .map(|f| (f.index, f.error.to_string()))
        .collect();
    eprintln!("{test}: {} backend refused {refused:?}", q.backend());
    assert!(
        refused
            .iter()
            .any(|(i, e)| *i == 7 && e.contains("partition_key")),
        "{refused:?}"
    );
    assert!(
        refused.iter().all(|(i, _)| *i == 3 || *i == 7),
        "only the bad messages are refused: {refused:?}"
    );
    let nul_stored = !refused.iter().any(|(i, _)| *i == 3);
    if !nul_stored {
        assert!(
            refused.iter().any(|(i, e)| *i == 3 && e.contains("NUL")),
            "{refused:?}"
        );
    }
    let stored = report.published.len();
    assert_eq!(stored, if nul_stored { 9 } else { 8 });
    let ledger = drain_into(&*q, &name, stored).await;
    assert_eq!(ledger.distinct(), stored);

    let mut big: Vec<NewMessage> = (0..6000).map(msg).collect();
    big[5500] = msg(5500).partition_key(String::new());
    let report = q.publish(&name, big).await.expect("publish 6000");
    assert_eq!(report.published.len(), 5999, "{:?}", report.failed.first());
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].index, 5500);
    let ledger = drain_into(&*q, &name, 5999).await;
    assert_eq!(ledger.distinct(), 5999);
    q.shutdown().await.expect("shutdown");
}

/// `queue_stats` counts messages per status and reports the oldest ready message's age.
pub async fn queue_stats_count_by_status(f: &dyn QueueFactory, test: &str) {
    if should_skip(f, test) {
        return;
    }
    let (q, name) = setup(f, test, CommonOptions::default()).await;
    let mut batch: Vec<NewMessage> = (0..3).map(msg).collect();
    batch.extend((3..5).map(|i| msg(i).delay(Duration::from_secs(3600))));
    q.publish(&name, batch)
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let store = f.store(test).await.expect("a polling backend has a store");
    let before = store.queue_stats(Some(&name)).await.expect("stats");
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(&before[0].queue, &name);
    assert_eq!(before[0].count(crate::Status::Scheduled), 5, "{before:?}");
    assert!(before[0].oldest_ready_age.is_some(), "{before:?}");
    let h = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
    let report = q
        .consume_batch(&name, h, &fast_options().batch_size(10))
        .await
        .expect("consume");
    assert_eq!(report.acked, 3);
    let after = store.queue_stats(Some(&name)).await.expect("stats");
    assert_eq!(after[0].count(crate::Status::Scheduled), 2, "{after:?}");
    assert_eq!(after[0].count(crate::Status::Processing), 0, "{after:?}");
    assert_eq!(after[0].oldest_ready_age, None, "{after:?}");
    assert_eq!(after[0].expired_leases, 0);
    let all = store.queue_stats(None).await.expect("stats of every queue");
    assert!(all.iter().any(|s| s.queue == name), "{all:?}");
    q.shutdown().await.expect("shutdown");
}
