//! [`MongoCheckpointStore`]: durable Kinesis checkpoints with an epoch fence, in one collection.

use std::fmt;

use chrono::Utc;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, IndexModel};
use mq_core::async_trait;
use mq_core::backend::{
    CheckpointOutcome, CheckpointStore, StoredCheckpoint, normalize_sequence_number,
};

use crate::connect::{self, collect};
use crate::document::{as_u64, date};
use crate::error::{backend, is_duplicate_key};
use crate::options::MongoOptions;

/// Rounds of a compare-and-set before giving up (each lost round means another writer won).
const ROUNDS: usize = 64;

/// Durable shard checkpoints with an epoch fence, in the collection
/// [`MongoOptions::checkpoint_collection`] (default `mq_checkpoints`): the
/// [`mq_core::backend::CheckpointStore`] that mq-kinesis pairs with a lease store that may lose its data
/// (Redis without persistence).
///
/// One document per (stream, shard), keyed `{_id: {s: <stream>, h: <shard>}}`, holding the
/// sequence number (`seq`, decimal text without leading zeros) and its length (`seq_len`), the
/// epoch that wrote it, the newest epoch seen (`epoch`) and the time of the last change. Every
/// change is one conditional update whose filter expresses the rule: a checkpoint write matches
/// only when `epoch <= ` the writer's epoch and the stored number is smaller by
/// (`seq_len`, `seq`); an epoch observation only when the stored epoch is lower (with an upsert
/// for a new shard); an operator override compares and sets the epoch it read.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use mq_core::backend::CheckpointStore;
/// use mq_mongo::{MongoCheckpointStore, MongoOptions};
///
/// # async fn run() -> mq_core::Result<()> {
/// let options = MongoOptions::default()
///     .database("jobs")
///     .checkpoint_collection("kinesis_checkpoints");
/// let store: Arc<dyn CheckpointStore> =
///     Arc::new(MongoCheckpointStore::connect("mongodb://127.0.0.1:27017", options).await?);
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MongoCheckpointStore {
    coll: Collection<Document>,
}

impl fmt::Debug for MongoCheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoCheckpointStore")
            .field("collection", &self.coll.namespace().to_string())
            .finish_non_exhaustive()
    }
}

fn id(stream: &str, shard: &str) -> Document {
    doc! { "s": stream, "h": shard }
}

fn epoch_bson(epoch: u64) -> mq_core::Result<i64> {
    i64::try_from(epoch).map_err(|_| {
        mq_core::Error::invalid_option("epoch", format!("{epoch} does not fit a signed 64-bit"))
    })
}

fn get_u64(d: &Document, key: &str) -> u64 {
    as_u64(d.get(key))
}

fn decode(d: &Document) -> StoredCheckpoint {
    let shard = d.get_str("shard").unwrap_or_default().to_owned();
    let seq = match d.get("seq") {
        Some(Bson::String(s)) => Some(s.clone()),
        _ => None,
    };
    let updated_at = d
        .get_datetime("updated_at")
        .ok()
        .and_then(|t| chrono::DateTime::from_timestamp_millis(t.timestamp_millis()))
        .unwrap_or_else(Utc::now);
    StoredCheckpoint::new(
        shard,
        seq,
        get_u64(d, "written_epoch"),
        get_u64(d, "epoch"),
        updated_at,
    )
}

