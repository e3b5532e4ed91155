//! The checkpoint-store conformance suite: every [`CheckpointStore`] keeps the fencing rule.
//!
//! A store implements [`CheckpointStoreFactory`] and stamps every case into a test binary:
//!
//! ```text
//! mq_core::checkpoint_store_tests!(MyFactory::new());
//! ```

use std::sync::Arc;

use async_trait::async_trait;

use crate::checkpoint::{CheckpointOutcome, CheckpointStore};

/// Builds isolated checkpoint stores for the conformance cases.
#[async_trait]
pub trait CheckpointStoreFactory: Send + Sync + 'static {
    /// A store for the case named `test` (its own table, collection or namespace), or `None`
    /// (after printing why, see [`service_url`](super::service_url)) to skip it.
    async fn create(&self, test: &str) -> Option<Arc<dyn CheckpointStore>>;
}

/// A stream name for `test`, unique per run.
pub fn stream_name(test: &str) -> String {
    format!(
        "{}-{}",
        test.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-"),
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

use CheckpointOutcome::{Advanced, Fenced, NotForward};

/// The sequence number stored for `shard` of `stream`, which must have a checkpoint record.
async fn sequence(store: &dyn CheckpointStore, stream: &str, shard: &str) -> Option<String> {
    let stored = store.load(stream, shard).await.expect("load");
    stored.expect("a checkpoint record").sequence_number
}

const BIG: &str = "49590338271490256608559692538361571095921575989136588898";
const BIGGER: &str = "49590338271490256608559692538361571095921575989136588899";

/// Nothing stored: no checkpoint, epoch 0, an empty listing.
pub async fn empty_store_reports_nothing(f: &dyn CheckpointStoreFactory, test: &str) {
    let store = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert_eq!(store.load(&s, "sh").await.unwrap(), None);
    assert_eq!(store.max_epoch(&s, "sh").await.unwrap(), 0);
    assert!(store.checkpoints(&s).await.unwrap().is_empty());
}

/// Within one epoch a checkpoint only moves forward, comparing big decimal integers.
pub async fn checkpoints_only_move_forward(f: &dyn CheckpointStoreFactory, test: &str) {
    let store = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert_eq!(store.save(&s, "sh", 1, "9").await.unwrap(), Advanced);
    assert_eq!(store.save(&s, "sh", 1, "10").await.unwrap(), Advanced);
    assert_eq!(store.save(&s, "sh", 1, "9").await.unwrap(), NotForward);
    assert_eq!(store.save(&s, "sh", 1, "10").await.unwrap(), NotForward);
    assert_eq!(store.save(&s, "sh", 1, BIGGER).await.unwrap(), Advanced);
    assert_eq!(store.save(&s, "sh", 1, BIG).await.unwrap(), NotForward);
    let c = store.load(&s, "sh").await.unwrap().unwrap();
    assert_eq!(c.sequence_number.as_deref(), Some(BIGGER));
    assert_eq!((c.written_epoch, c.epoch), (1, 1));
    assert_eq!(c.shard, "sh");
}

/// An older epoch can move the checkpoint neither backwards nor forwards; a newer epoch still
/// cannot move it backwards.
pub async fn stale_epoch_is_fenced(f: &dyn CheckpointStoreFactory, test: &str) {
    let store = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert_eq!(store.save(&s, "sh", 2, "100").await.unwrap(), Advanced);
    assert_eq!(store.save(&s, "sh", 1, "200").await.unwrap(), Fenced);
    assert_eq!(store.save(&s, "sh", 1, "50").await.unwrap(), Fenced);
    assert_eq!(store.save(&s, "sh", 3, "50").await.unwrap(), NotForward);
    assert_eq!(store.save(&s, "sh", 2, "150").await.unwrap(), Advanced);
    assert_eq!(store.save(&s, "sh", 3, "200").await.unwrap(), Advanced);
    assert_eq!(store.save(&s, "sh", 2, "300").await.unwrap(), Fenced);
    let c = store.load(&s, "sh").await.unwrap().unwrap();
    assert_eq!(c.sequence_number.as_deref(), Some("200"));
    assert_eq!((c.written_epoch, c.epoch), (3, 3));
    assert_eq!(store.max_epoch(&s, "sh").await.unwrap(), 3);
}

/// Observing an epoch fences older owners before the new one writes; it never lowers the epoch
/// and returns the epoch as it was before.
pub async fn observe_epoch_fences_before_the_first_write(
    f: &dyn CheckpointStoreFactory,
    test: &str,
) {
    let store = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert_eq!(store.save(&s, "sh", 1, "10").await.unwrap(), Advanced);
    assert_eq!(store.observe_epoch(&s, "sh", 5).await.unwrap(), 1);
    assert_eq!(store.observe_epoch(&s, "sh", 3).await.unwrap(), 5);
    assert_eq!(store.observe_epoch(&s, "sh", 5).await.unwrap(), 5);
    assert_eq!(store.max_epoch(&s, "sh").await.unwrap(), 5);
    assert_eq!(store.save(&s, "sh", 4, "11").await.unwrap(), Fenced);
    assert_eq!(store.save(&s, "sh", 5, "11").await.unwrap(), Advanced);
    let c = store.load(&s, "sh").await.unwrap().unwrap();
    assert_eq!(c.sequence_number.as_deref(), Some("11"));
    assert_eq!((c.written_epoch, c.epoch), (5, 5));
    // an epoch recorded on a shard without a checkpoint
    assert_eq!(store.observe_epoch(&s, "fresh", 7).await.unwrap(), 0);
    let fresh = store.load(&s, "fresh").await.unwrap().unwrap();
    assert_eq!((fresh.sequence_number, fresh.epoch), (None, 7));
    assert_eq!(store.save(&s, "fresh", 6, "1").await.unwrap(), Fenced);
    assert_eq!(store.max_epoch(&s, "sh").await.unwrap(), 5);
}

/// The operator override moves the checkpoint anywhere and fences the owner of the time.
pub async fn set_checkpoint_moves_anywhere_and_fences(f: &dyn CheckpointStoreFactory, test: &str) {
    let store = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert_eq!(store.save(&s, "sh", 3, "500").await.unwrap(), Advanced);
    let epoch = store.set_checkpoint(&s, "sh", "100").await.unwrap();
    assert!(epoch > 3, "override raised the epoch to {epoch}");
    let c = store.load(&s, "sh").await.unwrap().unwrap();
    assert_eq!(c.sequence_number.as_deref(), Some("100"));
    assert_eq!((c.written_epoch, c.epoch), (epoch, epoch));
    assert_eq!(store.save(&s, "sh", 3, "600").await.unwrap(), Fenced);
    assert_eq!(store.save(&s, "sh", epoch, "50").await.unwrap(), NotForward);
    assert_eq!(store.save(&s, "sh", epoch, "150").await.unwrap(), Advanced);
    let again = store.set_checkpoint(&s, "sh", "9000").await.unwrap();
    assert!(again > epoch);
    assert_eq!(sequence(&*store, &s, "sh").await.as_deref(), Some("9000"));
    // a shard never seen before
    let first = store.set_checkpoint(&s, "new", "7").await.unwrap();
    assert!(first >= 1);
    assert_eq!(store.max_epoch(&s, "new").await.unwrap(), first);
}

/// `checkpoints` lists the shards of one stream, sorted.
pub async fn checkpoints_lists_one_stream_sorted(f: &dyn CheckpointStoreFactory, test: &str) {
    let store = or_skip!(f.create(test).await);
    let s = stream_name(test);
    store.save(&s, "sh-b", 1, "20").await.unwrap();
    store.save(&s, "sh-a", 2, "10").await.unwrap();
    store.observe_epoch(&s, "sh-c", 4).await.unwrap();
    store
        .save(&stream_name("other"), "sh-x", 1, "1")
        .await
        .unwrap();
    let all = store.checkpoints(&s).await.unwrap();
    let shards: Vec<&str> = all.iter().map(|c| c.shard.as_str()).collect();
    assert_eq!(shards, ["sh-a", "sh-b", "sh-c"]);
    assert_eq!(all[0].sequence_number.as_deref(), Some("10"));
    assert_eq!(all[0].epoch, 2);
    assert_eq!(all[1].sequence_number.as_deref(), Some("20"));
    assert_eq!((all[2].sequence_number.as_deref(), all[2].epoch), (None, 4));
}

/// Sequence numbers are 1 to 128 digits, stored without leading zeros.
pub async fn sequence_numbers_are_validated(f: &dyn CheckpointStoreFactory, test: &str) {
    let store = or_skip!(f.create(test).await);
    let s = stream_name(test);
    for bad in ["", "12a", "-1", " 1"] {
        assert!(store.save(&s, "sh", 1, bad).await.is_err(), "{bad:?}");
        assert!(
            store.set_checkpoint(&s, "sh", bad).await.is_err(),
            "{bad:?}"
        );
    }
    assert!(store.save(&s, "sh", 1, &"1".repeat(129)).await.is_err());
    assert_eq!(store.save(&s, "sh", 1, "0007").await.unwrap(), Advanced);
    assert_eq!(store.save(&s, "sh", 1, "7").await.unwrap(), NotForward);
    assert_eq!(sequence(&*store, &s, "sh").await.as_deref(), Some("7"));
    let longest = "9".repeat(128);
    assert_eq!(store.save(&s, "sh", 1, &longest).await.unwrap(), Advanced);
    assert_eq!(sequence(&*store, &s, "sh").await, Some(longest));
}

/// Racing observers of one epoch: exactly one sees an older epoch before it (so epochs handed
/// out after a lease-store wipe are unique).
pub async fn concurrent_observers_of_one_epoch_have_one_winner(
    f: &dyn CheckpointStoreFactory,
    test: &str,
) {
    let store = or_skip!(f.create(test).await);
    let s = stream_name(test);
    store.save(&s, "sh", 3, "1").await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (store, s) = (store.clone(), s.clone());
        tasks.spawn(async move { store.observe_epoch(&s, "sh", 4).await.unwrap() < 4 });
    }
    let wins = tasks.join_all().await.into_iter().filter(|w| *w).count();
    assert_eq!(wins, 1);
    // the same on a shard nobody has seen (concurrent first inserts)
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (store, s) = (store.clone(), s.clone());
        tasks.spawn(async move { store.observe_epoch(&s, "fresh", 1).await.unwrap() < 1 });
    }
    let wins = tasks.join_all().await.into_iter().filter(|w| *w).count();
    assert_eq!(wins, 1);
}

