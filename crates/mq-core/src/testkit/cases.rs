//! The conformance cases. Each takes a factory and the case name (for isolation).
//!
//! Delivery, retries, outcomes and events are written here; shutdown and timeouts, and refused
//! input, in two submodules whose cases are re-exported here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;

use super::support::{LONG, ack_all, consume_until, counting, msg, observed, publish_all, setup};
use super::{
    DeliveryLedger, QueueFactory, RecordingDeadLetters, eventually, fast_options, wait_until,
};
use crate::handler::{Batch, HandlerContext, Outcome, Outcomes, handler_fn};
use crate::lifecycle::{DispatchMode, LifecycleDispatcher, LifecycleEvent};
use crate::message::{MessageId, NewMessage};
use crate::options::CommonOptions;
use crate::store::{Completion, CompletionAction, Holder};

mod refusals;
mod shutdown;

pub use refusals::{
    absurd_delays_are_handled_without_panics, bad_messages_are_refused_alone,
    empty_publish_is_a_noop, oversize_and_duplicate_messages_are_refused,
    too_deep_payload_is_refused_alone, unregistered_queue_is_an_error,
};
pub use shutdown::{
    handler_timeout_cancels_and_retries, hung_handler_is_dropped_and_shutdown_returns,
    shutdown_abort_on_the_last_attempt_releases_the_message,
    shutdown_cancels_handlers_after_the_grace_period,
    shutdown_waits_for_consume_batch_and_repeats_safely, shutdown_waits_for_in_flight_handler,
};

