//! `cargo xtask bench mongo`: messages published, claimed and acked through `MongoQueue`, beside
//! a bare `find_one_and_update` claim loop (+ `update_one` ack) on the same server, in one run.
//!
//! Reads `MONGODB_URI`; `BENCH_N` (default 5,000: on SecantusDB the bare one-by-one baseline
//! claims ~40 msg/s, so 50,000 would take ~20 min; use `BENCH_N=50000` on a real MongoDB) messages, `BENCH_BATCH` (default 500) per
//! publish and per claim, `BENCH_WORKERS` (default 2) claim loops on each side. Prints messages/s
//! of each phase and the ratio of the queue's end-to-end rate to the baseline's, then the
//! targets, one a line: `target <what>: <measured> <unit> (goal <= or >= <limit>) met|NOT met`.
//! `BENCH_STRATEGY=all` also runs the queue with `ClaimStrategy::FindOneAndUpdate` (slow).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::ReturnDocument;
use mq_bench_report::{Goal, target};
use mq_core::{
    Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn,
};
use mq_mongo::{ClaimStrategy, MongoOptions, MongoQueue};
use serde_json::json;

/// The queue's end-to-end rate over the bare loop's, at least: batch claims must pay for the
/// lease bookkeeping.
const MIN_RATIO: f64 = 1.0;

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

struct Run {
    publish: Duration,
    consume: Duration,
}

async fn through_queue(
    url: &str,
    n: usize,
    batch: usize,
    workers: usize,
    strategy: ClaimStrategy,
) -> anyhow::Result<Run> {
    let db = "mq_bench";
    let client = mongodb::Client::with_uri_str(url).await?;
    client.database(db).drop().await?;
    let queue = MongoQueue::from_client(
        client,
        MongoOptions::default()
            .database(db)
            .claim_strategy(strategy),
    )
    .await?;
    let q = QueueName::new("bench")?;
    queue.register(&q).await?;
    let started = Instant::now();
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let report = queue
            .publish(
                &q,
                (start..end)
                    .map(|i| NewMessage::new("bench", json!({ "n": i })))
                    .collect(),
            )
            .await?;
        anyhow::ensure!(
            report.is_complete(),
            "publish refused messages: {:?}",
            report.failed
        );
    }
    let publish = started.elapsed();
    let seen = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    let s = seen.clone();
    let handler = handler_fn(move |b: Batch, _ctx: HandlerContext| {
        let (s, done) = (s.clone(), done_tx.clone());
        async move {
            if s.fetch_add(b.len(), Ordering::Relaxed) + b.len() >= n
                && let Some(tx) = done.lock().ok().and_then(|mut d| d.take())
            {
                let _ = tx.send(());
            }
        }
    });
    let options = ConsumerOptions::default()
        .batch_size(batch)
        .concurrency(workers)
        .poll_interval(Duration::from_millis(1))
        .max_poll_interval(Duration::from_millis(5));
    let started = Instant::now();
    let consumer = queue.consume(&q, Arc::new(handler), options).await?;
    done_rx.await?;
    let consume = started.elapsed();
    consumer.stop().await;
    let stats = queue.queue_stats(Some(&q)).await?;
    anyhow::ensure!(
        stats[0].count(mq_core::Status::Executed) == n as u64,
        "not all acked: {stats:?}"
    );
    queue.shutdown().await?;
    Ok(Run { publish, consume })
}

