//! [`MongoLeaseTable`]: versioned records with compare-and-set writes and the server's clock, in
//! one collection.

use std::fmt;

use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, IndexModel};
use mq_core::async_trait;
use mq_core::backend::{LeaseTable, TableRecord};

use crate::connect::{self, collect};
use crate::error::{backend, is_duplicate_key};
use crate::options::MongoOptions;

/// Tries of an upserting bump: two concurrent upserts of a missing record can both insert, and
/// the loser fails with a duplicate key although the record now exists, so a second try, an
/// update of the existing record, succeeds.
const BUMP_TRIES: usize = 2;

/// Versioned records with compare-and-set writes and the server's clock, in the collection
/// [`MongoOptions::lease_collection`] (default `mq_leases`): the
/// [`mq_core::backend::LeaseTable`] that lets mq-kinesis keep its shard leases and instance
/// sessions in MongoDB instead of Redis.
///
/// One document per record, keyed `{_id: {s: <stream>, k: <kind>, n: <name>}}`, holding the
/// value (`value`, a string) and the version (`version`, a 64-bit integer), plus the stream and
/// kind again (`stream`, `kind`) for the index that lists a kind. Every write is one
/// conditional statement: a create is an insert that the `_id` index refuses when the record
/// exists, an update or delete matches only the version it read, and a bump is an upsert that
/// raises the version on the server. [`now_ms`](LeaseTable::now_ms) is the server's time
/// (`hello.localTime`), read on every call.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use mq_core::backend::LeaseTable;
/// use mq_mongo::{MongoLeaseTable, MongoOptions};
///
/// # async fn run() -> mq_core::Result<()> {
/// let options = MongoOptions::default()
///     .database("jobs")
///     .lease_collection("kinesis_leases");
/// let table: Arc<dyn LeaseTable> =
///     Arc::new(MongoLeaseTable::connect("mongodb://127.0.0.1:27017", options).await?);
/// if table.put("orders", "lease", "shard-0", "{}", None).await? {
///     println!("created at {} ms", table.now_ms().await?);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MongoLeaseTable {
    coll: Collection<Document>,
}

impl fmt::Debug for MongoLeaseTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoLeaseTable")
            .field("collection", &self.coll.namespace().to_string())
            .finish_non_exhaustive()
    }
}

fn id(stream: &str, kind: &str, name: &str) -> Document {
    doc! { "s": stream, "k": kind, "n": name }
}

/// A version as stored; `None` for one no record can have (above `i64::MAX`).
fn version_bson(version: u64) -> Option<i64> {
    i64::try_from(version).ok()
}

/// An error for a document this crate did not write as it reads it.
fn malformed(operation: &'static str, document: &Document, reason: &str) -> mq_core::Error {
    let key = document
        .get("_id")
        .map_or_else(|| "(no _id)".to_owned(), ToString::to_string);
    mq_core::Error::backend(
        "mongo",
        operation,
        format!("lease record {key} {reason}; it was not written by mq-mongo"),
    )
}

