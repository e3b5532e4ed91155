//! Conformance cases for the queue controls: priorities, unique keys, cancel, pause and resume.
//! A backend that supports them stamps these with [`queue_control_tests!`](crate::queue_control_tests).

use std::sync::Arc;
use std::time::Duration;

use super::support::{LONG, msg, publish_all, setup};
use super::{QueueFactory, eventually, fast_options};
use crate::control::{CancelOutcome, CancelTarget};
use crate::error::Error;
use crate::handler::{Batch, HandlerContext, Outcomes, handler_fn};
use crate::message::Status;
use crate::options::CommonOptions;
use crate::queue::MessageQueue;

/// The `n` payload field of each message `consume_batch` hands out, in order.
async fn take(q: &dyn MessageQueue, name: &crate::QueueName, n: usize) -> Vec<u64> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = Arc::new(handler_fn(move |batch: Batch, _c: HandlerContext| {
        let s = s.clone();
        async move {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            s.extend(batch.iter().filter_map(|m| m.payload["n"].as_u64()));
        }
    }));
    let report = q
        .consume_batch(name, h, &fast_options().batch_size(n))
        .await
        .expect("consume_batch");
    assert_eq!(report.acked, report.delivered);
    seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Higher priorities are claimed first; within a priority, publication order.
pub async fn priorities_are_claimed_higher_first(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    let mut batch = Vec::new();
    batch.extend((0..5).map(msg));
    batch.extend((10..15).map(|i| msg(i).priority(5)));
    batch.extend((20..25).map(|i| msg(i).priority(-3)));
    batch.extend((30..35).map(|i| msg(i).priority(5)));
    publish_all(&*q, &name, batch).await;
    assert_eq!(
        take(&*q, &name, 10).await,
        [10, 11, 12, 13, 14, 30, 31, 32, 33, 34]
    );
    assert_eq!(take(&*q, &name, 5).await, [0, 1, 2, 3, 4]);
    assert_eq!(take(&*q, &name, 10).await, [20, 21, 22, 23, 24]);
    q.shutdown().await.expect("shutdown");
}

/// A unique key refuses a second message while the first waits or runs, names the holder, and
/// is free again once the holder finished (or once its window passed).
pub async fn unique_keys_refuse_while_held(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    let first = q
        .publish(&name, vec![msg(1).unique_key("invoice-1")])
        .await
        .expect("publish")
        .into_result()
        .expect("stored");
    let report = q
        .publish(
            &name,
            vec![
                msg(2).unique_key("invoice-1"),
                msg(3).unique_key("invoice-2"),
                msg(4).unique_key("invoice-2"),
                msg(5).unique_key("invoice-3").unique_window(LONG),
            ],
        )
        .await
        .expect("publish");
    let refused: Vec<usize> = report.failed.iter().map(|f| f.index).collect();
    assert_eq!(refused, [0, 2], "{:?}", report.failed);
    match &report.failed[0].error {
        Error::DuplicateKey { key, holder, .. } => {
            assert_eq!(key, "invoice-1");
            assert_eq!(holder, &first[0]);
        }
        other => panic!("expected DuplicateKey, got {other}"),
    }
    // Everything runs and finishes: invoice-1 and invoice-2 are free again, invoice-3 blocks
    // for its window.
    let done = take(&*q, &name, 10).await;
    assert_eq!(done.len(), 3, "{done:?}");
    let again = q
        .publish(
            &name,
            vec![
                msg(6).unique_key("invoice-1"),
                msg(7).unique_key("invoice-3"),
            ],
        )
        .await
        .expect("publish");
    let refused: Vec<usize> = again.failed.iter().map(|f| f.index).collect();
    assert_eq!(refused, [1], "{:?}", again.failed);
    q.shutdown().await.expect("shutdown");
}

