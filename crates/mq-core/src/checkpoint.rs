//! Durable shard checkpoints: the [`CheckpointStore`] trait, its fencing rule and sequence-number
//! order.
//!
//! A checkpoint store keeps, per (stream, shard), the last processed sequence number and the
//! newest lease epoch it has seen. It is the durable half of a shard-lease setup whose lease
//! store may forget everything (a Redis without persistence): leases and heartbeats live in the
//! lease store, checkpoints and the epoch fence live here.
//!
//! The invariant every implementation keeps: **a stale owner (an epoch older than the newest the
//! store has seen) can never move a checkpoint, and a checkpoint never goes backwards** except
//! through the operator override [`CheckpointStore::set_checkpoint`], which also raises the epoch
//! so that the owner at the time is fenced.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// The longest Kinesis sequence number, in digits.
pub const MAX_SEQUENCE_NUMBER_DIGITS: usize = 128;

/// Orders two Kinesis sequence numbers (decimal integers of up to 128 digits): by length, then
/// lexicographically, after dropping leading zeros.
///
/// # Examples
///
/// ```
/// use std::cmp::Ordering;
/// use mq_core::backend::compare_sequence_numbers;
///
/// assert_eq!(compare_sequence_numbers("9", "10"), Ordering::Less);
/// assert_eq!(compare_sequence_numbers("0099", "99"), Ordering::Equal);
/// assert_eq!(compare_sequence_numbers("49590338271490256608559692538361571095921575989136588898",
///     "49590338271490256608559692538361571095921575989136588899"), Ordering::Less);
/// ```
pub fn compare_sequence_numbers(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Checks that `value` is 1 to 128 decimal digits and returns it without leading zeros (`"0"`
/// for zero), the form checkpoint stores keep, so that two stored numbers compare by (length,
/// text) in any database.
///
/// # Errors
///
/// [`Error::InvalidSequenceNumber`] for anything else.
///
/// # Examples
///
/// ```
/// use mq_core::backend::normalize_sequence_number;
///
/// assert_eq!(normalize_sequence_number("00042")?, "42");
/// assert_eq!(normalize_sequence_number("000")?, "0");
/// assert!(normalize_sequence_number("12a").is_err());
/// # Ok::<(), mq_core::Error>(())
/// ```
pub fn normalize_sequence_number(value: &str) -> Result<String> {
    if value.is_empty()
        || value.len() > MAX_SEQUENCE_NUMBER_DIGITS
        || !value.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Error::InvalidSequenceNumber {
            value: value.chars().take(MAX_SEQUENCE_NUMBER_DIGITS + 8).collect(),
        });
    }
    let trimmed = value.trim_start_matches('0');
    Ok(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}

/// What a checkpoint write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointOutcome {
    /// The checkpoint moved forward.
    Advanced,
    /// The sequence number is not after the stored one; nothing changed.
    NotForward,
    /// The writer's lease is stale (an older epoch, or another owner); nothing changed.
    Fenced,
}

impl CheckpointOutcome {
    /// The rule of [`CheckpointStore::save`], for implementations: a write with `epoch` below
    /// `newest_epoch` is [`Fenced`](Self::Fenced); otherwise it is
    /// [`Advanced`](Self::Advanced) when `sequence_number` is after `stored` (or nothing is
    /// stored) and [`NotForward`](Self::NotForward) when not, whatever its epoch.
    ///
    /// # Examples
    ///
    /// ```
    /// use mq_core::backend::CheckpointOutcome;
    ///
    /// assert_eq!(CheckpointOutcome::decide(Some("10"), 3, 3, "11"), CheckpointOutcome::Advanced);
    /// assert_eq!(CheckpointOutcome::decide(Some("10"), 3, 4, "9"), CheckpointOutcome::NotForward);
    /// assert_eq!(CheckpointOutcome::decide(Some("10"), 3, 2, "99"), CheckpointOutcome::Fenced);
    /// assert_eq!(CheckpointOutcome::decide(None, 0, 1, "5"), CheckpointOutcome::Advanced);
    /// ```
    pub fn decide(
        stored: Option<&str>,
        newest_epoch: u64,
        epoch: u64,
        sequence_number: &str,
    ) -> CheckpointOutcome {
        if epoch < newest_epoch {
            return CheckpointOutcome::Fenced;
        }
        match stored {
            Some(cur) if compare_sequence_numbers(sequence_number, cur) != Ordering::Greater => {
                CheckpointOutcome::NotForward
            }
            _ => CheckpointOutcome::Advanced,
        }
    }
}