async fn bare_loop(url: &str, n: usize, batch: usize, workers: usize) -> anyhow::Result<Run> {
    let client = mongodb::Client::with_uri_str(url).await?;
    let db = client.database("mq_bench_bare");
    db.drop().await?;
    let coll = db.collection::<Document>("jobs");
    coll.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! { "queue": 1, "status": 1, "execute_at": 1 })
            .build(),
    )
    .await?;
    let now = mongodb::bson::DateTime::now();
    let started = Instant::now();
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let docs: Vec<Document> = (start..end)
            .map(|i| doc! {
                "_id": format!("m{i:08}"), "queue": "bench", "type": "bench", "payload": { "n": i as i64 },
                "status": "scheduled", "execute_at": now, "created_at": now, "attempts": 0_i64,
            })
            .collect();
        coll.insert_many(docs).ordered(false).await?;
    }
    let publish = started.elapsed();
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (coll, done) = (coll.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("bare-{w}");
            loop {
                let now = mongodb::bson::DateTime::now();
                let lease = mongodb::bson::DateTime::from_millis(now.timestamp_millis() + 30_000);
                let claimed = coll
                    .find_one_and_update(
                        doc! { "queue": "bench", "status": "scheduled", "execute_at": { "$lte": now } },
                        doc! { "$set": { "status": "processing", "lease_owner": &owner, "lease_expires_at": lease },
                               "$inc": { "attempts": 1_i64 } },
                    )
                    .sort(doc! { "execute_at": 1, "created_at": 1 })
                    .return_document(ReturnDocument::After)
                    .await?;
                let Some(d) = claimed else { break };
                let id = d.get("_id").cloned().context("claimed document without _id")?;
                coll.update_one(
                    doc! { "_id": id, "status": "processing", "lease_owner": &owner },
                    doc! { "$set": { "status": "executed" }, "$unset": { "lease_owner": "", "lease_expires_at": "" } },
                )
                .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let consume = started.elapsed();
    let executed = coll.count_documents(doc! { "status": "executed" }).await?;
    anyhow::ensure!(
        executed == n as u64 && done.load(Ordering::Relaxed) == n,
        "bare loop acked {executed} of {n}"
    );
    let _: Vec<Document> = coll.find(doc! {}).limit(1).await?.try_collect().await?;
    Ok(Run { publish, consume })
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn print(label: &str, n: usize, r: &Run) -> f64 {
    let total = r.publish + r.consume;
    println!(
        "{label:<34} publish {:>9.0} msg/s | claim+ack {:>8.0} msg/s | end-to-end {:>8.0} msg/s ({total:.1?})",
        rate(n, r.publish),
        rate(n, r.consume),
        rate(n, total)
    );
    rate(n, total)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("MONGODB_URI").context(
        "MONGODB_URI is not set: run `cargo xtask services up` and export what it prints",
    )?;
    let n = env_usize("BENCH_N", 5_000)?;
    let batch = env_usize("BENCH_BATCH", 500)?;
    let workers = env_usize("BENCH_WORKERS", 2)?;
    println!("mq-mongo bench: {n} messages, batches of {batch}, {workers} claim loops per side");
    let mut rates = Vec::new();
    let strategies: Vec<(&str, ClaimStrategy)> = match std::env::var("BENCH_STRATEGY").as_deref() {
        Ok("one") => vec![(
            "MongoQueue (find_one_and_update)",
            ClaimStrategy::FindOneAndUpdate,
        )],
        Ok("all") => vec![
            ("MongoQueue (batch claim)", ClaimStrategy::Batch),
            (
                "MongoQueue (find_one_and_update)",
                ClaimStrategy::FindOneAndUpdate,
            ),
        ],
        _ => vec![("MongoQueue (batch claim)", ClaimStrategy::Batch)],
    };
    for (label, strategy) in strategies {
        let r = through_queue(&url, n, batch, workers, strategy).await?;
        rates.push((label, print(label, n, &r)));
    }
    let bare = bare_loop(&url, n, batch, workers).await?;
    let base = print("bare find_one_and_update loop", n, &bare);
    for (label, r) in rates {
        println!("ratio {label} / bare loop (end-to-end): {:.2}x", r / base);
        target(
            &format!("{label} / bare loop, end-to-end"),
            r / base,
            "x",
            Goal::AtLeast(MIN_RATIO),
        );
    }
    Ok(())
}
