//! A fleet of consumer instances for the coordination tests: each one a separate runtime thread
//! with its own Kinesis client and lease store, a log of every batch handled (which instance,
//! which shard, when), and a steady publisher.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mq_core::{
    Batch, ConsumerOptions, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn,
};
use mq_kinesis::{KinesisQueue, LeaseStore};

/// One batch as a handler saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub instance: String,
    pub shard: String,
    pub start: Instant,
    pub end: Instant,
    /// (message id, key, n) of every message
    pub messages: Vec<(String, String, u64)>,
}

/// Every batch handled by any instance of the fleet.
#[derive(Debug, Clone, Default)]
pub struct Log {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    /// set to make the handlers of this instance hang (ignoring cancellation) on their next batch
    pub stuck: Arc<Mutex<HashSet<String>>>,
    handler_delay_ms: Arc<AtomicU64>,
}

impl Log {
    /// A handler for `instance` that records its batches.
    pub fn handler(&self, instance: &str) -> Arc<dyn mq_core::Handler> {
        let (log, instance) = (self.clone(), instance.to_owned());
        Arc::new(handler_fn(move |batch: Batch, ctx: HandlerContext| {
            let (log, instance) = (log.clone(), instance.clone());
            async move {
                let start = Instant::now();
                let stuck = log.stuck.lock().unwrap().contains(&instance);
                if stuck {
                    // a handler that ignores its cancellation token
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let delay = log.handler_delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let messages = batch
                    .iter()
                    .map(|m| {
                        (
                            m.id.to_string(),
                            m.payload["key"].as_str().unwrap_or_default().to_owned(),
                            m.payload["n"].as_u64().unwrap_or_default(),
                        )
                    })
                    .collect();
                log.deliveries.lock().unwrap().push(Delivery {
                    instance,
                    shard: ctx.shard_id().unwrap_or_default().to_owned(),
                    start,
                    end: Instant::now(),
                    messages,
                });
            }
        }))
    }

    pub fn set_handler_delay(&self, d: Duration) {
        self.handler_delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Distinct message ids delivered.
    pub fn distinct(&self) -> usize {
        let d = self.deliveries.lock().unwrap();
        d.iter()
            .flat_map(|b| b.messages.iter().map(|m| m.0.as_str()))
            .collect::<HashSet<_>>()
            .len()
    }

    /// Deliveries beyond the first of each message.
    pub fn duplicates(&self) -> usize {
        let d = self.deliveries.lock().unwrap();
        let total: usize = d.iter().map(|b| b.messages.len()).sum();
        let distinct = d
            .iter()
            .flat_map(|b| b.messages.iter().map(|m| m.0.as_str()))
            .collect::<HashSet<_>>()
            .len();
        total - distinct
    }

    pub fn max_batch(&self) -> usize {
        let d = self.deliveries.lock().unwrap();
        d.iter().map(|b| b.messages.len()).max().unwrap_or(0)
    }

    /// Keys whose first deliveries did not come in publishing order (a redelivery of a message
    /// already seen does not count: delivery is at least once).
    pub fn order_violations(&self) -> Vec<String> {
        let mut d = self.deliveries();
        d.sort_by_key(|b| b.start);
        let mut seen: HashSet<String> = HashSet::new();
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut bad = Vec::new();
        for b in &d {
            for (id, key, n) in &b.messages {
                if !seen.insert(id.clone()) {
                    continue;
                }
                if let Some(prev) = last.insert(key.clone(), *n)
                    && prev > *n
                {
                    bad.push(format!("{key}: {n} after {prev}"));
                }
            }
        }
        bad
    }

    /// The pairs counted by [`overlaps`](Self::overlaps).
    pub fn overlapping_pairs(&self) -> Vec<(Delivery, Delivery)> {
        let d = self.deliveries();
        let mut out = Vec::new();
        for (i, a) in d.iter().enumerate() {
            for b in &d[i + 1..] {
                if a.shard == b.shard
                    && a.instance != b.instance
                    && a.start < b.end
                    && b.start < a.end
                {
                    out.push((a.clone(), b.clone()));
                }
            }
        }
        out
    }

    /// Pairs of batches of one shard handled by two instances at overlapping times.
    pub fn overlaps(&self) -> usize {
        let d = self.deliveries();
        let mut by_shard: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
        for b in &d {
            by_shard.entry(b.shard.as_str()).or_default().push(b);
        }
        let mut n = 0;
        for batches in by_shard.values() {
            for (i, a) in batches.iter().enumerate() {
                for b in &batches[i + 1..] {
                    if a.instance != b.instance && a.start < b.end && b.start < a.end {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// The longest time between two batches of one shard that start in `[from, to]`, per shard.
    pub fn longest_gaps(&self, from: Instant, to: Instant) -> BTreeMap<String, Duration> {
        let d = self.deliveries();
        let mut by_shard: BTreeMap<String, Vec<(Instant, Instant)>> = BTreeMap::new();
        for b in &d {
            by_shard
                .entry(b.shard.clone())
                .or_default()
                .push((b.start, b.end));
        }
        by_shard
            .into_iter()
            .map(|(shard, mut v)| {
                v.sort();
                let mut gap = Duration::ZERO;
                for w in v.windows(2) {
                    if w[1].0 >= from && w[0].0 <= to {
                        gap = gap.max(w[1].0.saturating_duration_since(w[0].1));
                    }
                }
                (shard, gap)
            })
            .collect()
    }

    /// The first batch of `shard` that starts after `at`, by any instance but `not`.
    pub fn first_after(&self, shard: &str, at: Instant, not: &str) -> Option<Instant> {
        self.deliveries()
            .iter()
            .filter(|b| b.shard == shard && b.start >= at && b.instance != not)
            .map(|b| b.start)
            .min()
    }
}

/// Live leases per owner (owner → shards), as the lease store says.
pub async fn owners(store: &dyn LeaseStore, stream: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Ok(leases) = store.leases(stream).await {
        for l in leases {
            if l.live
                && let Some(o) = l.owner
            {
                out.entry(o).or_default().push(l.shard);
            }
        }
    }
    out
}

/// Shard counts of the live owners, largest first.
pub fn counts(owners: &BTreeMap<String, Vec<String>>) -> Vec<usize> {
    let mut c: Vec<usize> = owners.values().map(Vec::len).collect();
    c.sort_unstable_by(|a, b| b.cmp(a));
    c
}

/// Polls the owners every 10 ms until `cond` holds; the time it took, or panics after `timeout`.
pub async fn wait_owners(
    store: &dyn LeaseStore,
    stream: &str,
    timeout: Duration,
    what: &str,
    cond: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let o = owners(store, stream).await;
        if cond(&o) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}; owners now {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes `per_tick` messages every `tick` on `keys` keys (payload `{key, n}` with `n`
/// rising per key) until stopped; counts what it published.
pub struct Publisher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Publisher {
    /// Registers `q` on a publishing-only queue over `client` and starts publishing to it.
    pub async fn start(
        client: aws_sdk_kinesis::Client,
        q: &QueueName,
        keys: u64,
        per_tick: u64,
        tick: Duration,
    ) -> Self {
        let queue = publisher_queue(client, q).await;
        let q = q.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                let msgs: Vec<NewMessage> = (i..i + per_tick)
                    .map(|j| {
                        let key = format!("k{}", j % keys);
                        NewMessage::new("t", serde_json::json!({"key": key, "n": j / keys}))
                            .partition_key(key)
                    })
                    .collect();
                let report = queue.publish(&q, msgs).await.expect("publish");
                assert!(report.is_complete(), "{:?}", report.failed.first());
                i += per_tick;
                tokio::time::sleep(tick).await;
            }
            i
        });
        Publisher { stop, task }
    }

    /// Stops publishing; the number of messages published.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("publisher")
    }
}

/// Consumer options of the fleet tests: fast polling, a 5 s lease, a short grace.
pub fn fleet_options() -> ConsumerOptions {
    mq_core::testkit::fast_options().shutdown_grace(Duration::from_secs(2))
}

/// Waits until every one of `published` messages was delivered, or panics after `timeout`.
pub async fn wait_all(log: &Log, published: u64, timeout: Duration) {
    let log = log.clone();
    mq_core::testkit::eventually(timeout, "every published message delivered", move || {
        log.distinct() as u64 >= published
    })
    .await;
}

/// The publishing side of the fleet: a queue that only publishes.
pub async fn publisher_queue(client: aws_sdk_kinesis::Client, q: &QueueName) -> KinesisQueue {
    let queue = KinesisQueue::with_client(
        client,
        mq_kinesis::KinesisOptions::new(Arc::new(mq_kinesis::InMemoryLeaseStore::new()))
            .instance_id("publisher"),
    );
    queue.register(q).await.expect("register");
    queue
}