/// The stored checkpoint of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredCheckpoint {
    /// The shard id.
    pub shard: String,
    /// The last processed sequence number (without leading zeros); `None` when only an epoch was
    /// recorded so far.
    pub sequence_number: Option<String>,
    /// The epoch of the write that set [`sequence_number`](Self::sequence_number) (for an
    /// operator override, the epoch it raised the fence to); 0 when none.
    pub written_epoch: u64,
    /// The newest epoch the store has seen for the shard: writes with an older one are fenced.
    pub epoch: u64,
    /// When the entry last changed.
    pub updated_at: DateTime<Utc>,
}

impl StoredCheckpoint {
    /// A stored checkpoint, for [`CheckpointStore`] implementations.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = mq_core::backend::StoredCheckpoint::new("shard-0", Some("42".into()), 3, 4, chrono::Utc::now());
    /// assert_eq!((c.written_epoch, c.epoch), (3, 4));
    /// ```
    pub fn new(
        shard: impl Into<String>,
        sequence_number: Option<String>,
        written_epoch: u64,
        epoch: u64,
        updated_at: DateTime<Utc>,
    ) -> Self {
        StoredCheckpoint {
            shard: shard.into(),
            sequence_number,
            written_epoch,
            epoch,
            updated_at,
        }
    }
}

/// Where shard checkpoints and the epoch fence live durably.
///
/// Every method is atomic per (stream, shard). Sequence numbers are validated and stored
/// normalised ([`normalize_sequence_number`]). Implementations: [`MemoryCheckpointStore`] here,
/// `SqlCheckpointStore` in mq-sql (PostgreSQL, MySQL/MariaDB, SQLite) and
/// `MongoCheckpointStore` in mq-mongo; each passes the conformance suite
/// `mq_core::checkpoint_store_tests!` (feature `testkit`).
///
/// # Examples
///
/// ```
/// use mq_core::backend::{CheckpointOutcome, CheckpointStore, MemoryCheckpointStore};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryCheckpointStore::new();
/// // a new owner of epoch 2 records its epoch when it acquires the lease...
/// assert_eq!(store.observe_epoch("orders", "shard-0", 2).await?, 0);
/// // ...so the old owner of epoch 1 is fenced even before the new one writes
/// assert_eq!(store.save("orders", "shard-0", 1, "100").await?, CheckpointOutcome::Fenced);
/// assert_eq!(store.save("orders", "shard-0", 2, "100").await?, CheckpointOutcome::Advanced);
/// assert_eq!(store.save("orders", "shard-0", 2, "90").await?, CheckpointOutcome::NotForward);
/// # Ok::<(), mq_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait CheckpointStore: Send + Sync + fmt::Debug + 'static {
    /// The stored checkpoint of `shard`, or `None` when nothing was ever recorded for it.
    async fn load(&self, stream: &str, shard: &str) -> Result<Option<StoredCheckpoint>>;

    /// Records `sequence_number` as the checkpoint of `shard`, written by the lease owner of
    /// `epoch`, following [`CheckpointOutcome::decide`]: fenced when `epoch` is older than the
    /// newest epoch seen, accepted only when the number moves forward. An accepted write raises
    /// the newest epoch to `epoch`; a refused one changes nothing.
    async fn save(
        &self,
        stream: &str,
        shard: &str,
        epoch: u64,
        sequence_number: &str,
    ) -> Result<CheckpointOutcome>;

    /// Raises the newest epoch of `shard` to `epoch` if it is lower, and returns the newest epoch
    /// as it was *before* the call (like [`AtomicU64::fetch_max`](std::sync::atomic::AtomicU64::fetch_max)).
    ///
    /// Called when a lease is acquired, so the previous owner is fenced before the new one
    /// writes. A result below `epoch` means this call raised it, so no one else holds `epoch`;
    /// a result at or above `epoch` means someone else recorded it (or a newer one) first.
    async fn observe_epoch(&self, stream: &str, shard: &str, epoch: u64) -> Result<u64>;

    /// The newest epoch of `shard` (0 when none).
    async fn max_epoch(&self, stream: &str, shard: &str) -> Result<u64>;

    /// Every stored checkpoint of `stream`, sorted by shard id.
    async fn checkpoints(&self, stream: &str) -> Result<Vec<StoredCheckpoint>>;

    /// Operator override: sets the checkpoint of `shard` to `sequence_number`, forwards or
    /// backwards, and raises the newest epoch by one so the current owner is fenced. Returns the
    /// new newest epoch.
    async fn set_checkpoint(&self, stream: &str, shard: &str, sequence_number: &str)
    -> Result<u64>;
}