/// The record a document holds.
fn decode(operation: &'static str, d: &Document) -> mq_core::Result<TableRecord> {
    let value = match d.get("value") {
        Some(Bson::String(s)) => s.clone(),
        _ => return Err(malformed(operation, d, "has no string value")),
    };
    let version = match d.get("version") {
        Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
        Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    match version {
        Some(v) if v > 0 => Ok(TableRecord::new(value, v)),
        _ => Err(malformed(operation, d, "has no positive integer version")),
    }
}

/// The name in a document's `_id`.
fn name_of(operation: &'static str, d: &Document) -> mq_core::Result<String> {
    d.get_document("_id")
        .ok()
        .and_then(|key| key.get_str("n").ok())
        .map(str::to_owned)
        .ok_or_else(|| malformed(operation, d, "has no name in its _id"))
}

impl MongoLeaseTable {
    /// A table on a new client for `uri`. The server must answer within
    /// [`MongoOptions::server_selection_timeout`], or this fails with
    /// [`mq_core::Error::Connect`] naming the hosts; the rest is as in
    /// [`MongoLeaseTable::from_client`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> mq_core::Result<()> {
    /// let options = mq_mongo::MongoOptions::default().lease_collection("kinesis_leases");
    /// let table = mq_mongo::MongoLeaseTable::connect("mongodb://db1:27017/?replicaSet=rs0", options).await?;
    /// # let _ = table; Ok(()) }
    /// ```
    pub async fn connect(uri: &str, options: MongoOptions) -> mq_core::Result<Self> {
        let client = connect::client(uri, &options).await?;
        connect::build_or_shut_down(client, async |c| Self::from_client(c, options).await).await
    }

    /// A table on `client` in [`MongoOptions::lease_collection`]. Its one index (records by
    /// stream and kind, for listing) is created when missing; with
    /// [`MongoOptions::create_schema`]`(false)` a missing collection or index is an
    /// [`mq_core::Error::Backend`] whose source, [`crate::Error::MissingSchema`], names it. A bad
    /// name is an [`mq_core::Error::InvalidName`], before any call.
    ///
    /// # Examples
    ///
    /// One client for the checkpoints and the leases:
    ///
    /// ```no_run
    /// use mq_mongo::{MongoCheckpointStore, MongoLeaseTable, MongoOptions, mongodb};
    ///
    /// # async fn run(client: mongodb::Client) -> mq_core::Result<()> {
    /// let options = MongoOptions::default().database("jobs");
    /// let checkpoints = MongoCheckpointStore::from_client(client.clone(), options.clone()).await?;
    /// let leases = MongoLeaseTable::from_client(client, options).await?;
    /// # let _ = (checkpoints, leases); Ok(()) }
    /// ```
    pub async fn from_client(client: Client, options: MongoOptions) -> mq_core::Result<Self> {
        let index = IndexModel::builder()
            .keys(doc! { "stream": 1, "kind": 1 })
            .options(
                IndexOptions::builder()
                    .name("mq_lease_stream_kind".to_owned())
                    .build(),
            )
            .build();
        let name = options.get_lease_collection();
        let coll = connect::store_collection(&client, &options, name, vec![index]).await?;
        Ok(MongoLeaseTable { coll })
    }

    /// The collection.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(table: &mq_mongo::MongoLeaseTable) {
    /// println!("{}", table.collection().name());
    /// # }
    /// ```
    pub fn collection(&self) -> &Collection<Document> {
        &self.coll
    }
}

#[async_trait]
impl LeaseTable for MongoLeaseTable {
    async fn now_ms(&self) -> mq_core::Result<u64> {
        // Read on every call rather than from the queue's cached offset: the lease rules compare
        // expiries written by other hosts, and one round trip per decision is cheap next to a
        // lease that outlives its holder because this host's clock ran slow.
        let reply = self
            .coll
            .client()
            .database(&self.coll.namespace().db)
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| backend("read the server's clock", e))?;
        let at = reply.get_datetime("localTime").map_err(|_| {
            mq_core::Error::backend(
                "mongo",
                "read the server's clock",
                "the server's hello reply has no localTime date; a lease table needs the \
                 server's clock",
            )
        })?;
        u64::try_from(at.timestamp_millis()).map_err(|_| {
            mq_core::Error::backend(
                "mongo",
                "read the server's clock",
                format!("the server's clock reads {at}, before 1970"),
            )
        })
    }

    async fn get(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
    ) -> mq_core::Result<Option<TableRecord>> {
        let found = self
            .coll
            .find_one(doc! { "_id": id(stream, kind, name) })
            .await
            .map_err(|e| backend("read lease record", e))?;
        found
            .as_ref()
            .map(|d| decode("read lease record", d))
            .transpose()
    }

    async fn list(&self, stream: &str, kind: &str) -> mq_core::Result<Vec<(String, TableRecord)>> {
        const OPERATION: &str = "list lease records";
        let docs: Vec<Document> = collect(
            self.coll.find(doc! { "stream": stream, "kind": kind }),
            OPERATION,
        )
        .await?;
        let mut out = docs
            .iter()
            .map(|d| Ok((name_of(OPERATION, d)?, decode(OPERATION, d)?)))
            .collect::<mq_core::Result<Vec<_>>>()?;
        // Sorted here, bytewise: a server's sort may follow a collation.
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(out)
    }

    async fn put(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
        value: &str,
        expected: Option<u64>,
    ) -> mq_core::Result<bool> {
        let Some(expected) = expected else {
            let fresh = doc! {
                "_id": id(stream, kind, name), "stream": stream, "kind": kind,
                "value": value, "version": 1_i64,
            };
            return match self.coll.insert_one(fresh).await {
                Ok(_) => Ok(true),
                Err(e) if is_duplicate_key(&e) => Ok(false),
                Err(e) => Err(backend("create lease record", e)),
            };
        };
        let Some(v) = version_bson(expected) else {
            return Ok(false);
        };
        let done = self
            .coll
            .update_one(
                doc! { "_id": id(stream, kind, name), "version": v },
                doc! { "$set": { "value": value }, "$inc": { "version": 1_i64 } },
            )
            .await
            .map_err(|e| backend("update lease record", e))?;
        Ok(done.matched_count == 1)
    }

    async fn delete(
        &self,
        stream: &str,
        kind: &str,
        name: &str,
        expected: u64,
    ) -> mq_core::Result<bool> {
        let Some(v) = version_bson(expected) else {
            return Ok(false);
        };
        let done = self
            .coll
            .delete_one(doc! { "_id": id(stream, kind, name), "version": v })
            .await
            .map_err(|e| backend("delete lease record", e))?;
        Ok(done.deleted_count == 1)
    }

    async fn bump(&self, stream: &str, kind: &str, name: &str) -> mq_core::Result<u64> {
        const OPERATION: &str = "bump lease record";
        let mut tries = 0;
        let after = loop {
            tries += 1;
            let result = self
                .coll
                .find_one_and_update(
                    doc! { "_id": id(stream, kind, name) },
                    doc! {
                        "$inc": { "version": 1_i64 },
                        "$setOnInsert": { "stream": stream, "kind": kind, "value": "" },
                    },
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match result {
                Ok(after) => break after,
                Err(e) if is_duplicate_key(&e) && tries < BUMP_TRIES => {
                    tracing::debug!(
                        stream,
                        kind,
                        name,
                        "mq-mongo: a concurrent bump created the record first; raising it again"
                    );
                }
                Err(e) => return Err(backend(OPERATION, e)),
            }
        };
        let Some(after) = after else {
            return Err(mq_core::Error::backend(
                "mongo",
                OPERATION,
                "the server returned no record after an upsert",
            ));
        };
        Ok(decode(OPERATION, &after)?.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_refuses_what_it_did_not_write() {
        let key = id("s", "lease", "a");
        let good = doc! { "_id": key.clone(), "value": "v", "version": 3_i64 };
        assert_eq!(decode("t", &good).unwrap(), TableRecord::new("v", 3));
        assert_eq!(name_of("t", &good).unwrap(), "a");
        for bad in [
            doc! { "_id": key.clone(), "value": 1, "version": 3_i64 },
            doc! { "_id": key.clone(), "value": "v" },
            doc! { "_id": key.clone(), "value": "v", "version": 0_i64 },
            doc! { "_id": key.clone(), "value": "v", "version": -2_i64 },
            doc! { "_id": key.clone(), "value": "v", "version": 1.5 },
        ] {
            let e = decode("t", &bad).unwrap_err();
            let text = mq_core::ErrorChain::from_error(&e).to_string();
            assert!(text.contains("not written by mq-mongo"), "{text}");
        }
        assert!(name_of("t", &doc! { "_id": "flat" }).is_err());
    }

    #[test]
    fn versions_beyond_i64_match_nothing() {
        assert_eq!(version_bson(7), Some(7));
        assert_eq!(version_bson(u64::MAX), None);
    }
}
