//! `RedisLeaseStore::slot_buckets`: a stream's per-shard keys spread over Redis Cluster slots,
//! with every fencing guarantee of the one-slot layout, on plain Redis (`REDIS_URL`) and on the
//! 3-node cluster of `cargo xtask services up` (`MQ_TEST_REDIS_CLUSTER_URL`).

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/redis_keys.rs"]
mod redis_keys;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mq_kinesis::testkit::{LeaseStoreFactory, stream_name};
use mq_kinesis::{CheckpointOutcome, Error, Lease, LeaseStore, RedisLeaseStore};

const LONG: Duration = Duration::from_secs(30);

fn prefix(test: &str) -> String {
    format!("mqtest-sb-{test}")
}

async fn store(url: &str, test: &str, buckets: u16) -> RedisLeaseStore {
    RedisLeaseStore::connect(url, prefix(test))
        .await
        .unwrap_or_else(|e| panic!("{test}: connect to {url}: {e}"))
        .slot_buckets(buckets)
        .unwrap()
}

fn redis_url(test: &str) -> Option<String> {
    mq_core::testkit::service_url("REDIS_URL")
        .map_err(|reason| eprintln!("skipping {test}: {reason}"))
        .ok()
}

fn cluster_url(test: &str) -> Option<String> {
    mq_core::testkit::service_url("MQ_TEST_REDIS_CLUSTER_URL")
        .map_err(|reason| eprintln!("skipping {test}: {reason}"))
        .ok()
}

/// Every key of `test` on the Redis at `url`.
fn keys_of(url: &str, test: &str) -> BTreeSet<String> {
    let out = std::process::Command::new("redis-cli")
        .args([
            "-u",
            url,
            "--scan",
            "--pattern",
            &format!("{}:*", prefix(test)),
        ])
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The lease-store conformance suite with `buckets` slot buckets on the server `var` names.
struct Buckets {
    var: &'static str,
    buckets: u16,
}

#[mq_core::async_trait]
impl LeaseStoreFactory for Buckets {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let url = match mq_core::testkit::service_url(self.var) {
            Ok(url) => url,
            Err(reason) => {
                eprintln!("skipping {test}: {reason}");
                return None;
            }
        };
        let test = format!("{test}-{}", self.buckets);
        Some(Arc::new(store(&url, &test, self.buckets).await))
    }

    async fn cleanup(&self, test: &str) {
        let Ok(url) = std::env::var(self.var) else {
            return;
        };
        let pattern = format!("{}:*", prefix(&format!("{test}-{}", self.buckets)));
        if self.var == "REDIS_URL" {
            redis_keys::delete_matching(&pattern);
        } else {
            redis_keys::delete_matching_cluster(&url, &pattern);
        }
    }
}

mod redis_16_buckets {
    mq_kinesis::lease_store_tests!(super::Buckets {
        var: "REDIS_URL",
        buckets: 16
    });
}

mod cluster_1_bucket {
    mq_kinesis::lease_store_tests!(super::Buckets {
        var: "MQ_TEST_REDIS_CLUSTER_URL",
        buckets: 1
    });
}

mod cluster_16_buckets {
    mq_kinesis::lease_store_tests!(super::Buckets {
        var: "MQ_TEST_REDIS_CLUSTER_URL",
        buckets: 16
    });
}

/// With one bucket (the default) the keys are exactly those of the layout before slot buckets
/// existed, plus the record of the layout.
#[tokio::test]
async fn one_bucket_keeps_the_key_names() {
    let test = "one-bucket-keys";
    let Some(url) = redis_url(test) else { return };
    redis_keys::delete_matching(&format!("{}:*", prefix(test)));
    let store = RedisLeaseStore::connect(&url, prefix(test)).await.unwrap();
    assert_eq!(store.get_slot_buckets(), 1);
    let s = "orders";
    store.join(s, "a", "a.1", LONG).await.unwrap();
    let lease = store
        .acquire_as_member(s, "shardId-000000000007", "a", "a.1", LONG, 0)
        .await
        .unwrap()
        .expect("free");
    store.checkpoint(&lease, "42").await.unwrap();
    store
        .record_failure(s, "shardId-000000000007", "42")
        .await
        .unwrap();
    assert!(store.lead_listing(s, "a.1", LONG).await.unwrap());
    store.publish_listing(s, "[]").await.unwrap();
    let p = prefix(test);
    let expected: BTreeSet<String> = [
        "lease:shardId-000000000007",
        "poison:shardId-000000000007",
        "shards",
        "members",
        "memberships",
        "version",
        "listing-lead",
        "listing",
        "layout",
    ]
    .iter()
    .map(|k| format!("{p}:{{orders}}:{k}"))
    .collect();
    assert_eq!(keys_of(&url, test), expected);
    redis_keys::delete_matching(&format!("{p}:*"));
}

