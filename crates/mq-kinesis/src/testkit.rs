//! The lease-store conformance suite (feature `testkit`).
//!
//! A lease store implements [`LeaseStoreFactory`] and stamps every case into its test binary:
//!
//! ```text
//! mq_kinesis::lease_store_tests!(MyFactory::new());
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::lease::{CheckpointOutcome, LeaseStore};

/// Builds isolated lease stores for the conformance cases.
#[async_trait]
pub trait LeaseStoreFactory: Send + Sync + 'static {
    /// A store for the case named `test`, or `None` (after printing why) to skip it.
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>>;

    /// Removes what the stores of case `test` left behind (keys, files); called only when the
    /// case passed, so a failure keeps its state for inspection. The default does nothing.
    async fn cleanup(&self, _test: &str) {}
}

/// A stream name for `test`, unique per run.
pub fn stream_name(test: &str) -> String {
    format!(
        "{}-{}",
        test.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-"),
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// A store from `f` for case `test` and a stream of its own in it; `None` when the case skips.
async fn open(f: &dyn LeaseStoreFactory, test: &str) -> Option<(Arc<dyn LeaseStore>, String)> {
    Some((f.create(test).await?, stream_name(test)))
}

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(30);
/// Long enough for a slow store to renew it between checks.
const MEMBERSHIP: Duration = Duration::from_secs(2);

async fn wait_until_acquired(
    store: &dyn LeaseStore,
    stream: &str,
    shard: &str,
    owner: &str,
) -> crate::Lease {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = store.acquire(stream, shard, owner, LONG).await.unwrap() {
            return l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease of {shard} never became free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The conformance cases.
pub mod cases {
    use super::*;

    /// Only one owner at a time; every acquisition raises the epoch; not re-entrant.
    pub async fn acquire_is_exclusive_and_epochs_increase(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let a = store.acquire(&s, "sh-0", "a", LONG).await.unwrap().unwrap();
        assert_eq!(a.checkpoint, None);
        assert!(
            store
                .acquire(&s, "sh-0", "b", LONG)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .acquire(&s, "sh-0", "a", LONG)
                .await
                .unwrap()
                .is_none()
        );
        let other = store.acquire(&s, "sh-1", "b", LONG).await.unwrap().unwrap();
        assert_eq!(other.owner, "b");
        assert!(store.release(&a).await.unwrap());
        let b = store.acquire(&s, "sh-0", "b", LONG).await.unwrap().unwrap();
        assert!(b.epoch > a.epoch, "epoch {} after {}", b.epoch, a.epoch);
        let st = store.state(&s, "sh-0").await.unwrap();
        assert_eq!(st.owner.as_deref(), Some("b"));
        assert_eq!(st.epoch, b.epoch);
        assert!(st.live);
    }

    /// A stale owner (lease expired and taken over) cannot renew, checkpoint, release or finish.
    pub async fn stale_owner_is_fenced(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let a = store.acquire(&s, "sh", "a", SHORT).await.unwrap().unwrap();
        assert_eq!(
            store.checkpoint(&a, "100").await.unwrap(),
            CheckpointOutcome::Advanced
        );
        let b = wait_until_acquired(&*store, &s, "sh", "b").await;
        assert!(b.epoch > a.epoch);
        assert_eq!(b.checkpoint.as_deref(), Some("100"));
        assert!(!store.renew(&a, LONG).await.unwrap());
        assert_eq!(
            store.checkpoint(&a, "200").await.unwrap(),
            CheckpointOutcome::Fenced
        );
        assert!(!store.release(&a).await.unwrap());
        assert!(!store.finish(&a).await.unwrap());
        // the same owner name with an old epoch is fenced too
        let a_again = crate::Lease {
            owner: "b".into(),
            ..a.clone()
        };
        assert!(!store.renew(&a_again, LONG).await.unwrap());
        assert!(store.renew(&b, LONG).await.unwrap());
        assert_eq!(
            store.checkpoint(&b, "150").await.unwrap(),
            CheckpointOutcome::Advanced
        );
        let st = store.state(&s, "sh").await.unwrap();
        assert_eq!(st.checkpoint.as_deref(), Some("150"));
        assert_eq!(st.owner.as_deref(), Some("b"));
    }

    /// Checkpoints compare as big decimal integers and never move backwards.
    pub async fn checkpoints_only_move_forward(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let a = store.acquire(&s, "sh", "a", LONG).await.unwrap().unwrap();
        let big = "49590338271490256608559692538361571095921575989136588898";
        let bigger = "49590338271490256608559692538361571095921575989136588899";
        assert_eq!(
            store.checkpoint(&a, "9").await.unwrap(),
            CheckpointOutcome::Advanced
        );
        assert_eq!(
            store.checkpoint(&a, "10").await.unwrap(),
            CheckpointOutcome::Advanced
        );
        assert_eq!(
            store.checkpoint(&a, "9").await.unwrap(),
            CheckpointOutcome::NotForward
        );
        assert_eq!(
            store.checkpoint(&a, "10").await.unwrap(),
            CheckpointOutcome::NotForward
        );
        assert_eq!(
            store.checkpoint(&a, bigger).await.unwrap(),
            CheckpointOutcome::Advanced
        );
        assert_eq!(
            store.checkpoint(&a, big).await.unwrap(),
            CheckpointOutcome::NotForward
        );
        assert_eq!(
            store.state(&s, "sh").await.unwrap().checkpoint.as_deref(),
            Some(bigger)
        );
    }

    /// Release frees the lease and keeps the checkpoint; finished shards are never acquired.
    pub async fn release_keeps_checkpoint_and_finish_is_final(
        f: &dyn LeaseStoreFactory,
        test: &str,
    ) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let a = store.acquire(&s, "sh", "a", LONG).await.unwrap().unwrap();
        store.checkpoint(&a, "42").await.unwrap();
        assert!(store.release(&a).await.unwrap());
        assert!(
            !store.release(&a).await.unwrap(),
            "second release is fenced"
        );
        let st = store.state(&s, "sh").await.unwrap();
        assert!(!st.live);
        assert_eq!(st.owner, None);
        let b = store.acquire(&s, "sh", "b", LONG).await.unwrap().unwrap();
        assert_eq!(b.checkpoint.as_deref(), Some("42"));
        assert!(store.finish(&b).await.unwrap());
        assert!(store.release(&b).await.unwrap());
        assert!(store.state(&s, "sh").await.unwrap().finished);
        assert!(store.acquire(&s, "sh", "c", LONG).await.unwrap().is_none());
        let never = store.state(&s, "never").await.unwrap();
        assert_eq!((never.epoch, never.live, never.finished), (0, false, false));
    }

    /// `leases` lists every shard ever acquired with its state, sorted.
    pub async fn leases_lists_every_shard(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        assert!(store.leases(&s).await.unwrap().is_empty());
        let b = store.acquire(&s, "sh-b", "x", LONG).await.unwrap().unwrap();
        let a = store.acquire(&s, "sh-a", "y", LONG).await.unwrap().unwrap();
        store.checkpoint(&a, "7").await.unwrap();
        store.release(&b).await.unwrap();
        store
            .acquire(&stream_name("other"), "sh-c", "x", LONG)
            .await
            .unwrap();
        let all = store.leases(&s).await.unwrap();
        let shards: Vec<&str> = all.iter().map(|l| l.shard.as_str()).collect();
        assert_eq!(shards, ["sh-a", "sh-b"]);
        assert_eq!(all[0].owner.as_deref(), Some("y"));
        assert_eq!(all[0].checkpoint.as_deref(), Some("7"));
        assert!(all[0].live);
        assert_eq!(all[1].owner, None);
        assert!(!all[1].live);
        assert_eq!(all[1].epoch, b.epoch);
    }

    /// Racing acquirers: exactly one wins.
    pub async fn concurrent_acquire_has_one_winner(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let (store, s) = (store.clone(), s.clone());
            tasks.spawn(async move {
                store
                    .acquire(&s, "sh", &format!("o{i}"), LONG)
                    .await
                    .unwrap()
                    .is_some()
            });
        }
        let wins = tasks.join_all().await.into_iter().filter(|w| *w).count();
        assert_eq!(wins, 1);
    }

    /// Heartbeats: live instances sorted; dead ones drop out.
    pub async fn dead_instances_drop_out(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        store.heartbeat(&s, "b", LONG).await.unwrap();
        store.heartbeat(&s, "a", LONG).await.unwrap();
        store.heartbeat(&s, "dying", SHORT).await.unwrap();
        let live = store.live_instances(&s).await.unwrap();
        assert_eq!(live, ["a", "b", "dying"]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let live = store.live_instances(&s).await.unwrap();
            if live == ["a", "b"] {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "still {live:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            store
                .live_instances(&stream_name("empty"))
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// The epoch of an acquisition is above the floor given and above every earlier epoch.
    pub async fn acquire_above_respects_the_floor(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let a = store
            .acquire_above(&s, "sh", "a", LONG, 41)
            .await
            .unwrap()
            .unwrap();
        assert!(a.epoch > 41, "epoch {}", a.epoch);
        assert!(
            store
                .acquire_above(&s, "sh", "b", LONG, 100)
                .await
                .unwrap()
                .is_none(),
            "a floor does not break a live lease"
        );
        assert!(store.release(&a).await.unwrap());
        let b = store.acquire(&s, "sh", "b", LONG).await.unwrap().unwrap();
        assert!(b.epoch > a.epoch);
        assert!(store.release(&b).await.unwrap());
        let c = store
            .acquire_above(&s, "sh", "c", LONG, 3)
            .await
            .unwrap()
            .unwrap();
        assert!(c.epoch > b.epoch, "a low floor never lowers the epoch");
        assert_eq!(store.state(&s, "sh").await.unwrap().epoch, c.epoch);
    }

    /// An operator's force-release frees the shard and fences its owner; the checkpoint stays.
    pub async fn force_release_fences_the_owner(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let a = store.acquire(&s, "sh", "a", LONG).await.unwrap().unwrap();
        assert_eq!(
            store.checkpoint(&a, "10").await.unwrap(),
            CheckpointOutcome::Advanced
        );
        let st = store.force_release(&s, "sh").await.unwrap();
        assert_eq!(st.owner, None);
        assert!(!st.live);
        assert!(st.epoch > a.epoch, "epoch {} after {}", st.epoch, a.epoch);
        assert_eq!(st.checkpoint.as_deref(), Some("10"));
        assert!(!store.renew(&a, LONG).await.unwrap());
        assert_eq!(
            store.checkpoint(&a, "20").await.unwrap(),
            CheckpointOutcome::Fenced
        );
        assert!(!store.release(&a).await.unwrap());
        assert!(!store.finish(&a).await.unwrap());
        let b = store.acquire(&s, "sh", "b", LONG).await.unwrap().unwrap();
        assert!(b.epoch > st.epoch);
        assert_eq!(b.checkpoint.as_deref(), Some("10"));
        // on a shard nobody holds
        let free = store.force_release(&s, "free").await.unwrap();
        assert_eq!((free.owner, free.live), (None, false));
        assert!(
            store
                .acquire(&s, "free", "c", LONG)
                .await
                .unwrap()
                .is_some()
        );
    }

    /// An operator's checkpoint override moves it anywhere, fences the owner, and the next owner
    /// starts from it.
    pub async fn set_checkpoint_overrides_and_fences(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let a = store.acquire(&s, "sh", "a", LONG).await.unwrap().unwrap();
        assert_eq!(
            store.checkpoint(&a, "500").await.unwrap(),
            CheckpointOutcome::Advanced
        );
        let st = store.set_checkpoint(&s, "sh", "100").await.unwrap();
        assert_eq!(st.checkpoint.as_deref(), Some("100"));
        assert_eq!((st.owner.as_deref(), st.live), (None, false));
        assert!(st.epoch > a.epoch);
        assert_eq!(
            store.checkpoint(&a, "600").await.unwrap(),
            CheckpointOutcome::Fenced
        );
        assert!(!store.renew(&a, LONG).await.unwrap());
        let b = store.acquire(&s, "sh", "b", LONG).await.unwrap().unwrap();
        assert!(b.epoch > st.epoch);
        assert_eq!(b.checkpoint.as_deref(), Some("100"));
        assert_eq!(
            store.checkpoint(&b, "50").await.unwrap(),
            CheckpointOutcome::NotForward
        );
        assert_eq!(
            store.checkpoint(&b, "150").await.unwrap(),
            CheckpointOutcome::Advanced
        );
        // forwards, on a shard never acquired, and listed
        let fresh = store.set_checkpoint(&s, "fresh", "77").await.unwrap();
        assert_eq!(fresh.checkpoint.as_deref(), Some("77"));
        let c = store
            .acquire(&s, "fresh", "c", LONG)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.checkpoint.as_deref(), Some("77"));
        let shards: Vec<String> = store
            .leases(&s)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.shard)
            .collect();
        assert_eq!(shards, ["fresh", "sh"]);
        assert!(store.set_checkpoint(&s, "sh", "12x").await.is_err());
    }

    /// Poison counters per (shard, checkpoint), shared, readable and resettable.
    pub async fn poison_counters(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        assert_eq!(store.record_failure(&s, "sh", "10").await.unwrap(), 1);
        assert_eq!(store.record_failure(&s, "sh", "10").await.unwrap(), 2);
        assert_eq!(store.record_failure(&s, "sh", "11").await.unwrap(), 1);
        assert_eq!(store.record_failure(&s, "other", "10").await.unwrap(), 1);
        let counts = store.failure_counts(&s, "sh").await.unwrap();
        let expected: std::collections::BTreeMap<String, u32> =
            [("10".to_owned(), 2), ("11".to_owned(), 1)].into();
        assert_eq!(counts, expected, "failure counts by checkpoint");
        store.clear_failures(&s, "sh").await.unwrap();
        assert!(store.failure_counts(&s, "sh").await.unwrap().is_empty());
        assert!(store.failure_counts(&s, "never").await.unwrap().is_empty());
        assert_eq!(store.record_failure(&s, "sh", "10").await.unwrap(), 1);
        assert_eq!(store.record_failure(&s, "other", "10").await.unwrap(), 2);
    }
    /// A lease tied to a membership lives exactly as long as the membership: renewing the
    /// membership keeps every such lease without touching them, and once it expires the shards
    /// are free and the old owner is fenced exactly as after a lease expiry.
    pub async fn membership_leases_end_with_the_membership(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        store.join(&s, "a", "a.1", MEMBERSHIP).await.unwrap();
        let a0 = store
            .acquire_as_member(&s, "sh-0", "a", "a.1", LONG, 0)
            .await
            .unwrap()
            .unwrap();
        let a1 = store
            .acquire_as_member(&s, "sh-1", "a", "a.1", LONG, 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a0.membership.as_deref(), Some("a.1"));
        assert_eq!(
            store.checkpoint(&a0, "100").await.unwrap(),
            CheckpointOutcome::Advanced
        );
        // kept alive by the membership alone, for several of its TTLs
        let until = tokio::time::Instant::now() + MEMBERSHIP * 2;
        while tokio::time::Instant::now() < until {
            assert!(
                store
                    .renew_membership(&s, "a", "a.1", MEMBERSHIP)
                    .await
                    .unwrap()
            );
            for shard in ["sh-0", "sh-1"] {
                let st = store.state(&s, shard).await.unwrap();
                assert!(st.live, "{shard} lives while its membership does: {st:?}");
                assert_eq!(st.membership.as_deref(), Some("a.1"));
            }
            assert!(
                store
                    .acquire_as_member(&s, "sh-0", "b", "b.1", LONG, 0)
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(
                store
                    .acquire(&s, "sh-1", "b", LONG)
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(store.renew(&a1, LONG).await.unwrap(), "confirmed");
            tokio::time::sleep(MEMBERSHIP / 10).await;
        }
        assert!(
            store
                .live_instances(&s)
                .await
                .unwrap()
                .contains(&"a".to_owned())
        );
        // the membership is no longer renewed: both shards become free together (a store that
        // keeps a copy of the membership per group of shards, such as Redis with slot buckets,
        // renews the copies by separate calls: they end within the time between those calls)
        let b0 = wait_until_acquired(&*store, &s, "sh-0", "b").await;
        assert!(b0.epoch > a0.epoch);
        assert_eq!(b0.checkpoint.as_deref(), Some("100"));
        let freed = tokio::time::Instant::now();
        while store.state(&s, "sh-1").await.unwrap().live {
            assert!(
                freed.elapsed() < MEMBERSHIP / 4,
                "sh-1 outlived its membership by {:?}",
                freed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // nothing was lost: the store vouches that the lease ended
        let ended = store.state(&s, "sh-1").await.unwrap();
        assert!(!ended.expiry_unconfirmed, "{ended:?}");
        assert!(
            !store
                .renew_membership(&s, "a", "a.1", MEMBERSHIP)
                .await
                .unwrap(),
            "an expired membership is not revived"
        );
        assert!(
            !store
                .live_instances(&s)
                .await
                .unwrap()
                .contains(&"a".to_owned())
        );
        // the old owner is fenced on every mutation
        assert!(!store.renew(&a0, LONG).await.unwrap());
        assert_eq!(
            store.checkpoint(&a0, "200").await.unwrap(),
            CheckpointOutcome::Fenced
        );
        assert!(!store.release(&a0).await.unwrap());
        assert!(!store.finish(&a0).await.unwrap());
        // an expired lease nobody took yet: its owner cannot confirm it either
        assert!(!store.renew(&a1, LONG).await.unwrap());
        // nor acquire under the expired membership
        assert!(
            store
                .acquire_as_member(&s, "sh-1", "a", "a.1", LONG, 0)
                .await
                .unwrap()
                .is_none()
        );
        // a new membership of the same instance gets a new epoch
        store.join(&s, "a", "a.2", LONG).await.unwrap();
        let a1_again = store
            .acquire_as_member(&s, "sh-1", "a", "a.2", LONG, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(a1_again.epoch > a1.epoch);
        assert_eq!(
            store.checkpoint(&a1, "5").await.unwrap(),
            CheckpointOutcome::Fenced
        );
    }

    /// Leaving ends the membership at once: its leases are free and the instance is not listed.
    /// Releasing a lease tied to a membership frees it too, and nobody can tie a lease to a
    /// membership that was never started.
    pub async fn leaving_frees_the_leases_at_once(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        assert!(
            store
                .acquire_as_member(&s, "sh-0", "a", "a.never", LONG, 0)
                .await
                .unwrap()
                .is_none(),
            "no lease under an unknown membership"
        );
        store.join(&s, "a", "a.1", LONG).await.unwrap();
        store.join(&s, "b", "b.1", LONG).await.unwrap();
        assert_eq!(store.live_instances(&s).await.unwrap(), ["a", "b"]);
        let a0 = store
            .acquire_as_member(&s, "sh-0", "a", "a.1", LONG, 0)
            .await
            .unwrap()
            .unwrap();
        let a1 = store
            .acquire_as_member(&s, "sh-1", "a", "a.1", LONG, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(store.release(&a1).await.unwrap());
        let b1 = store
            .acquire_as_member(&s, "sh-1", "b", "b.1", LONG, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(b1.epoch > a1.epoch);
        store.leave(&s, "a", "a.1").await.unwrap();
        assert_eq!(store.live_instances(&s).await.unwrap(), ["b"]);
        let st = store.state(&s, "sh-0").await.unwrap();
        assert!(!st.live, "free once its membership ended: {st:?}");
        let b0 = store
            .acquire_as_member(&s, "sh-0", "b", "b.1", LONG, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(b0.epoch > a0.epoch);
        assert!(!store.release(&a0).await.unwrap());
        let all = store.leases(&s).await.unwrap();
        assert!(
            all.iter()
                .all(|l| l.live && l.owner.as_deref() == Some("b")),
            "{all:?}"
        );
        // a lease with its own expiry still works next to them
        let own = store.acquire(&s, "sh-2", "b", LONG).await.unwrap().unwrap();
        assert_eq!(own.membership, None);
        assert!(store.renew(&own, LONG).await.unwrap());
    }
    /// The lease version moves whenever a lease changes hands or an instance joins or leaves,
    /// and stays put on renewals and checkpoints (a store that keeps none is skipped).
    pub async fn lease_version_moves_when_leases_change_hands(
        f: &dyn LeaseStoreFactory,
        test: &str,
    ) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let Some(mut last) = store.lease_version(&s).await.unwrap() else {
            return;
        };
        let store = &*store;
        let version = |moved: bool, what: &'static str| {
            let s = s.clone();
            async move {
                let v = store.lease_version(&s).await.unwrap().unwrap();
                (v, moved, what)
            }
        };
        let mut check = |(v, moved, what): (u64, bool, &str)| {
            assert_eq!(v != last, moved, "{what}: version {last} then {v}");
            last = v;
        };
        store.join(&s, "a", "a.1", LONG).await.unwrap();
        check(version(true, "join").await);
        let a = store
            .acquire_as_member(&s, "sh", "a", "a.1", LONG, 0)
            .await
            .unwrap()
            .unwrap();
        check(version(true, "acquire").await);
        assert!(store.renew_membership(&s, "a", "a.1", LONG).await.unwrap());
        assert!(store.renew(&a, LONG).await.unwrap());
        store.checkpoint(&a, "5").await.unwrap();
        check(version(false, "renewals and a checkpoint").await);
        assert!(store.release(&a).await.unwrap());
        check(version(true, "release").await);
        let b = store.acquire(&s, "sh", "b", LONG).await.unwrap().unwrap();
        check(version(true, "acquire").await);
        assert!(store.finish(&b).await.unwrap());
        check(version(true, "finish").await);
        store.force_release(&s, "sh").await.unwrap();
        check(version(true, "force_release").await);
        store.leave(&s, "a", "a.1").await.unwrap();
        check(version(true, "leave").await);
    }

    /// A finished shard's record is forgotten on request (an unfinished one is not), its old
    /// lease cannot bring it back, and a store that keeps a durable copy still reports it
    /// finished.
    pub async fn finished_shards_are_forgotten(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let done = store.acquire(&s, "sh-0", "a", LONG).await.unwrap().unwrap();
        assert_eq!(
            store.checkpoint(&done, "7").await.unwrap(),
            CheckpointOutcome::Advanced
        );
        store.record_failure(&s, "sh-0", "7").await.unwrap();
        let open_lease = store.acquire(&s, "sh-1", "a", LONG).await.unwrap().unwrap();
        assert!(
            !store.forget_finished(&s, "sh-1").await.unwrap(),
            "not finished"
        );
        assert!(
            !store.forget_finished(&s, "sh-0").await.unwrap(),
            "not finished yet"
        );
        assert!(store.finish(&done).await.unwrap());
        if !store.forget_finished(&s, "sh-0").await.unwrap() {
            // a store that keeps finished shards
            return;
        }
        // the old lease can neither release nor finish it into a record again
        assert!(!store.release(&done).await.unwrap());
        assert!(store.failure_counts(&s, "sh-0").await.unwrap().is_empty());
        let leases = store.leases(&s).await.unwrap();
        let forgotten: Vec<_> = leases.iter().filter(|l| l.shard == "sh-0").collect();
        assert!(
            forgotten.iter().all(|l| l.finished && l.owner.is_none()),
            "forgotten, or kept finished by a durable copy: {forgotten:?}"
        );
        assert!(leases.iter().any(|l| l.shard == "sh-1" && l.live));
        assert!(store.renew(&open_lease, LONG).await.unwrap());
        assert!(
            !store.forget_finished(&s, "sh-0").await.unwrap(),
            "forgotten once"
        );
    }

    /// One holder leads the shard listing at a time, until its lead expires; the published
    /// listing is read back with its age (a store without leads is skipped).
    pub async fn one_holder_leads_the_listing(f: &dyn LeaseStoreFactory, test: &str) {
        let Some((store, s)) = open(f, test).await else {
            return;
        };
        let short = Duration::from_millis(300);
        assert!(store.lead_listing(&s, "a.1", short).await.unwrap());
        if store.lead_listing(&s, "b.1", short).await.unwrap() {
            // every holder leads: a store without leads
            return;
        }
        assert!(store.published_listing(&s).await.unwrap().is_none());
        assert!(
            store.lead_listing(&s, "a.1", short).await.unwrap(),
            "renewed"
        );
        store.publish_listing(&s, "[1]").await.unwrap();
        let (listing, age) = store.published_listing(&s).await.unwrap().unwrap();
        assert_eq!(listing, "[1]");
        assert!(age < Duration::from_secs(5), "{age:?}");
        // b takes the lead once a's has lapsed, not before
        let renewed = tokio::time::Instant::now();
        while !store.lead_listing(&s, "b.1", short).await.unwrap() {
            assert!(
                renewed.elapsed() < short * 10,
                "a's lead never expired ({:?})",
                renewed.elapsed()
            );
            tokio::time::sleep(short / 10).await;
        }
        assert!(
            renewed.elapsed() >= short / 2,
            "b led before a's lead lapsed"
        );
        assert!(!store.lead_listing(&s, "a.1", short).await.unwrap());
        // the listing's age keeps growing past the lead's TTL
        let later = loop {
            let (_, later) = store.published_listing(&s).await.unwrap().unwrap();
            if later >= short || renewed.elapsed() > short * 10 {
                break later;
            }
            tokio::time::sleep(short / 10).await;
        };
        assert!(later >= short, "the age grows: {later:?}");
    }
}

/// Stamps one `#[tokio::test]` per lease-store conformance case, each calling `$factory` for a
/// fresh [`LeaseStoreFactory`].
#[macro_export]
macro_rules! lease_store_tests {
    ($factory:expr) => {
        $crate::lease_store_tests!(@cases $factory;
            acquire_is_exclusive_and_epochs_increase,
            stale_owner_is_fenced,
            checkpoints_only_move_forward,
            release_keeps_checkpoint_and_finish_is_final,
            leases_lists_every_shard,
            concurrent_acquire_has_one_winner,
            dead_instances_drop_out,
            poison_counters,
            acquire_above_respects_the_floor,
            force_release_fences_the_owner,
            set_checkpoint_overrides_and_fences,
            membership_leases_end_with_the_membership,
            leaving_frees_the_leases_at_once,
            lease_version_moves_when_leases_change_hands,
            finished_shards_are_forgotten,
            one_holder_leads_the_listing
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                $crate::testkit::cases::$case(&factory, stringify!($case)).await;
                $crate::testkit::LeaseStoreFactory::cleanup(&factory, stringify!($case)).await;
            }
        )*
    };
}
