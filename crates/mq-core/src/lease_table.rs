//! [`LeaseTable`]: small versioned records with compare-and-set writes and a shared clock, the
//! storage a fleet's shard leases and instance sessions can live in when there is no Redis.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::error::Result;

/// One record of a [`LeaseTable`]: its value and its version.
///
/// The version is what a conditional write compares: every write of the record raises it, so
/// a writer that read version `v` and writes with `expected = Some(v)` succeeds only if nobody
/// wrote the record in between.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableRecord {
    /// The value, as the caller wrote it (usually JSON).
    pub value: String,
    /// Raised by every write; 1 when the record was created.
    pub version: u64,
}

impl TableRecord {
    /// A record with `value` at `version`.
    ///
    /// # Examples
    ///
    /// ```
    /// let r = mq_core::backend::TableRecord::new("{}", 1);
    /// assert_eq!((r.value.as_str(), r.version), ("{}", 1));
    /// ```
    pub fn new(value: impl Into<String>, version: u64) -> Self {
        TableRecord {
            value: value.into(),
            version,
        }
    }
}

/// The longest stream, kind or name, in bytes, that every [`LeaseTable`] stores.
pub const MAX_LEASE_TABLE_KEY_BYTES: usize = 255;

/// Small records keyed by (stream, kind, name), written by compare-and-set on their version, and
/// the store's own clock: what `mq_kinesis::TableLeaseStore` builds shard leases and instance
/// sessions on, so a fleet can keep them in the database it already runs (PostgreSQL, MariaDB,
/// MySQL, SQLite or MongoDB) instead of Redis.
///
/// Every operation touches one record and is atomic on its own; the lease rules (who may take
/// a shard, when a session has ended) live in the lease store, which reads a record, decides,
/// and writes it back only if it did not change meanwhile. Expiries are compared against
/// [`now_ms`](Self::now_ms), the store's clock, so instances whose clocks disagree still agree
/// on when a lease ended.
///
/// Implementations: `mq_sql::PgLeaseTable`, `mq_sql::MySqlLeaseTable`,
/// `mq_sql::SqliteLeaseTable`, `mq_mongo::MongoLeaseTable`, and [`MemoryLeaseTable`] for one
/// process. Each passes the conformance suite in `mq_core::testkit::lease_table`.
///
/// # Examples
///
/// ```
/// use mq_core::backend::{LeaseTable, MemoryLeaseTable};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let table = MemoryLeaseTable::new();
/// assert!(table.put("orders", "lease", "shard-0", "a", None).await?);
/// let read = table.get("orders", "lease", "shard-0").await?.expect("written");
/// // a write that read version 1 wins once; the second writer must read again
/// assert!(table.put("orders", "lease", "shard-0", "b", Some(read.version)).await?);
/// assert!(!table.put("orders", "lease", "shard-0", "c", Some(read.version)).await?);
/// # Ok::<(), mq_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait LeaseTable: Send + Sync + fmt::Debug + 'static {
    /// The store's clock, in Unix milliseconds: the one time every instance sharing the table
    /// compares expiries against.
    async fn now_ms(&self) -> Result<u64>;

    /// The record `name` of `kind` in `stream`, or `None`.
    async fn get(&self, stream: &str, kind: &str, name: &str) -> Result<Option<TableRecord>>;

    /// Every record of `kind` in `stream`, by name, sorted by name.
    async fn list(&self, stream: &str, kind: &str) -> Result<Vec<(String, TableRecord)>>;

    /// Writes `value` as record `name` of `kind` in `stream`: with `expected = None` only when
    /// the record does not exist (it is created at version 1), with `Some(v)` only when it
    /// exists at version `v` (it moves to `v + 1`). True when written, false when the condition
    /// failed; nothing changes then.
    async fn put(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
        value: &str,
        expected: Option<u64>,
    ) -> Result<bool>;

    /// Deletes record `name` of `kind` in `stream` if it is at version `expected`. True when
    /// deleted.
    async fn delete(&self, stream: &str, kind: &str, name: &str, expected: u64) -> Result<bool>;

    /// Raises the version of record `name` of `kind` in `stream` by one, creating it (with an
    /// empty value, at version 1) when missing, and returns the new version: a counter that
    /// many writers can raise at once without retrying.
    async fn bump(&self, stream: &str, kind: &str, name: &str) -> Result<u64>;
}

/// A [`LeaseTable`] kept in this process: for tests and single-process setups. Cloning shares
/// the records.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use mq_core::backend::{LeaseTable, MemoryLeaseTable};
///
/// let table: Arc<dyn LeaseTable> = Arc::new(MemoryLeaseTable::new());
/// # let _ = table;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryLeaseTable {
    inner: Arc<Mutex<Records>>,
}

/// Records by (stream, kind), then by name.
type Records = HashMap<(String, String), BTreeMap<String, TableRecord>>;

impl MemoryLeaseTable {
    /// An empty table.
    ///
    /// # Examples
    ///
    /// ```
    /// let table = mq_core::backend::MemoryLeaseTable::new();
    /// # let _ = table;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(stream: &str, kind: &str) -> (String, String) {
    (stream.to_owned(), kind.to_owned())
}

#[async_trait]
impl LeaseTable for MemoryLeaseTable {
    async fn now_ms(&self) -> Result<u64> {
        Ok(u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0))
    }

    async fn get(&self, stream: &str, kind: &str, name: &str) -> Result<Option<TableRecord>> {
        Ok(self
            .lock()
            .get(&key(stream, kind))
            .and_then(|records| records.get(name))
            .cloned())
    }

    async fn list(&self, stream: &str, kind: &str) -> Result<Vec<(String, TableRecord)>> {
        Ok(self
            .lock()
            .get(&key(stream, kind))
            .map(|records| {
                records
                    .iter()
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn put(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
        value: &str,
        expected: Option<u64>,
    ) -> Result<bool> {
        let mut all = self.lock();
        let records = all.entry(key(stream, kind)).or_default();
        let version = match (records.get(name), expected) {
            (None, None) => 1,
            (Some(current), Some(v)) if current.version == v => v + 1,
            _ => return Ok(false),
        };
        records.insert(name.to_owned(), TableRecord::new(value, version));
        Ok(true)
    }

    async fn delete(&self, stream: &str, kind: &str, name: &str, expected: u64) -> Result<bool> {
        let mut all = self.lock();
        let Some(records) = all.get_mut(&key(stream, kind)) else {
            return Ok(false);
        };
        if records.get(name).is_some_and(|r| r.version == expected) {
            records.remove(name);
            return Ok(true);
        }
        Ok(false)
    }

    async fn bump(&self, stream: &str, kind: &str, name: &str) -> Result<u64> {
        let mut all = self.lock();
        let record = all
            .entry(key(stream, kind))
            .or_default()
            .entry(name.to_owned())
            .or_insert_with(|| TableRecord::new("", 0));
        record.version += 1;
        Ok(record.version)
    }
}
