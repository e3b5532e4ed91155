//! Many consumers with their own clients on one queue: no double claims, nothing lost when a
//! consumer dies mid-batch (needs `MONGODB_URI`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "common/mongo.rs"]
mod common;

use mq_core::testkit::{DeliveryLedger, eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, NewMessage, QueueName, Status, handler_fn};
use mq_mongo::MongoQueue;
use serde_json::json;

use common::{another_queue, registered_queue};

/// Messages the four clients share.
const FOUR_CLIENTS_N: usize = 10_000;
/// Messages of the killed-consumer test (the victim holds 200).
const KILLED_N: usize = 300;

/// The number of executed messages of `name`.
async fn executed(q: &MongoQueue, name: &QueueName) -> u64 {
    let stats = q.queue_stats(Some(name)).await.expect("stats");
    stats[0].count(Status::Executed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clients_ten_thousand_messages_no_double_claim() {
    const TEST: &str = "four_clients_ten_thousand_messages_no_double_claim";
    let Some((url, publisher, name)) = registered_queue(TEST).await else {
        return;
    };
    let ledger = Arc::new(DeliveryLedger::default());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, name, ledger) = (url.clone(), name.clone(), ledger.clone());
        // Each consumer in its own task with its own client.
        tasks.push(tokio::spawn(async move {
            let q = another_queue(&url, TEST).await;
            q.register(&name).await.expect("register");
            let c = q
                .consume(
                    &name,
                    ledger.handler(),
                    fast_options()
                        .batch_size(100)
                        .concurrency(2)
                        .lease_duration(Duration::from_secs(120)),
                )
                .await
                .expect("consume");
            (q, c)
        }));
    }
    let mut consumers = Vec::new();
    for t in tasks {
        consumers.push(t.await.expect("consumer task"));
    }
    let started = Instant::now();
    for chunk in (0..FOUR_CLIENTS_N).collect::<Vec<_>>().chunks(1000) {
        let r = publisher
            .publish(
                &name,
                chunk
                    .iter()
                    .map(|i| NewMessage::new("t", json!({ "n": i })))
                    .collect(),
            )
            .await
            .expect("publish");
        assert!(r.is_complete(), "{:?}", r.failed);
    }
    eventually(Duration::from_secs(600), "all 10,000 delivered", || {
        ledger.distinct() == FOUR_CLIENTS_N
    })
    .await;
    let took = started.elapsed();
    for (q, c) in consumers {
        c.stop().await;
        q.shutdown().await.expect("shutdown");
    }
    eprintln!(
        "{TEST}: {} distinct, {} duplicates, {} overlaps in {took:?} ({:.0} msg/s)",
        ledger.distinct(),
        ledger.duplicates(),
        ledger.overlaps(),
        FOUR_CLIENTS_N as f64 / took.as_secs_f64()
    );
    ledger.assert_each_delivered_once();
    assert_eq!(executed(&publisher, &name).await, FOUR_CLIENTS_N as u64);
    publisher.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_batch_loses_nothing() {
    const TEST: &str = "consumer_killed_mid_batch_loses_nothing";
    let Some((url, publisher, name)) = registered_queue(TEST).await else {
        return;
    };
    let r = publisher
        .publish(
            &name,
            (0..KILLED_N)
                .map(|i| NewMessage::new("t", json!({ "n": i })))
                .collect(),
        )
        .await
        .expect("publish");
    assert!(r.is_complete());

    // The victim claims a batch of 200 with a 2 s lease and never finishes it.
    let lease = Duration::from_secs(2);
    let victim = another_queue(&url, TEST).await;
    victim.register(&name).await.expect("register");
    let held = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let h2 = held.clone();
    let stuck = handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let (h2, tx) = (h2.clone(), tx.clone());
        async move {
            h2.lock()
                .unwrap()
                .extend(batch.iter().map(|m| m.id.to_string()));
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(Instant::now());
            }
            std::future::pending::<()>().await;
        }
    });
    // The claim happens after this instant, so its lease ends after `asked + lease`.
    let asked = Instant::now();
    let vq = victim.clone();
    let vname = name.clone();
    let task = tokio::spawn(async move {
        let opts = fast_options().batch_size(200).lease_duration(lease);
        let _ = vq.consume_batch(&vname, Arc::new(stuck), &opts).await;
    });
    let _handler_started = rx.await.expect("victim got a batch");
    task.abort(); // killed mid-batch: no completion, no more renewals
    let _ = task.await;
    drop(victim);
    let victim_ids = held.lock().unwrap().clone();
    assert_eq!(victim_ids.len(), 200);

    // A survivor on its own client takes everything, the victim's batch after its lease.
    let survivor = another_queue(&url, TEST).await;
    survivor.register(&name).await.expect("register");
    let ledger = Arc::new(DeliveryLedger::default());
    let early = Arc::new(AtomicUsize::new(0));
    let victims: Arc<std::collections::HashSet<String>> =
        Arc::new(victim_ids.iter().cloned().collect());
    let (l, e, v) = (ledger.clone(), early.clone(), victims.clone());
    let h = handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let (l, e, v) = (l.clone(), e.clone(), v.clone());
        async move {
            for m in batch.iter() {
                l.begin(m.id.as_str());
                if v.contains(m.id.as_str()) {
                    // must wait for the lease (minus clock rounding)
                    if asked.elapsed() < lease - Duration::from_millis(50) {
                        e.fetch_add(1, Ordering::SeqCst);
                    }
                    assert_eq!(m.attempts, 2, "the killed delivery counts");
                }
                l.end(m.id.as_str());
            }
        }
    });
    let c = survivor
        .consume(&name, Arc::new(h), fast_options().batch_size(50))
        .await
        .expect("consume");
    eventually(Duration::from_secs(120), "all messages delivered", || {
        ledger.distinct() == KILLED_N
    })
    .await;
    c.stop().await;
    let lost = KILLED_N - ledger.distinct();
    eprintln!(
        "{TEST}: victim held {}, lost {lost}, duplicates {}, taken before lease expiry {}",
        victim_ids.len(),
        ledger.duplicates(),
        early.load(Ordering::SeqCst)
    );
    assert_eq!(lost, 0);
    assert_eq!(
        early.load(Ordering::SeqCst),
        0,
        "taken while the victim's lease was valid"
    );
    assert_eq!(ledger.duplicates(), 0);
    assert_eq!(executed(&survivor, &name).await, KILLED_N as u64);
    survivor.shutdown().await.expect("shutdown");
    publisher.shutdown().await.expect("shutdown");
}
