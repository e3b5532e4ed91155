//! A lease blip is not the record's fault: a lease store whose renewals fail (three in a row,
//! so the lease is lost while the handler runs) and then recover, three times over the same
//! batch, leaves nothing in the dead letters; every record is handled once the store is back.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/flaky_store.rs"]
mod flaky_store;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emulator::Emulator;
use flaky_store::FlakyStore;
use mq_core::testkit::{RecordingDeadLetters, RecordingObserver, eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, handler_fn};
use mq_kinesis::{KinesisQueue, ShardOptions};

/// Lease losses caused while the batch holding record 0 runs.
const BLIPS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_that_fail_then_recover_dead_letter_nothing() {
    let stream = "lease-blip";
    let emu = Emulator::with_stream(stream, 1).await;
    let store = Arc::new(FlakyStore::default());
    let dead = Arc::new(RecordingDeadLetters::default());
    let obs = Arc::new(RecordingObserver::default());
    let renew_attempts = 3;
    let queue = KinesisQueue::with_client(
        emu.client(),
        emulator::observed_options(store.clone(), "a", &obs)
            .common(emulator::observed(&obs).dead_letters(dead.clone()))
            .shard(
                ShardOptions::default()
                    .poison_threshold(3)
                    .renew_attempts(renew_attempts),
            ),
    );
    let q = emulator::register_and_publish(&queue, stream, 20).await;

    let blips = Arc::new(AtomicUsize::new(0));
    let runs: Arc<Mutex<BTreeMap<u64, usize>>> = Arc::default();
    let handled: Arc<Mutex<BTreeMap<u64, usize>>> = Arc::default();
    let handler = {
        let (store, blips, runs, handled) =
            (store.clone(), blips.clone(), runs.clone(), handled.clone());
        Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
            let (store, blips, runs, handled) =
                (store.clone(), blips.clone(), runs.clone(), handled.clone());
            async move {
                let ids: Vec<u64> = batch
                    .iter()
                    .map(|m| m.payload["i"].as_u64().unwrap_or(u64::MAX))
                    .collect();
                for i in &ids {
                    *runs.lock().unwrap().entry(*i).or_default() += 1;
                }
                if ids.contains(&0) && blips.load(Ordering::SeqCst) < BLIPS {
                    // the lease store fails every renewal attempt once, then recovers; the lease
                    // is lost meanwhile and the handler's token cancelled
                    blips.fetch_add(1, Ordering::SeqCst);
                    store.renew.fail(renew_attempts as usize);
                    let _ = tokio::time::timeout(Duration::from_secs(10), ctx.cancelled()).await;
                    return Err(std::io::Error::other("lease lost under the handler"));
                }
                for i in ids {
                    *handled.lock().unwrap().entry(i).or_default() += 1;
                }
                Ok(())
            }
        }))
    };
    let consumer = queue
        .consume(
            &q,
            handler,
            fast_options().lease_duration(Duration::from_millis(600)),
        )
        .await
        .unwrap();
    let (h, d) = (handled.clone(), dead.clone());
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        eventually(Duration::from_secs(60), "all 20 handled", move || {
            h.lock().unwrap().len() == 20 || !d.is_empty()
        }),
    )
    .await;
    consumer.stop().await;
    let record_0 = runs.lock().unwrap().get(&0).copied().unwrap_or(0);
    println!(
        "blips {}, failed renewals {}, leases lost {}, runs of record 0 {record_0}, handled {} of 20, dead-lettered {}, poison pills {}",
        blips.load(Ordering::SeqCst),
        store.renew.failed.load(Ordering::SeqCst),
        obs.count("lease_lost"),
        handled.lock().unwrap().len(),
        dead.len(),
        obs.count("poison_pill"),
    );
    assert_eq!(blips.load(Ordering::SeqCst), BLIPS);
    assert!(obs.count("lease_lost") >= BLIPS, "each blip lost the lease");
    assert_eq!(dead.len(), 0, "no good record dead-lettered");
    assert_eq!(obs.count("poison_pill"), 0);
    assert_eq!(handled.lock().unwrap().len(), 20);
    queue.shutdown().await.unwrap();
}