/// Ready messages are all delivered once, with their payloads.
pub async fn delivers_ready_messages(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
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
    consume_until(
        &*q,
        &name,
        Arc::new(h),
        fast_options().batch_size(7),
        "25 deliveries",
        || seen.lock().unwrap().len() >= 25,
    )
    .await;
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
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    let at = Utc::now() + chrono::Duration::milliseconds(1200);
    publish_all(
        &*q,
        &name,
        vec![
            msg(1).execute_at(at),
            msg(2).delay(Duration::from_millis(1200)),
            msg(0),
        ],
    )
    .await;
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
    consume_until(
        &*q,
        &name,
        Arc::new(h),
        fast_options(),
        "3 deliveries",
        || seen.lock().unwrap().len() >= 3,
    )
    .await;
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
    let (rec, common) = observed();
    let (q, name) = or_skip!(setup(f, test, common).await);
    let past = Utc::now() - chrono::Duration::seconds(1);
    let soon = Utc::now() + chrono::Duration::milliseconds(300);
    publish_all(
        &*q,
        &name,
        vec![
            msg(1).expires_at(past),
            // ready only after it expires
            msg(2).delay(Duration::from_millis(600)).expires_at(soon),
            msg(3),
        ],
    )
    .await;
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
    let (rec, common) = observed();
    let (q, name) = or_skip!(setup(f, test, common).await);
    publish_all(&*q, &name, vec![msg(1)]).await;
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
    consume_until(
        &*q,
        &name,
        Arc::new(h),
        fast_options(),
        "acked after retry",
        || rec.count("acked") == 1,
    )
    .await;
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
    let dlq = Arc::new(RecordingDeadLetters::default());
    let (rec, common) = observed();
    let (q, name) = or_skip!(setup(f, test, common.dead_letters(dlq.clone())).await);
    publish_all(&*q, &name, vec![msg(1).max_attempts(3), msg(2)]).await;
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
    consume_until(&*q, &name, Arc::new(h), opts, "two dead letters", || {
        dlq.len() == 2
    })
    .await;
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
    let dlq = Arc::new(RecordingDeadLetters::default());
    let Some((q, name)) = setup(f, test, CommonOptions::default().dead_letters(dlq.clone())).await
    else {
        return;
    };
    let ids: Vec<MessageId> = (0..4)
        .map(|i| MessageId::new(format!("m{i}")).unwrap())
        .collect();
    publish_all(
        &*q,
        &name,
        ids.iter()
            .enumerate()
            .map(|(i, id)| msg(i).id(id.clone()))
            .collect(),
    )
    .await;
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

/// Four consumers over 10,000 messages: every message delivered, none while another consumer
/// holds it.
pub async fn concurrent_consumers_never_double_claim(f: &dyn QueueFactory, test: &str) {
    const N: usize = 10_000;
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    let ledger = Arc::new(DeliveryLedger::default());
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let h = ledger.handler();
        consumers.push(
            q.consume(
                &name,
                h,
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
    ledger.assert_each_delivered_once();
    q.shutdown().await.expect("shutdown");
}

/// Events come in life order: published, connected, consumed, acked, disconnected.
pub async fn lifecycle_events_fire_in_order(f: &dyn QueueFactory, test: &str) {
    let (rec, common) = observed();
    let (q, name) = or_skip!(setup(f, test, common).await);
    publish_all(&*q, &name, vec![msg(1)]).await;
    let h = ack_all();
    consume_until(&*q, &name, h, fast_options(), "acked", || {
        rec.count("acked") == 1
    })
    .await;
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
    let (q, name) = or_skip!(setup(f, test, common).await);
    publish_all(&*q, &name, (0..10).map(msg).collect()).await;
    let (seen, h) = counting();
    consume_until(&*q, &name, h, fast_options(), "10 delivered", || {
        seen.load(Ordering::SeqCst) == 10
    })
    .await;
    assert!(
        failures.load(Ordering::SeqCst) >= 30,
        "published, consumed, acked per message"
    );
    q.shutdown().await.expect("shutdown");
}

/// `consume_batch` works on its own, with no background consumer.
pub async fn consume_batch_works_without_a_consumer(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    publish_all(&*q, &name, (0..5).map(msg).collect()).await;
    let h = ack_all();
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
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    let Some(store) = f.store(test).await else {
        eprintln!("skipping {test}: backend has no claim store");
        return;
    };
    publish_all(&*q, &name, vec![msg(1)]).await;
    let lease = Duration::from_millis(300);
    // A long lease first, so a slow machine cannot let it lapse before the next assertion.
    let a = store
        .claim(&name, Holder::new("owner-a", Duration::from_secs(30)), 10)
        .await
        .expect("claim a");
    assert_eq!(a.messages.len(), 1);
    assert_eq!(a.messages[0].attempts, 1);
    let none = store
        .claim(&name, Holder::new("owner-b", lease), 10)
        .await
        .expect("claim b");
    assert!(
        none.messages.is_empty(),
        "claimed twice while the lease is valid"
    );
    let claim_a = crate::store::Claim::of(&a.messages[0]);
    let lost = store
        .renew(
            &name,
            Holder::new("owner-a", lease),
            std::slice::from_ref(&claim_a),
        )
        .await
        .expect("renew a");
    assert!(lost.is_empty(), "the owner could not renew its own claim");
    // owner A "crashes": it stops renewing; wait for the lease to lapse
    let claimed = Mutex::new(Vec::new());
    wait_until(Duration::from_secs(30), "the lease to expire", || {
        let (store, name, claimed) = (&store, &name, &claimed);
        async move {
            let got = store
                .claim(name, Holder::new("owner-b", Duration::from_secs(30)), 10)
                .await
                .expect("claim")
                .messages;
            let expired = !got.is_empty();
            *claimed.lock().unwrap() = got;
            expired
        }
    })
    .await;
    let b = claimed.into_inner().unwrap();
    assert_eq!(
        b[0].attempts, 2,
        "the crashed delivery counts as an attempt"
    );
    let lost = store
        .renew(
            &name,
            Holder::new("owner-a", lease),
            std::slice::from_ref(&claim_a),
        )
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
        .claim(&name, Holder::new("owner-c", lease), 10)
        .await
        .expect("claim");
    assert!(after.messages.is_empty(), "acked message delivered again");
    q.shutdown().await.expect("shutdown");
}

/// A handler that panics does not kill the consumer; its batch is retried.
pub async fn panicking_handler_retries_the_batch(f: &dyn QueueFactory, test: &str) {
    let (rec, common) = observed();
    let (q, name) = or_skip!(setup(f, test, common).await);
    publish_all(&*q, &name, vec![msg(1)]).await;
    let h = handler_fn(|b: Batch, _c: HandlerContext| async move {
        if b[0].attempts == 1 {
            panic!("handler bug");
        }
    });
    consume_until(
        &*q,
        &name,
        Arc::new(h),
        fast_options(),
        "acked on the second delivery",
        || rec.count("acked") == 1,
    )
    .await;
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

/// `queue_stats` counts messages per status and reports the oldest ready message's age;
/// `queue_depth` counts the waiting and running ones alone.
pub async fn queue_stats_count_by_status(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    let mut batch: Vec<NewMessage> = (0..3).map(msg).collect();
    batch.extend((3..5).map(|i| msg(i).delay(Duration::from_secs(3600))));
    publish_all(&*q, &name, batch).await;
    let store = f.store(test).await.expect("a polling backend has a store");
    let before = store.queue_stats(Some(&name)).await.expect("stats");
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(&before[0].queue, &name);
    assert_eq!(before[0].count(crate::Status::Scheduled), 5, "{before:?}");
    assert!(before[0].oldest_ready_age.is_some(), "{before:?}");
    let depth = store.queue_depth(Some(&name)).await.expect("depth");
    assert_eq!(depth.len(), 1, "{depth:?}");
    assert_eq!(depth[0].count(crate::Status::Scheduled), 5, "{depth:?}");
    assert!(depth[0].oldest_ready_age.is_some(), "{depth:?}");
    let h = ack_all();
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
    // The depth counts the waiting and running messages only, the same as the full numbers.
    let depth = store.queue_depth(Some(&name)).await.expect("depth");
    assert_eq!(depth[0].count(crate::Status::Scheduled), 2, "{depth:?}");
    assert_eq!(depth[0].count(crate::Status::Processing), 0, "{depth:?}");
    assert_eq!(depth[0].oldest_ready_age, None, "{depth:?}");
    assert!(
        depth[0].counts.keys().all(|s| !s.is_terminal()),
        "no finished status in the depth: {depth:?}"
    );
    let all = store.queue_depth(None).await.expect("depth of every queue");
    assert!(all.iter().any(|s| s.queue == name), "{all:?}");
    q.shutdown().await.expect("shutdown");
}