/// Cancel by id or by unique key: a waiting message is never delivered; a running one has its
/// token cancelled and its completion refused, and is not delivered again.
pub async fn cancel_waiting_and_running(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    let later = Duration::from_secs(3600);
    let ids = q
        .publish(
            &name,
            vec![
                msg(1).delay(later),
                msg(2).delay(later).unique_key("nightly"),
                msg(3),
            ],
        )
        .await
        .expect("publish")
        .into_result()
        .expect("stored");
    assert_eq!(
        q.cancel(&name, CancelTarget::Id(ids[0].clone()))
            .await
            .expect("cancel"),
        CancelOutcome::Cancelled(ids[0].clone())
    );
    assert_eq!(
        q.cancel(&name, CancelTarget::UniqueKey("nightly".into()))
            .await
            .expect("cancel"),
        CancelOutcome::Cancelled(ids[1].clone())
    );
    assert_eq!(
        q.cancel(&name, CancelTarget::UniqueKey("nope".into()))
            .await
            .expect("cancel"),
        CancelOutcome::NotFound
    );
    // The cancelled key is free again.
    q.publish(&name, vec![msg(4).delay(later).unique_key("nightly")])
        .await
        .expect("publish")
        .into_result()
        .expect("the key is free after a cancel");

    // Message 3 runs; cancelling it stops the handler and nothing runs it again.
    let started = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s, st, r) = (started.clone(), stopped.clone(), runs.clone());
    let h = Arc::new(handler_fn(move |_b: Batch, ctx: HandlerContext| {
        let (s, st, r) = (s.clone(), st.clone(), r.clone());
        async move {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            s.notify_one();
            ctx.cancelled().await;
            st.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Outcomes::ack_all()
        }
    }));
    let options = fast_options().lease_duration(Duration::from_millis(600));
    let c = q.consume(&name, h, options).await.expect("consume");
    tokio::time::timeout(LONG, started.notified())
        .await
        .expect("message 3 running");
    assert_eq!(
        q.cancel(&name, CancelTarget::Id(ids[2].clone()))
            .await
            .expect("cancel"),
        CancelOutcome::CancelledRunning(ids[2].clone())
    );
    eventually(LONG, "the running handler cancelled", || {
        stopped.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    c.stop().await;
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    if let Some(store) = f.store(test).await {
        let stats = store.queue_stats(Some(&name)).await.expect("stats");
        assert_eq!(stats[0].count(Status::Cancelled), 3, "{stats:?}");
        assert_eq!(stats[0].count(Status::Executed), 0, "{stats:?}");
    }
    q.shutdown().await.expect("shutdown");
}

/// A paused queue hands out nothing until it is resumed; publishing still works.
pub async fn pause_stops_claims_until_resume(f: &dyn QueueFactory, test: &str) {
    let (q, name) = or_skip!(setup(f, test, CommonOptions::default()).await);
    assert!(!q.is_paused(&name).await.expect("is_paused"));
    q.pause(&name).await.expect("pause");
    assert!(q.is_paused(&name).await.expect("is_paused"));
    q.publish(&name, (0..5).map(msg).collect())
        .await
        .expect("publish while paused")
        .into_result()
        .expect("stored");
    assert!(
        take(&*q, &name, 10).await.is_empty(),
        "claimed while paused"
    );
    q.resume(&name).await.expect("resume");
    assert!(!q.is_paused(&name).await.expect("is_paused"));
    assert_eq!(take(&*q, &name, 10).await, [0, 1, 2, 3, 4]);
    q.shutdown().await.expect("shutdown");
}

/// Stamps one `#[tokio::test]` per queue-control case for a backend that supports priorities,
/// unique keys, cancel and pause.
#[macro_export]
macro_rules! queue_control_tests {
    ($factory:expr) => {
        $crate::__stamp_cases!($factory; control;
            priorities_are_claimed_higher_first,
            unique_keys_refuse_while_held,
            cancel_waiting_and_running,
            pause_stops_claims_until_resume
        );
    };
}