/// A store set to another number of buckets than the stream's recorded one refuses the stream,
/// naming both numbers; so does a bucketed store on a stream used before the layout was
/// recorded.
#[tokio::test]
async fn another_layout_is_refused() {
    let test = "layout-mismatch";
    let Some(url) = redis_url(test) else { return };
    let p = prefix(test);
    redis_keys::delete_matching(&format!("{p}:*"));
    let sixteen = store(&url, test, 16).await;
    let one = store(&url, test, 1).await;
    let four = store(&url, test, 4).await;
    let s = stream_name(test);
    sixteen
        .acquire(&s, "sh-0", "a", LONG)
        .await
        .unwrap()
        .unwrap();
    for (other, n) in [(&one, 1), (&four, 4)] {
        let e = other.acquire(&s, "sh-1", "b", LONG).await.unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                e,
                Error::InvalidOption {
                    field: "slot_buckets",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            text.contains("16 slot bucket(s)") && text.contains(&format!("set to {n}")),
            "{text}"
        );
        assert!(other.join(&s, "b", "b.1", LONG).await.is_err());
        assert!(other.leases(&s).await.is_err());
    }
    // the refused stores wrote nothing: the owner still sees only its own lease
    assert_eq!(sixteen.leases(&s).await.unwrap().len(), 1);

    // a stream with keys from before the layout was recorded counts as one bucket
    let legacy = stream_name("legacy");
    let version = format!("{p}:{{{legacy}}}:version");
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &url, "HSET", &version, "v", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = sixteen
        .acquire(&legacy, "sh-0", "a", LONG)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("1 slot bucket(s)"), "{e}");
    assert!(
        one.acquire(&legacy, "sh-0", "a", LONG)
            .await
            .unwrap()
            .is_some()
    );
    redis_keys::delete_matching(&format!("{p}:*"));
}

#[test]
fn slot_buckets_outside_1_to_1024_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let test = "bucket-range";
        let Some(url) = redis_url(test) else { return };
        let s = RedisLeaseStore::connect(&url, prefix(test)).await.unwrap();
        for n in [0, 1025] {
            let e = s.clone().slot_buckets(n).unwrap_err();
            assert!(e.to_string().contains("slot_buckets"), "{e}");
        }
        assert_eq!(s.slot_buckets(1024).unwrap().get_slot_buckets(), 1024);
    });
}

/// A renewal counts only when every bucket's copy of the membership was renewed: one copy
/// gone makes `renew_membership` answer false.
#[tokio::test]
async fn a_renewal_missing_one_copy_is_not_a_renewal() {
    let test = "partial-renewal";
    let Some(url) = redis_url(test) else { return };
    let p = prefix(test);
    redis_keys::delete_matching(&format!("{p}:*"));
    let store = store(&url, test, 4).await;
    let s = stream_name(test);
    store.join(&s, "a", "a.1", LONG).await.unwrap();
    assert!(store.renew_membership(&s, "a", "a.1", LONG).await.unwrap());
    let copy = format!("{p}:{{{s}#2}}:memberships");
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &url, "HDEL", &copy, "a.1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert!(!store.renew_membership(&s, "a", "a.1", LONG).await.unwrap());
    redis_keys::delete_matching(&format!("{p}:*"));
}

