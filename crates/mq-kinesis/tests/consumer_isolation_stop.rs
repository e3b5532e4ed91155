//! A stop while a failed batch is handed to the handler one message at a time: each message
//! done alone was checkpointed before the next one started, so the restarted consumer resumes
//! after the last one done and runs none of them again.

#[path = "common/emulator.rs"]
mod emulator;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emulator::Emulator;
use mq_core::testkit::{RecordingDeadLetters, eventually, fast_options};
use mq_core::{Batch, HandlerContext, MessageQueue, QueueName, RetryPolicy, handler_fn};
use mq_kinesis::{InMemoryLeaseStore, KinesisOptions, KinesisQueue};

const POISON: u64 = 15;
/// The test stops the consumer while this message is handled alone.
const STOP_AT: u64 = 8;

#[derive(Clone, Default)]
struct Runs {
    /// 0 before the stop, 1 after the restart.
    phase: Arc<AtomicUsize>,
    /// Runs per message, per phase.
    runs: Arc<Mutex<[BTreeMap<u64, usize>; 2]>>,
    /// Messages the handler acked alone before the stop.
    done_alone: Arc<Mutex<BTreeSet<u64>>>,
    /// Good messages handled (acked) in either phase.
    handled: Arc<Mutex<BTreeSet<u64>>>,
    reached: Arc<AtomicBool>,
}

impl Runs {
    fn handler(&self) -> Arc<dyn mq_core::Handler> {
        let runs = self.clone();
        Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
            let runs = runs.clone();
            async move {
                let phase = runs.phase.load(Ordering::SeqCst);
                let ids: Vec<u64> = batch
                    .iter()
                    .map(|m| m.payload["i"].as_u64().unwrap_or(u64::MAX))
                    .collect();
                for i in &ids {
                    *runs.runs.lock().unwrap()[phase].entry(*i).or_default() += 1;
                }
                if ids.contains(&POISON) {
                    return Err(std::io::Error::other("the poison message is in the batch"));
                }
                if phase == 0 && ids.len() == 1 {
                    runs.done_alone.lock().unwrap().insert(ids[0]);
                    if ids[0] == STOP_AT {
                        runs.reached.store(true, Ordering::SeqCst);
                    }
                    // slow enough for the stop to land between two messages
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                runs.handled.lock().unwrap().extend(ids);
                Ok(())
            }
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_isolating_resumes_after_the_last_message_done() {
    let stream = "isolate-stop";
    let emu = Emulator::with_stream(stream, 1).await;
    let dead = Arc::new(RecordingDeadLetters::default());
    let queue = KinesisQueue::with_client(
        emu.client(),
        KinesisOptions::new(Arc::new(InMemoryLeaseStore::new()))
            .common(mq_core::CommonOptions::default().dead_letters(dead.clone()))
            .discovery_interval(Duration::from_millis(100)),
    );
    let q = QueueName::new(stream).unwrap();
    queue.register(&q).await.unwrap();
    emulator::publish_all(&queue, &q, emulator::numbered(20)).await;
    let opts = fast_options().batch_size(100).retry(
        RetryPolicy::default()
            .max_attempts(3)
            .base_delay(Duration::from_millis(20))
            .jitter(0.0),
    );

    let runs = Runs::default();
    let consumer = queue
        .consume(&q, runs.handler(), opts.clone())
        .await
        .unwrap();
    let r = runs.clone();
    eventually(
        Duration::from_secs(30),
        "message 8 handled alone",
        move || r.reached.load(Ordering::SeqCst),
    )
    .await;
    consumer.stop().await;
    runs.phase.store(1, Ordering::SeqCst);
    let done_alone = runs.done_alone.lock().unwrap().clone();

    let consumer = queue.consume(&q, runs.handler(), opts).await.unwrap();
    let (r, d) = (runs.clone(), dead.clone());
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        eventually(
            Duration::from_secs(30),
            "19 handled, 1 dead-lettered",
            move || r.handled.lock().unwrap().len() == 19 && !d.is_empty(),
        ),
    )
    .await;
    consumer.stop().await;

    let after = runs.runs.lock().unwrap()[1].clone();
    let re_runs: usize = done_alone
        .iter()
        .map(|i| after.get(i).copied().unwrap_or(0))
        .sum();
    let dead_ids: Vec<u64> = dead
        .letters()
        .iter()
        .map(|l| l.message.payload["i"].as_u64().unwrap_or(u64::MAX))
        .collect();
    println!(
        "done alone before the stop {done_alone:?}; runs of those after the restart {re_runs}; runs after the restart {}; handled {} of 19; dead-lettered {dead_ids:?}",
        after.values().sum::<usize>(),
        runs.handled.lock().unwrap().len(),
    );
    assert!(done_alone.contains(&STOP_AT));
    assert_eq!(re_runs, 0, "no message done alone ran again");
    assert_eq!(runs.handled.lock().unwrap().len(), 19);
    assert_eq!(dead_ids, vec![POISON]);
    queue.shutdown().await.unwrap();
}
