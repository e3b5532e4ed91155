//! [`TableLeaseStore`]: shard leases and instance sessions in a [`LeaseTable`] (PostgreSQL,
//! MariaDB/MySQL, SQLite or MongoDB), for a fleet that runs no Redis.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mq_core::backend::{LeaseTable, TableRecord};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lease::{
    CheckpointOutcome, Lease, LeaseRecord, LeaseState, LeaseStore, Memberships,
    operator_checkpoint, ttl_ms,
};

/// The kinds of record a stream has in the table.
const LEASE: &str = "lease";
const MEMBERSHIP: &str = "membership";
const INSTANCE: &str = "instance";
const FAILURES: &str = "failures";
const META: &str = "meta";
/// Names of the stream-wide records (kind [`META`]).
const VERSION: &str = "version";
const LISTING_LEAD: &str = "listing_lead";
const LISTING: &str = "listing";

/// How many times one change is tried again after another writer changed its record first.
/// Each retry means somebody else made progress on the same record, so running out takes a
/// storm of writers on one shard.
const TRIES: usize = 64;

/// A [`LeaseStore`] on a [`LeaseTable`]: leases, checkpoints, poison-pill counters and instance
/// sessions in the database a fleet already runs, with the same rules and fencing as
/// [`RedisLeaseStore`](crate::RedisLeaseStore).
///
/// Tables: `mq_sql::PgLeaseTable`, `mq_sql::MySqlLeaseTable`, `mq_sql::SqliteLeaseTable`,
/// `mq_mongo::MongoLeaseTable`, and [`MemoryLeaseTable`](mq_core::backend::MemoryLeaseTable)
/// for one process.
///
/// - **One record per shard**, changed by compare-and-set: a change reads the record, applies
///   the lease rule and writes it back only if nobody wrote it meanwhile (else it reads again),
///   so two instances never both win a shard and every epoch is handed out once.
/// - **Sessions.** An instance's membership is one record it renews (about every second by
///   default), whatever it owns; its leases name the membership and are valid while it lives.
///   Expiries are compared with the table's clock ([`LeaseTable::now_ms`]), not the instances'.
///   Before taking a shard from an expired membership, the taker deletes the membership record
///   (compare-and-set again), so a renewal of that membership that arrives late fails instead
///   of bringing its leases back: the owner learns it is gone and joins again.
/// - **Cost** follows what changes: a membership renewal reads the clock and one record and
///   writes it; the stream's change counter ([`lease_version`](LeaseStore::lease_version)) is a
///   [`LeaseTable::bump`], so workers read every lease only when it moved.
/// - Names: stream, shard and membership names (an instance name plus 27 characters) must each
///   fit the table's limit of
///   [`MAX_LEASE_TABLE_KEY_BYTES`](mq_core::backend::MAX_LEASE_TABLE_KEY_BYTES) bytes.
///
/// The table is durable, so no [`DurableLeaseStore`](crate::DurableLeaseStore) is needed around
/// it: checkpoints, epochs and the finished mark survive restarts with the table.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use mq_core::backend::MemoryLeaseTable;
/// use mq_kinesis::{LeaseStore, TableLeaseStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // in production: mq_sql::PgLeaseTable::from_pool(pool, "kinesis_leases").await?
/// let store = TableLeaseStore::new(Arc::new(MemoryLeaseTable::new()));
/// let ttl = Duration::from_secs(3);
/// store.join("orders", "worker-a", "worker-a.1", ttl).await?;
/// let lease = store
///     .acquire_as_member("orders", "shard-0", "worker-a", "worker-a.1", ttl, 0)
///     .await?
///     .expect("free");
/// assert!(store.acquire("orders", "shard-0", "worker-b", ttl).await?.is_none());
///
/// // worker-a leaves (or its session expires): the shard is free at once
/// store.leave("orders", "worker-a", "worker-a.1").await?;
/// let next = store.acquire("orders", "shard-0", "worker-b", ttl).await?.expect("free");
/// assert!(next.epoch > lease.epoch);
/// # Ok::<(), mq_kinesis::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct TableLeaseStore {
    table: Arc<dyn LeaseTable>,
}

/// A membership record: whose it is and when it ends (the table's clock, Unix ms).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MembershipRecord {
    instance: String,
    expires_at_ms: u64,
}

/// An instance's heartbeat record, for stores used without memberships.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceRecord {
    expires_at_ms: u64,
}