fn keyslot(node: &str, key: &str) -> u16 {
    let (host, port) = node.rsplit_once(':').unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port, "CLUSTER", "KEYSLOT", key])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Waits up to 10 s for `cond`.
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On the 3-node cluster, 16 buckets and 64 shards taken by two instances: the lease keys land
/// in many slots on every node, and the fencing cases hold in every bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_shards_spread_over_the_cluster_and_stay_fenced() {
    let test = "spread";
    let Some(url) = cluster_url(test) else { return };
    let p = prefix(test);
    redis_keys::delete_matching_cluster(&url, &format!("{p}:*"));
    let a = store(&url, test, 16).await;
    let b = store(&url, test, 16).await;
    let s = stream_name(test);
    let shards: Vec<String> = (0..64).map(|i| format!("shardId-{i:012}")).collect();
    // a's membership lasts 3 s unless renewed; b's 30 s
    let short = Duration::from_secs(3);
    a.join(&s, "a", "a.1", short).await.unwrap();
    b.join(&s, "b", "b.1", LONG).await.unwrap();
    let mut held: Vec<Lease> = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let (st, owner, m, ttl) = if i % 2 == 0 {
            (&a, "a", "a.1", short)
        } else {
            (&b, "b", "b.1", LONG)
        };
        let l = st
            .acquire_as_member(&s, shard, owner, m, ttl, 0)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{shard} is free"));
        held.push(l);
    }
    assert_eq!(
        a.leases(&s)
            .await
            .unwrap()
            .iter()
            .filter(|l| l.live)
            .count(),
        64
    );

    // the lease keys are on every node, in many slots
    let nodes = redis_keys::cluster_nodes(&url);
    let per_node: Vec<usize> = nodes
        .iter()
        .map(|n| redis_keys::node_keys(n, &format!("{p}:*:lease:*")).len())
        .collect();
    assert_eq!(per_node.iter().sum::<usize>(), 64, "{per_node:?}");
    assert!(
        per_node.iter().all(|n| *n > 0),
        "lease keys per node: {per_node:?}"
    );
    let slots: BTreeSet<u16> = shards
        .iter()
        .map(|sh| keyslot(&nodes[0], &format!("{p}:{{{s}#{}}}:lease:{sh}", bucket(sh))))
        .collect();
    assert!(slots.len() >= 12, "slots: {slots:?}");

    // a stale epoch is refused in every bucket: b takes over three of a's released shards
    let mut stale = Vec::new();
    for l in held.iter().filter(|l| l.owner == "a").take(3) {
        assert_eq!(
            a.checkpoint(l, "100").await.unwrap(),
            CheckpointOutcome::Advanced
        );
        assert!(a.release(l).await.unwrap());
        let nb = b
            .acquire_as_member(&s, &l.shard, "b", "b.1", LONG, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(nb.epoch > l.epoch);
        assert_eq!(nb.checkpoint.as_deref(), Some("100"));
        assert!(!a.renew(l, LONG).await.unwrap());
        assert_eq!(
            a.checkpoint(l, "200").await.unwrap(),
            CheckpointOutcome::Fenced
        );
        assert!(!a.release(l).await.unwrap());
        assert!(b.renew(&nb, LONG).await.unwrap());
        stale.push(l.shard.clone());
    }

    // a stops renewing: its membership expires in every bucket and frees its leases there
    let a_shards: Vec<&Lease> = held
        .iter()
        .filter(|l| l.owner == "a" && !stale.contains(&l.shard))
        .collect();
    wait_for("a's membership never expired", || async {
        let states = b.leases(&s).await.unwrap();
        states.iter().filter(|st| st.live).count() == 64 - a_shards.len()
    })
    .await;
    assert!(!a.renew_membership(&s, "a", "a.1", short).await.unwrap());
    let mut taken = Vec::new();
    for l in &a_shards {
        assert!(!a.renew(l, LONG).await.unwrap(), "{} renewed", l.shard);
        let nb = b
            .acquire_as_member(&s, &l.shard, "b", "b.1", LONG, 0)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{} still held after a expired", l.shard));
        assert_eq!(
            a.checkpoint(l, "300").await.unwrap(),
            CheckpointOutcome::Fenced
        );
        taken.push(nb);
    }
    let version = b.lease_version(&s).await.unwrap().unwrap();

    // b leaves: every lease is free at once, in every bucket
    b.leave(&s, "b", "b.1").await.unwrap();
    assert!(b.lease_version(&s).await.unwrap().unwrap() > version);
    let states = a.leases(&s).await.unwrap();
    assert_eq!(states.len(), 64);
    assert!(states.iter().all(|st| !st.live), "live after leave");
    assert!(!b.renew(&taken[0], LONG).await.unwrap());
    a.join(&s, "a", "a.2", LONG).await.unwrap();
    for sh in &shards {
        assert!(
            a.acquire_as_member(&s, sh, "a", "a.2", LONG, 0)
                .await
                .unwrap()
                .is_some(),
            "{sh} not free after b left"
        );
    }
    assert_eq!(a.live_instances(&s).await.unwrap(), vec!["a".to_owned()]);
    redis_keys::delete_matching_cluster(&url, &format!("{p}:*"));
}

/// FNV-1a of the shard id modulo 16, as the store's documentation states it.
fn bucket(shard: &str) -> u32 {
    shard.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    }) % 16
}

/// A consumer whose store is set to another number of buckets than the stream's recorded one
/// fails to start, with the reason, instead of starting and taking nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_another_layout_fails_to_start() {
    use mq_core::{Batch, ConsumerOptions, HandlerContext, MessageQueue, QueueName, handler_fn};
    use mq_kinesis::{KinesisOptions, KinesisQueue};
    let test = "layout-consume";
    let Some(url) = redis_url(test) else { return };
    let p = prefix(test);
    redis_keys::delete_matching(&format!("{p}:*"));
    let s = stream_name(test);
    let emu = emulator::Emulator::with_stream(&s, 1).await;
    // the fleet recorded one bucket
    store(&url, test, 1)
        .await
        .join(&s, "a", "a.1", LONG)
        .await
        .unwrap();
    let q = QueueName::new(&s).unwrap();
    let handler = Arc::new(handler_fn(|_: Batch, _: HandlerContext| async {}));
    for (n, refused) in [(16, true), (1, false)] {
        let queue = KinesisQueue::with_client(
            emu.client(),
            KinesisOptions::new(Arc::new(store(&url, test, n).await)).instance_id("b"),
        );
        queue.register(&q).await.unwrap();
        let started = queue
            .consume(&q, handler.clone(), ConsumerOptions::default())
            .await;
        match started {
            Err(e) if refused => {
                let text = e.to_string();
                assert!(
                    text.contains("1 slot bucket(s)") && text.contains("set to 16"),
                    "{text}"
                );
            }
            Ok(handle) if !refused => handle.stop().await,
            other => panic!("{n} buckets: {:?}", other.map(|_| "started")),
        }
        let _ = queue.shutdown().await;
    }
    redis_keys::delete_matching(&format!("{p}:*"));
}
