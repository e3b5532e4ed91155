//! Conformance cases for refused input: bad messages are refused one by one, the rest stored.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::error::Error;
use crate::handler::{Batch, HandlerContext, Outcome, Outcomes, handler_fn};
use crate::message::{MessageId, NewMessage};
use crate::options::CommonOptions;
use crate::queue::MessageQueue;
use crate::testkit::support::{
    LONG, ack_all, consume_until, counting, ledgered, msg, observed, publish_all, setup,
};
use crate::testkit::{
    DeliveryLedger, QueueFactory, fast_options, queue_name, should_skip, wait_until,
};

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
    let h = ack_all();
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
    let (rec, common) = observed();
    let (q, name) = or_skip!(setup(f, test, common).await);
    let r = q.publish(&name, vec![]).await.expect("publish");
    assert!(r.published.is_empty() && r.failed.is_empty());
    assert_eq!(rec.count("published"), 0);
    q.shutdown().await.expect("shutdown");
}

/// Oversize messages, invalid messages and duplicate ids are refused one by one; the rest is
/// stored.
pub async fn oversize_and_duplicate_messages_are_refused(f: &dyn QueueFactory, test: &str) {
    let Some((q, name)) = setup(f, test, CommonOptions::default().max_message_bytes(2048)).await
    else {
        return;
    };
    let dup = MessageId::new("dup-1").unwrap();
    publish_all(&*q, &name, vec![msg(0).id(dup.clone())]).await;
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
    let (_seen, h) = counting();
    let rep = q
        .consume_batch(&name, h, &fast_options())
        .await
        .expect("batch");
    assert_eq!(rep.delivered, 2, "the first copy of dup-1 and message 1");
    q.shutdown().await.expect("shutdown");
}

/// Delays and durations far beyond reason are refused or saturated, never a panic.
pub async fn absurd_delays_are_handled_without_panics(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
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

/// Handles every message of `name` with `consume_batch` until `expected` were seen, recording
/// deliveries in a ledger; panics after [`LONG`].
async fn drain_into(
    q: &dyn MessageQueue,
    name: &crate::QueueName,
    expected: usize,
) -> Arc<DeliveryLedger> {
    let (ledger, _, h) = ledgered();
    let opts = fast_options().batch_size(100);
    wait_until(LONG, &format!("{expected} messages drained"), || {
        let (h, opts, ledger) = (h.clone(), &opts, &ledger);
        async move {
            let _report = q.consume_batch(name, h, opts).await.expect("consume_batch");
            ledger.distinct() >= expected
        }
    })
    .await;
    ledger
}

/// A payload nested 200 levels deep among 200 good messages is refused at publish, alone, with
/// its reason; every good message is handled once, at its first attempt.
pub async fn too_deep_payload_is_refused_alone(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
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
    let (ledger, first, h) = ledgered();
    consume_until(
        &*q,
        &name,
        h,
        fast_options().batch_size(10),
        "200 good messages handled",
        || ledger.distinct() == 200,
    )
    .await;
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
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
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