/// Who leads the shard listing, until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ListingLead {
    holder: String,
    expires_at_ms: u64,
}

/// The last published shard listing and when it was published.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PublishedListing {
    listing: String,
    at_ms: u64,
}

/// What a change of a lease record reads besides the record.
#[derive(Debug, Clone, Copy)]
enum Needs<'a> {
    /// Nothing: the change is decided by owner and epoch alone (checkpoint, release, finish,
    /// the operator's overrides), so it costs one read and one write.
    Record,
    /// The clock and the record's membership, to tell whether the lease lives (renew).
    Liveness,
    /// The clock and the memberships of the holder and of the taker: an acquisition, which
    /// may hand the lease to a new owner under `membership`.
    Acquire { membership: Option<&'a str> },
}

fn table_error(operation: &'static str) -> impl FnOnce(mq_core::Error) -> Error {
    move |e| Error::lease(operation, e)
}

fn decode<T: DeserializeOwned>(operation: &'static str, record: &TableRecord) -> Result<T> {
    serde_json::from_str(&record.value).map_err(|e| {
        Error::lease(
            operation,
            format!("a record of the lease table does not decode: {e}"),
        )
    })
}

fn encode<T: Serialize>(operation: &'static str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::lease(operation, e))
}

fn contended(operation: &'static str) -> Error {
    Error::lease(
        operation,
        format!("other writers changed the record first {TRIES} times in a row"),
    )
}

impl TableLeaseStore {
    /// Leases in `table`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mq_core::backend::MemoryLeaseTable;
    /// use mq_kinesis::{KinesisOptions, TableLeaseStore};
    ///
    /// let store = TableLeaseStore::new(Arc::new(MemoryLeaseTable::new()));
    /// let options = KinesisOptions::new(Arc::new(store));
    /// # let _ = options;
    /// ```
    pub fn new(table: Arc<dyn LeaseTable>) -> Self {
        TableLeaseStore { table }
    }

    /// The table the leases live in.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mq_core::backend::MemoryLeaseTable;
    /// use mq_kinesis::TableLeaseStore;
    ///
    /// let store = TableLeaseStore::new(Arc::new(MemoryLeaseTable::new()));
    /// let table = store.table();
    /// # let _ = table;
    /// ```
    pub fn table(&self) -> &Arc<dyn LeaseTable> {
        &self.table
    }

    async fn now(&self, operation: &'static str) -> Result<u64> {
        self.table.now_ms().await.map_err(table_error(operation))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        stream: &str,
        kind: &str,
        name: &str,
    ) -> Result<Option<(T, u64)>> {
        match self
            .table
            .get(stream, kind, name)
            .await
            .map_err(table_error(operation))?
        {
            Some(record) => Ok(Some((decode(operation, &record)?, record.version))),
            None => Ok(None),
        }
    }

    async fn put<T: Serialize>(
        &self,
        operation: &'static str,
        stream: &str,
        kind: &str,
        name: &str,
        value: &T,
        expected: Option<u64>,
    ) -> Result<bool> {
        let value = encode(operation, value)?;
        self.table
            .put(stream, kind, name, &value, expected)
            .await
            .map_err(table_error(operation))
    }

    async fn bump_version(&self, operation: &'static str, stream: &str) -> Result<()> {
        self.table
            .bump(stream, META, VERSION)
            .await
            .map_err(table_error(operation))?;
        Ok(())
    }

    /// Every membership of `stream`, name → expiry.
    async fn memberships(&self, operation: &'static str, stream: &str) -> Result<Memberships> {
        let mut out = Memberships::new();
        for (name, record) in self
            .table
            .list(stream, MEMBERSHIP)
            .await
            .map_err(table_error(operation))?
        {
            let m: MembershipRecord = decode(operation, &record)?;
            out.insert(name, m.expires_at_ms);
        }
        Ok(out)
    }

    /// The lease record of `shard` and its version (`None`: not stored yet).
    async fn lease_record(
        &self,
        operation: &'static str,
        stream: &str,
        shard: &str,
    ) -> Result<(LeaseRecord, Option<u64>)> {
        Ok(
            match self
                .get::<LeaseRecord>(operation, stream, LEASE, shard)
                .await?
            {
                Some((mut record, version)) => {
                    record.shard = shard.to_owned();
                    (record, Some(version))
                }
                None => (LeaseRecord::unheld(shard), None),
            },
        )
    }