impl MongoCheckpointStore {
    /// A store on a new client for `uri`. The server must answer within
    /// [`MongoOptions::server_selection_timeout`], or this fails with
    /// [`mq_core::Error::Connect`] naming the hosts; the rest is as in
    /// [`MongoCheckpointStore::from_client`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> mq_core::Result<()> {
    /// let options = mq_mongo::MongoOptions::default().checkpoint_collection("kinesis_checkpoints");
    /// let store = mq_mongo::MongoCheckpointStore::connect("mongodb://db1:27017/?replicaSet=rs0", options).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn connect(uri: &str, options: MongoOptions) -> mq_core::Result<Self> {
        let client = connect::client(uri, &options).await?;
        connect::build_or_shut_down(client, async |c| Self::from_client(c, options).await).await
    }

    /// A store on `client` in [`MongoOptions::checkpoint_collection`]. Its one index (documents
    /// by stream, for listing) is created when missing; with
    /// [`MongoOptions::create_schema`]`(false)` a missing collection or index is an
    /// [`mq_core::Error::Backend`] whose source, [`crate::Error::MissingSchema`], names it. A bad
    /// name is an [`mq_core::Error::InvalidName`], before any call.
    ///
    /// # Examples
    ///
    /// One client for the queue and the checkpoints:
    ///
    /// ```no_run
    /// use mq_mongo::{MongoCheckpointStore, MongoOptions, MongoQueue, mongodb};
    ///
    /// # async fn run(client: mongodb::Client) -> mq_core::Result<()> {
    /// let options = MongoOptions::default().database("jobs");
    /// let queue = MongoQueue::from_client(client.clone(), options.clone()).await?;
    /// let checkpoints = MongoCheckpointStore::from_client(client, options).await?;
    /// # let _ = (queue, checkpoints); Ok(()) }
    /// ```
    pub async fn from_client(client: Client, options: MongoOptions) -> mq_core::Result<Self> {
        let index = IndexModel::builder()
            .keys(doc! { "stream": 1, "shard": 1 })
            .options(
                IndexOptions::builder()
                    .name("mq_checkpoint_stream".to_owned())
                    .build(),
            )
            .build();
        let name = options.get_checkpoint_collection();
        let coll = connect::store_collection(&client, &options, name, vec![index]).await?;
        Ok(MongoCheckpointStore { coll })
    }

    /// The collection.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(store: &mq_mongo::MongoCheckpointStore) {
    /// println!("{}", store.collection().name());
    /// # }
    /// ```
    pub fn collection(&self) -> &Collection<Document> {
        &self.coll
    }

    async fn find(&self, stream: &str, shard: &str) -> mq_core::Result<Option<Document>> {
        self.coll
            .find_one(doc! { "_id": id(stream, shard) })
            .await
            .map_err(|e| backend("load checkpoint", e))
    }

    /// Inserts a new shard's document; false when it exists already.
    async fn insert(&self, document: Document) -> mq_core::Result<bool> {
        match self.coll.insert_one(document).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(backend("save checkpoint", e)),
        }
    }
}

fn raced(operation: &'static str) -> mq_core::Error {
    mq_core::Error::backend(
        "mongo",
        operation,
        format!("lost {ROUNDS} compare-and-set rounds in a row; retry later"),
    )
}

#[async_trait]
impl CheckpointStore for MongoCheckpointStore {
    async fn load(&self, stream: &str, shard: &str) -> mq_core::Result<Option<StoredCheckpoint>> {
        Ok(self.find(stream, shard).await?.as_ref().map(decode))
    }

    async fn save(
        &self,
        stream: &str,
        shard: &str,
        epoch: u64,
        sequence_number: &str,
    ) -> mq_core::Result<CheckpointOutcome> {
        let seq = normalize_sequence_number(sequence_number)?;
        let e = epoch_bson(epoch)?;
        let len = i32::try_from(seq.len()).unwrap_or(i32::MAX);
        let filter = doc! {
            "_id": id(stream, shard),
            "epoch": { "$lte": e },
            "$or": [
                { "seq": Bson::Null },
                { "seq_len": { "$lt": len } },
                { "seq_len": len, "seq": { "$lt": &seq } },
            ],
        };
        for _ in 0..ROUNDS {
            let now = date(Utc::now());
            let done = self
                .coll
                .update_one(
                    filter.clone(),
                    doc! { "$set": {
                        "seq": &seq, "seq_len": len, "written_epoch": e, "epoch": e, "updated_at": now,
                    } },
                )
                .await
                .map_err(|err| backend("save checkpoint", err))?;
            if done.matched_count == 1 {
                return Ok(CheckpointOutcome::Advanced);
            }
            let Some(current) = self.find(stream, shard).await? else {
                let fresh = doc! {
                    "_id": id(stream, shard), "stream": stream, "shard": shard,
                    "seq": &seq, "seq_len": len, "written_epoch": e, "epoch": e, "updated_at": now,
                };
                if self.insert(fresh).await? {
                    return Ok(CheckpointOutcome::Advanced);
                }
                continue;
            };
            let c = decode(&current);
            match CheckpointOutcome::decide(c.sequence_number.as_deref(), c.epoch, epoch, &seq) {
                // changed between the update and the read: try again
                CheckpointOutcome::Advanced => continue,
                refused => return Ok(refused),
            }
        }
        Err(raced("save checkpoint"))
    }