/// Racing writers of one epoch: the checkpoint ends at the largest number and each accepted
/// write was above the one before it.
pub async fn concurrent_saves_end_at_the_largest(f: &dyn CheckpointStoreFactory, test: &str) {
    let store = or_skip!(f.create(test).await);
    let s = stream_name(test);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..6u64 {
        let (store, s) = (store.clone(), s.clone());
        tasks.spawn(async move {
            let mut advanced = 0;
            for k in 0..10u64 {
                let seq = (k * 6 + t + 1).to_string();
                if store.save(&s, "sh", 1, &seq).await.unwrap() == Advanced {
                    advanced += 1;
                }
            }
            advanced
        });
    }
    let advanced: u32 = tasks.join_all().await.into_iter().sum();
    assert!(advanced >= 1);
    let c = store.load(&s, "sh").await.unwrap().unwrap();
    assert_eq!(c.sequence_number.as_deref(), Some("60"));
}

/// Stamps one `#[tokio::test]` per checkpoint-store conformance case, each calling `$factory`
/// for a fresh [`CheckpointStoreFactory`]. The calling crate needs `tokio` with `macros` and
/// `rt-multi-thread`.
#[macro_export]
macro_rules! checkpoint_store_tests {
    ($factory:expr) => {
        $crate::__stamp_cases!($factory; checkpoint;
            empty_store_reports_nothing,
            checkpoints_only_move_forward,
            stale_epoch_is_fenced,
            observe_epoch_fences_before_the_first_write,
            set_checkpoint_moves_anywhere_and_fences,
            checkpoints_lists_one_stream_sorted,
            sequence_numbers_are_validated,
            concurrent_observers_of_one_epoch_have_one_winner,
            concurrent_saves_end_at_the_largest
        );
    };
}