    /// Reads the memberships named in `names` (the lease's own and the one it is taken
    /// under). An expired one is deleted when `end_expired`: that must happen before a lease
    /// of it changes hands, so a late renewal of it fails rather than reviving its leases.
    /// False when such a delete lost to a change of the membership (read again).
    async fn named_memberships(
        &self,
        operation: &'static str,
        stream: &str,
        names: &[&str],
        now: u64,
        end_expired: bool,
        out: &mut Memberships,
    ) -> Result<bool> {
        for name in names {
            if out.contains_key(*name) {
                continue;
            }
            let Some((m, version)) = self
                .get::<MembershipRecord>(operation, stream, MEMBERSHIP, name)
                .await?
            else {
                continue;
            };
            if m.expires_at_ms <= now && end_expired {
                if !self
                    .table
                    .delete(stream, MEMBERSHIP, name, version)
                    .await
                    .map_err(table_error(operation))?
                {
                    return Ok(false);
                }
                continue;
            }
            out.insert((*name).to_owned(), m.expires_at_ms);
        }
        Ok(true)
    }

    /// Applies `change` to the lease record of `shard` by compare-and-set, with what it
    /// `needs` (the table's clock and memberships; 0 and none for [`Needs::Record`]); bumps the
    /// stream's version when the lease changed hands.
    async fn update<T>(
        &self,
        operation: &'static str,
        stream: &str,
        shard: &str,
        needs: Needs<'_>,
        mut change: impl FnMut(&mut LeaseRecord, &Memberships, u64) -> T + Send,
    ) -> Result<T> {
        for _ in 0..TRIES {
            let now = match needs {
                Needs::Record => 0,
                Needs::Liveness | Needs::Acquire { .. } => self.now(operation).await?,
            };
            let (mut record, version) = self.lease_record(operation, stream, shard).await?;
            let mut memberships = Memberships::new();
            let own = record.membership.iter().map(String::as_str);
            // An acquisition ends the expired membership of the holder before the lease can
            // change hands.
            let (names, end_expired): (Vec<&str>, bool) = match needs {
                Needs::Record => (Vec::new(), false),
                Needs::Liveness => (own.collect(), false),
                Needs::Acquire { membership } => (own.chain(membership).collect(), true),
            };
            if !self
                .named_memberships(
                    operation,
                    stream,
                    &names,
                    now,
                    end_expired,
                    &mut memberships,
                )
                .await?
            {
                continue;
            }
            let before = record.clone();
            let out = change(&mut record, &memberships, now);
            if record == before {
                return Ok(out);
            }
            if self
                .put(operation, stream, LEASE, shard, &record, version)
                .await?
            {
                if record.changed_hands(&before) {
                    self.bump_version(operation, stream).await?;
                }
                return Ok(out);
            }
        }
        Err(contended(operation))
    }

    async fn override_lease(
        &self,
        operation: &'static str,
        stream: &str,
        shard: &str,
        checkpoint: Option<String>,
    ) -> Result<LeaseState> {
        self.update(operation, stream, shard, Needs::Record, |l, _, _| {
            l.override_owner(checkpoint.clone())
        })
        .await?;
        self.state(stream, shard).await
    }

    /// Creates or replaces record `name` of `kind` with what `next` makes of the current value
    /// (`None` when missing), by compare-and-set; `next` answers `None` to leave it alone.
    /// Returns whether it wrote.
    async fn upsert<T, F>(
        &self,
        operation: &'static str,
        stream: &str,
        kind: &str,
        name: &str,
        mut next: F,
    ) -> Result<bool>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnMut(Option<T>, u64) -> Option<T> + Send,
    {
        for _ in 0..TRIES {
            let now = self.now(operation).await?;
            let current = self.get::<T>(operation, stream, kind, name).await?;
            let version = current.as_ref().map(|(_, v)| *v);
            let Some(value) = next(current.map(|(t, _)| t), now) else {
                return Ok(false);
            };
            if self
                .put(operation, stream, kind, name, &value, version)
                .await?
            {
                return Ok(true);
            }
        }
        Err(contended(operation))
    }

    /// Deletes record `name` of `kind` whatever its version (retrying if it changes meanwhile).
    async fn remove(
        &self,
        operation: &'static str,
        stream: &str,
        kind: &str,
        name: &str,
    ) -> Result<()> {
        self.remove_if(operation, stream, kind, name, |_| Ok(true))
            .await
            .map(|_| ())
    }