/// Checkpoints kept in this process: for tests and single-process setups. Cloning shares the
/// state.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use mq_core::backend::{CheckpointStore, MemoryCheckpointStore};
///
/// let store: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpointStore::new());
/// # let _ = store;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryCheckpointStore {
    inner: Arc<Mutex<HashMap<(String, String), StoredCheckpoint>>>,
}

impl MemoryCheckpointStore {
    /// An empty store.
    ///
    /// # Examples
    ///
    /// ```
    /// let store = mq_core::backend::MemoryCheckpointStore::new();
    /// # let _ = store;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), StoredCheckpoint>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<'a>(
        map: &'a mut HashMap<(String, String), StoredCheckpoint>,
        stream: &str,
        shard: &str,
    ) -> &'a mut StoredCheckpoint {
        map.entry((stream.to_owned(), shard.to_owned()))
            .or_insert_with(|| StoredCheckpoint::new(shard, None, 0, 0, Utc::now()))
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self, stream: &str, shard: &str) -> Result<Option<StoredCheckpoint>> {
        Ok(self
            .lock()
            .get(&(stream.to_owned(), shard.to_owned()))
            .cloned())
    }

    async fn save(
        &self,
        stream: &str,
        shard: &str,
        epoch: u64,
        sequence_number: &str,
    ) -> Result<CheckpointOutcome> {
        let seq = normalize_sequence_number(sequence_number)?;
        let mut map = self.lock();
        let (stored, newest) = map
            .get(&(stream.to_owned(), shard.to_owned()))
            .map_or((None, 0), |c| (c.sequence_number.clone(), c.epoch));
        let outcome = CheckpointOutcome::decide(stored.as_deref(), newest, epoch, &seq);
        if outcome == CheckpointOutcome::Advanced {
            let c = Self::entry(&mut map, stream, shard);
            c.sequence_number = Some(seq);
            c.written_epoch = epoch;
            c.epoch = epoch;
            c.updated_at = Utc::now();
        }
        Ok(outcome)
    }

    async fn observe_epoch(&self, stream: &str, shard: &str, epoch: u64) -> Result<u64> {
        let mut map = self.lock();
        let c = Self::entry(&mut map, stream, shard);
        let before = c.epoch;
        if epoch > before {
            c.epoch = epoch;
            c.updated_at = Utc::now();
        }
        Ok(before)
    }

    async fn max_epoch(&self, stream: &str, shard: &str) -> Result<u64> {
        Ok(self
            .lock()
            .get(&(stream.to_owned(), shard.to_owned()))
            .map_or(0, |c| c.epoch))
    }

    async fn checkpoints(&self, stream: &str) -> Result<Vec<StoredCheckpoint>> {
        let mut out: Vec<StoredCheckpoint> = self
            .lock()
            .iter()
            .filter(|((s, _), _)| s == stream)
            .map(|(_, c)| c.clone())
            .collect();
        out.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(out)
    }

    async fn set_checkpoint(
        &self,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> Result<u64> {
        let seq = normalize_sequence_number(sequence_number)?;
        let mut map = self.lock();
        let c = Self::entry(&mut map, stream, shard);
        c.epoch += 1;
        c.written_epoch = c.epoch;
        c.sequence_number = Some(seq);
        c.updated_at = Utc::now();
        Ok(c.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_order() {
        assert_eq!(compare_sequence_numbers("100", "99"), Ordering::Greater);
        assert_eq!(compare_sequence_numbers("0099", "99"), Ordering::Equal);
        assert_eq!(compare_sequence_numbers("123", "124"), Ordering::Less);
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_sequence_number("0").unwrap(), "0");
        assert_eq!(normalize_sequence_number("0010").unwrap(), "10");
        assert!(normalize_sequence_number("").is_err());
        assert!(normalize_sequence_number("-1").is_err());
        assert!(normalize_sequence_number(&"1".repeat(129)).is_err());
        assert_eq!(
            normalize_sequence_number(&"9".repeat(128)).unwrap().len(),
            128
        );
    }

    #[test]
    fn decision() {
        use CheckpointOutcome::*;
        assert_eq!(CheckpointOutcome::decide(None, 5, 4, "1"), Fenced);
        assert_eq!(CheckpointOutcome::decide(None, 5, 5, "1"), Advanced);
        assert_eq!(CheckpointOutcome::decide(Some("9"), 5, 5, "10"), Advanced);
        assert_eq!(
            CheckpointOutcome::decide(Some("10"), 5, 5, "10"),
            NotForward
        );
        assert_eq!(CheckpointOutcome::decide(Some("10"), 5, 6, "9"), NotForward);
        assert_eq!(CheckpointOutcome::decide(Some("10"), 5, 4, "11"), Fenced);
    }
}