    async fn observe_epoch(&self, stream: &str, shard: &str, epoch: u64) -> mq_core::Result<u64> {
        let e = epoch_bson(epoch)?;
        for _ in 0..ROUNDS {
            let result = self
                .coll
                .find_one_and_update(
                    doc! { "_id": id(stream, shard), "epoch": { "$lt": e } },
                    doc! {
                        "$set": { "epoch": e, "updated_at": date(Utc::now()) },
                        "$setOnInsert": {
                            "stream": stream, "shard": shard, "seq": Bson::Null, "seq_len": 0,
                            "written_epoch": 0_i64,
                        },
                    },
                )
                .upsert(true)
                .return_document(ReturnDocument::Before)
                .await;
            match result {
                Ok(before) => return Ok(before.as_ref().map_or(0, |d| get_u64(d, "epoch"))),
                // the document exists with an epoch at or above `epoch`
                Err(err) if is_duplicate_key(&err) => {
                    if let Some(d) = self.find(stream, shard).await? {
                        let current = get_u64(&d, "epoch");
                        if current >= epoch {
                            return Ok(current);
                        }
                    }
                }
                Err(err) => return Err(backend("observe epoch", err)),
            }
        }
        Err(raced("observe epoch"))
    }

    async fn max_epoch(&self, stream: &str, shard: &str) -> mq_core::Result<u64> {
        Ok(self
            .find(stream, shard)
            .await?
            .map_or(0, |d| get_u64(&d, "epoch")))
    }

    async fn checkpoints(&self, stream: &str) -> mq_core::Result<Vec<StoredCheckpoint>> {
        let docs: Vec<Document> = collect(
            self.coll.find(doc! { "stream": stream }),
            "list checkpoints",
        )
        .await?;
        let mut out: Vec<StoredCheckpoint> = docs.iter().map(decode).collect();
        out.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(out)
    }

    async fn set_checkpoint(
        &self,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> mq_core::Result<u64> {
        let seq = normalize_sequence_number(sequence_number)?;
        let len = i32::try_from(seq.len()).unwrap_or(i32::MAX);
        for _ in 0..ROUNDS {
            let now = date(Utc::now());
            match self.find(stream, shard).await? {
                None => {
                    let fresh = doc! {
                        "_id": id(stream, shard), "stream": stream, "shard": shard,
                        "seq": &seq, "seq_len": len, "written_epoch": 1_i64, "epoch": 1_i64,
                        "updated_at": now,
                    };
                    if self.insert(fresh).await? {
                        return Ok(1);
                    }
                }
                Some(d) => {
                    let old = get_u64(&d, "epoch");
                    let new = old + 1;
                    let (old_b, new_b) = (epoch_bson(old)?, epoch_bson(new)?);
                    let done = self
                        .coll
                        .update_one(
                            doc! { "_id": id(stream, shard), "epoch": old_b },
                            doc! { "$set": {
                                "seq": &seq, "seq_len": len, "written_epoch": new_b,
                                "epoch": new_b, "updated_at": now,
                            } },
                        )
                        .await
                        .map_err(|e| backend("set checkpoint", e))?;
                    if done.matched_count == 1 {
                        return Ok(new);
                    }
                }
            }
        }
        Err(raced("set checkpoint"))
    }
}