    /// Deletes record `name` of `kind` when `doomed` says so of its current value (retrying if
    /// it changes meanwhile). True when it deleted it.
    async fn remove_if(
        &self,
        operation: &'static str,
        stream: &str,
        kind: &str,
        name: &str,
        doomed: impl Fn(&TableRecord) -> Result<bool> + Send,
    ) -> Result<bool> {
        for _ in 0..TRIES {
            let Some(record) = self
                .table
                .get(stream, kind, name)
                .await
                .map_err(table_error(operation))?
            else {
                return Ok(false);
            };
            if !doomed(&record)? {
                return Ok(false);
            }
            if self
                .table
                .delete(stream, kind, name, record.version)
                .await
                .map_err(table_error(operation))?
            {
                return Ok(true);
            }
        }
        Err(contended(operation))
    }
}

#[async_trait]
impl LeaseStore for TableLeaseStore {
    async fn acquire_above(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        let acquiring = Needs::Acquire { membership: None };
        self.update("acquire", stream, shard, acquiring, |l, m, now| {
            l.acquire(stream, owner, None, ttl, epoch_floor, m, now)
        })
        .await
    }

    async fn acquire_as_member(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        membership: &str,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        let acquiring = Needs::Acquire {
            membership: Some(membership),
        };
        self.update("acquire", stream, shard, acquiring, |l, m, now| {
            l.acquire(stream, owner, Some(membership), ttl, epoch_floor, m, now)
        })
        .await
    }

    async fn force_release(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        self.override_lease("force_release", stream, shard, None)
            .await
    }

    async fn set_checkpoint(
        &self,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> Result<LeaseState> {
        let checkpoint = Some(operator_checkpoint(sequence_number)?);
        self.override_lease("set_checkpoint", stream, shard, checkpoint)
            .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        self.update(
            "renew",
            &lease.stream,
            &lease.shard,
            Needs::Liveness,
            |l, m, now| l.renew(lease, ttl, m, now),
        )
        .await
    }

    async fn checkpoint(&self, lease: &Lease, sequence_number: &str) -> Result<CheckpointOutcome> {
        self.update(
            "checkpoint",
            &lease.stream,
            &lease.shard,
            Needs::Record,
            |l, _, _| l.checkpoint(lease, sequence_number),
        )
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.update(
            "release",
            &lease.stream,
            &lease.shard,
            Needs::Record,
            |l, _, _| l.release(lease),
        )
        .await
    }

    async fn finish(&self, lease: &Lease) -> Result<bool> {
        self.update(
            "finish",
            &lease.stream,
            &lease.shard,
            Needs::Record,
            |l, _, _| l.finish(lease),
        )
        .await
    }

    async fn state(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        let now = self.now("state").await?;
        let (record, _) = self.lease_record("state", stream, shard).await?;
        let mut memberships = Memberships::new();
        let own: Vec<&str> = record.membership.iter().map(String::as_str).collect();
        self.named_memberships("state", stream, &own, now, false, &mut memberships)
            .await?;
        Ok(record.state(now, &memberships))
    }

    async fn leases(&self, stream: &str) -> Result<Vec<LeaseState>> {
        let now = self.now("leases").await?;
        let memberships = self.memberships("leases", stream).await?;
        let mut out = Vec::new();
        for (shard, record) in self
            .table
            .list(stream, LEASE)
            .await
            .map_err(table_error("leases"))?
        {
            let mut l: LeaseRecord = decode("leases", &record)?;
            l.shard = shard;
            out.push(l.state(now, &memberships));
        }
        out.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(out)
    }

    async fn record_failure(&self, stream: &str, shard: &str, checkpoint: &str) -> Result<u32> {
        let mut count = 0;
        self.upsert(
            "record_failure",
            stream,
            FAILURES,
            shard,
            |counts: Option<BTreeMap<String, u32>>, _| {
                let mut counts = counts.unwrap_or_default();
                let n = counts.entry(checkpoint.to_owned()).or_default();
                *n = n.saturating_add(1);
                count = *n;
                Some(counts)
            },
        )
        .await?;
        Ok(count)
    }

    async fn clear_failures(&self, stream: &str, shard: &str) -> Result<()> {
        self.remove("clear_failures", stream, FAILURES, shard).await
    }

    async fn failure_counts(&self, stream: &str, shard: &str) -> Result<BTreeMap<String, u32>> {
        Ok(self
            .get::<BTreeMap<String, u32>>("failure_counts", stream, FAILURES, shard)
            .await?
            .map(|(counts, _)| counts)
            .unwrap_or_default())
    }

    async fn heartbeat(&self, stream: &str, instance: &str, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return self.remove("heartbeat", stream, INSTANCE, instance).await;
        }
        self.upsert(
            "heartbeat",
            stream,
            INSTANCE,
            instance,
            |_: Option<InstanceRecord>, now| {
                Some(InstanceRecord {
                    expires_at_ms: now + ttl_ms(ttl),
                })
            },
        )
        .await?;
        Ok(())
    }

    async fn live_instances(&self, stream: &str) -> Result<Vec<String>> {
        let now = self.now("live_instances").await?;
        let mut live = std::collections::BTreeSet::new();
        for (_, record) in self
            .table
            .list(stream, MEMBERSHIP)
            .await
            .map_err(table_error("live_instances"))?
        {
            let m: MembershipRecord = decode("live_instances", &record)?;
            if m.expires_at_ms > now {
                live.insert(m.instance);
            }
        }
        for (name, record) in self
            .table
            .list(stream, INSTANCE)
            .await
            .map_err(table_error("live_instances"))?
        {
            let i: InstanceRecord = decode("live_instances", &record)?;
            if i.expires_at_ms > now {
                live.insert(name);
            }
        }
        Ok(live.into_iter().collect())
    }

    async fn join(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.upsert(
            "join",
            stream,
            MEMBERSHIP,
            membership,
            |_: Option<MembershipRecord>, now| {
                Some(MembershipRecord {
                    instance: instance.to_owned(),
                    expires_at_ms: now + ttl_ms(ttl),
                })
            },
        )
        .await?;
        self.bump_version("join", stream).await
    }

    async fn renew_membership(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let _ = instance;
        // an expired or ended membership stays ended: its leases may have changed hands
        self.upsert(
            "renew_membership",
            stream,
            MEMBERSHIP,
            membership,
            |m: Option<MembershipRecord>, now| {
                m.filter(|m| m.expires_at_ms > now)
                    .map(|m| MembershipRecord {
                        expires_at_ms: now + ttl_ms(ttl),
                        ..m
                    })
            },
        )
        .await
    }

    async fn leave(&self, stream: &str, instance: &str, membership: &str) -> Result<()> {
        self.remove("leave", stream, MEMBERSHIP, membership).await?;
        self.remove("leave", stream, INSTANCE, instance).await?;
        self.bump_version("leave", stream).await
    }

    async fn lease_version(&self, stream: &str) -> Result<Option<u64>> {
        Ok(Some(
            self.table
                .get(stream, META, VERSION)
                .await
                .map_err(table_error("lease_version"))?
                .map_or(0, |r| r.version),
        ))
    }

    async fn forget_finished(&self, stream: &str, shard: &str) -> Result<bool> {
        let operation = "forget_finished";
        let finished = |r: &TableRecord| Ok(decode::<LeaseRecord>(operation, r)?.finished);
        if !self
            .remove_if(operation, stream, LEASE, shard, finished)
            .await?
        {
            return Ok(false);
        }
        self.remove(operation, stream, FAILURES, shard).await?;
        Ok(true)
    }

    async fn lead_listing(&self, stream: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.upsert(
            "lead_listing",
            stream,
            META,
            LISTING_LEAD,
            |lead: Option<ListingLead>, now| {
                if lead.is_some_and(|l| l.holder != holder && l.expires_at_ms > now) {
                    return None;
                }
                Some(ListingLead {
                    holder: holder.to_owned(),
                    expires_at_ms: now + ttl_ms(ttl),
                })
            },
        )
        .await
    }

    async fn publish_listing(&self, stream: &str, listing: &str) -> Result<()> {
        self.upsert(
            "publish_listing",
            stream,
            META,
            LISTING,
            |_: Option<PublishedListing>, now| {
                Some(PublishedListing {
                    listing: listing.to_owned(),
                    at_ms: now,
                })
            },
        )
        .await?;
        Ok(())
    }

    async fn published_listing(&self, stream: &str) -> Result<Option<(String, Duration)>> {
        let now = self.now("published_listing").await?;
        Ok(self
            .get::<PublishedListing>("published_listing", stream, META, LISTING)
            .await?
            .map(|(p, _)| {
                (
                    p.listing,
                    Duration::from_millis(now.saturating_sub(p.at_ms)),
                )
            }))
    }
}
