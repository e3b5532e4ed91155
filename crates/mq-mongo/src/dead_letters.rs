//! [`MongoDeadLetterStore`]: dead letters in a MongoDB collection.

use chrono::{DateTime, Utc};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, IndexModel};
use mq_core::{
    BoxError, DeadLetter, DeadLetterEntry, DeadLetterFilter, DeadLetterSink, DeadLetterStore,
    EntryId, MessageId, ReplayMark, async_trait,
};

use crate::connect::{self, collect, prepare_schema};
use crate::error::{backend, is_duplicate_key};
use crate::options::MongoOptions;

/// Dead letters in a MongoDB collection: the [`DeadLetterStore`] of mq on MongoDB, in
/// [`MongoOptions::dead_letter_collection`] (default `mq_dead_letters`).
///
/// One document per dead-lettered message, `_id` the entry id, unique per queue and message id.
/// Times are Unix milliseconds, the message its JSON text (exactly as it was), the error chain an
/// array of strings, the original bytes of a record (Kinesis) BSON binary under
/// `original_bytes` (absent when there are none; documents written before read as `None`). [`DeadLetterStore::migrate`] writes nothing under
/// [`MongoOptions::create_schema`]`(false)`. Unlike the SQL stores, a multi-letter insert is not
/// one transaction: a retried insert can count a failure twice, never store a letter twice.
///
/// Give it to a queue through [`CommonOptions::dead_letters`](mq_core::CommonOptions::dead_letters)
/// so exhausted messages land here; list, count, replay (with `mq-dlq`) and purge them later.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use mq_core::{CommonOptions, DeadLetterFilter, DeadLetterStore};
/// use mq_mongo::{MongoDeadLetterStore, MongoOptions, MongoQueue};
///
/// # async fn run() -> mq_core::Result<()> {
/// let uri = "mongodb://127.0.0.1:27017";
/// let options = MongoOptions::default().database("jobs");
/// let dead_letters = Arc::new(MongoDeadLetterStore::connect(uri, options.clone()).await?);
/// let queue = MongoQueue::connect(
///     uri,
///     options.common(CommonOptions::default().dead_letters(dead_letters.clone())),
/// )
/// .await?;
/// println!("{} dead letters", dead_letters.count(&DeadLetterFilter::default()).await?);
/// # let _ = queue;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MongoDeadLetterStore {
    coll: Collection<Document>,
    create_schema: bool,
}

impl MongoDeadLetterStore {
    /// Connects to the server at `uri` (see [`MongoQueue::connect`](crate::MongoQueue::connect))
    /// and opens the store there.
    ///
    /// # Errors
    ///
    /// As [`MongoDeadLetterStore::from_client`], and [`mq_core::Error::Connect`] when no server
    /// answers.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mq_mongo::{MongoDeadLetterStore, MongoOptions};
    ///
    /// # async fn run() -> mq_core::Result<()> {
    /// let options = MongoOptions::default().dead_letter_collection("failed_jobs");
    /// let store = MongoDeadLetterStore::connect("mongodb://127.0.0.1:27017", options).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn connect(uri: &str, options: MongoOptions) -> mq_core::Result<Self> {
        let client = connect::client(uri, &options).await?;
        connect::build_or_shut_down(client, async |c| Self::from_client(c, options).await).await
    }

    /// The store in [`MongoOptions::dead_letter_collection`] of [`MongoOptions::database`], on
    /// a client the caller built. Creates its indexes when missing (as
    /// [`DeadLetterStore::migrate`] does), or checks that the collection and its indexes exist
    /// under [`MongoOptions::create_schema`]`(false)`.
    ///
    /// # Errors
    ///
    /// [`mq_core::Error::InvalidName`] for a bad name; [`mq_core::Error::Backend`] when the
    /// indexes cannot be created or are missing (the source is then
    /// [`crate::Error::MissingSchema`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mq_mongo::{MongoDeadLetterStore, MongoOptions, mongodb};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017").await?;
    /// // For a read-only tool: fail if the store was never set up, create nothing.
    /// let options = MongoOptions::default().database("jobs").create_schema(false);
    /// let store = MongoDeadLetterStore::from_client(client, options).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn from_client(client: Client, options: MongoOptions) -> mq_core::Result<Self> {
        let name = options.get_dead_letter_collection();
        let coll = connect::store_collection(&client, &options, name, indexes()).await?;
        Ok(MongoDeadLetterStore {
            coll,
            create_schema: options.get_create_schema(),
        })
    }

    /// Sets `fields` on the entry `filter` matches; true when one did.
    async fn set_one(
        &self,
        filter: Document,
        fields: Document,
        operation: &'static str,
    ) -> mq_core::Result<bool> {
        let r = self
            .coll
            .update_one(filter, doc! { "$set": fields })
            .await
            .map_err(err(operation))?;
        Ok(r.matched_count == 1)
    }

    /// The collection.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(store: &mq_mongo::MongoDeadLetterStore) {
    /// println!("{}", store.collection().namespace());
    /// # }
    /// ```
    pub fn collection(&self) -> &Collection<Document> {
        &self.coll
    }
}

/// One entry per (queue, message id); listing by failure time.
fn indexes() -> Vec<IndexModel> {
    let unique = IndexModel::builder()
        .keys(doc! { "queue": 1, "message_id": 1 })
        .options(IndexOptions::builder().unique(true).build())
        .build();
    let failed = IndexModel::builder()
        .keys(doc! { "last_failed_at": 1 })
        .build();
    vec![unique, failed]
}

fn err(operation: &'static str) -> impl Fn(mongodb::error::Error) -> mq_core::Error {
    move |e| backend(operation, e)
}

/// Milliseconds since the epoch, the unit the store keeps times in.
fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The query for `f`; `paging` adds `after`.
fn query(f: &DeadLetterFilter, paging: bool) -> Document {
    let mut q = Document::new();
    if let Some(queue) = f.get_queue() {
        q.insert("queue", queue.as_str());
    }
    if let Some(t) = f.get_message_type() {
        q.insert("message_type", t);
    }
    let mut time = Document::new();
    if let Some(t) = f.get_failed_after() {
        time.insert("$gte", to_ms(t));
    }
    if let Some(t) = f.get_failed_before() {
        time.insert("$lt", to_ms(t));
    }
    if !time.is_empty() {
        q.insert("last_failed_at", time);
    }
    let mut id = Document::new();
    if !f.get_ids().is_empty() {
        let ids: Vec<Bson> = f
            .get_ids()
            .iter()
            .map(|i| Bson::String(i.to_string()))
            .collect();
        id.insert("$in", ids);
    }
    if paging && let Some(after) = f.get_after() {
        id.insert("$gt", after.as_str());
    }
    if !id.is_empty() {
        q.insert("_id", id);
    }
    if !f.get_message_ids().is_empty() {
        let ids: Vec<Bson> = f
            .get_message_ids()
            .iter()
            .map(|i| Bson::String(i.as_str().to_owned()))
            .collect();
        q.insert("message_id", doc! { "$in": ids });
    }
    if let Some(needle) = f.get_error_contains() {
        let pattern: String = needle
            .chars()
            .flat_map(|c| {
                let escape = !c.is_alphanumeric() && c != ' ';
                escape.then_some('\\').into_iter().chain(std::iter::once(c))
            })
            .collect();
        q.insert("error_text", doc! { "$regex": pattern, "$options": "i" });
    }
    if let Some(s) = f.get_replay_state() {
        q.insert("replay_state", s.as_str());
    }
    q
}

fn read(d: &Document) -> mq_core::Result<DeadLetterEntry> {
    struct Fields<'d>(&'d Document);
    impl mq_core::DeadLetterFields for Fields<'_> {
        fn text(&self, name: &str) -> mq_core::Result<Option<String>> {
            let name = if name == "id" { "_id" } else { name };
            match self.0.get(name) {
                None | Some(Bson::Null) => Ok(None),
                Some(Bson::String(s)) => Ok(Some(s.clone())),
                // The error chain is kept as an array of strings.
                Some(Bson::Array(a)) => {
                    let causes: Vec<&str> = a.iter().filter_map(Bson::as_str).collect();
                    Ok(Some(serde_json::to_string(&causes).unwrap_or_default()))
                }
                Some(_) => Err(mistyped(self.0, name)),
            }
        }
        fn int(&self, name: &str) -> mq_core::Result<Option<i64>> {
            match self.0.get(name) {
                None | Some(Bson::Null) => Ok(None),
                Some(Bson::Int64(v)) => Ok(Some(*v)),
                Some(Bson::Int32(v)) => Ok(Some(i64::from(*v))),
                Some(Bson::Boolean(b)) => Ok(Some(i64::from(*b))),
                Some(_) => Err(mistyped(self.0, name)),
            }
        }
        fn bytes(&self, name: &str) -> mq_core::Result<Option<Vec<u8>>> {
            match self.0.get(name) {
                None | Some(Bson::Null) => Ok(None),
                Some(Bson::Binary(b)) => Ok(Some(b.bytes.clone())),
                Some(_) => Err(mistyped(self.0, name)),
            }
        }
    }
    fn mistyped(d: &Document, name: &str) -> mq_core::Error {
        mq_core::Error::corrupt_dead_letter(
            d.get_str("_id").unwrap_or("?"),
            format!("field {name} is mistyped"),
        )
    }
    DeadLetterEntry::from_fields(&Fields(d))
}

#[async_trait]
impl DeadLetterSink for MongoDeadLetterStore {
    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), BoxError> {
        Ok(DeadLetterStore::insert(self, letters).await?)
    }
}

#[async_trait]
impl DeadLetterStore for MongoDeadLetterStore {
    /// Creates the indexes, as building the store did; under
    /// [`MongoOptions::create_schema`]`(false)` only checks that they exist.
    async fn migrate(&self) -> mq_core::Result<()> {
        prepare_schema(&self.coll, indexes(), self.create_schema)
            .await
            .map(drop)
    }

    async fn insert(&self, letters: Vec<DeadLetter>) -> mq_core::Result<()> {
        for letter in letters {
            let e = DeadLetterEntry::from_letter(letter);
            let message = serde_json::to_string(&e.message)
                .map_err(|x| mq_core::Error::backend("mongo", "insert dead letter", x))?;
            let causes: Vec<Bson> = e
                .error
                .causes()
                .iter()
                .map(|c| Bson::String(c.clone()))
                .collect();
            let filter = doc! { "queue": e.queue().as_str(), "message_id": e.message.id.as_str() };
            let mut update = doc! {
                "$setOnInsert": {
                    "_id": e.id.as_str(),
                    "message_type": e.message.message_type.as_str(),
                    "message": message,
                    "backend": e.origin.backend.as_str(),
                    "shard_id": e.origin.shard_id.as_deref(),
                    "sequence_number": e.origin.sequence_number.as_deref(),
                    "replay_state": "none",
                    "replay_generation": 0_i64,
                },
                "$set": {
                    "error": causes,
                    "error_text": e.error.to_string(),
                    "exhausted": e.exhausted,
                    "consumer_id": e.consumer_id.as_str(),
                },
                "$inc": { "failures": 1_i64 },
                "$max": {
                    "attempts": i64::from(e.attempts),
                    "last_failed_at": to_ms(e.last_failed_at),
                },
                "$min": { "first_failed_at": to_ms(e.first_failed_at) },
            };
            if let Some(bytes) = e.original_bytes
                && let Ok(first) = update.get_document_mut("$setOnInsert")
            {
                let binary = Binary {
                    subtype: BinarySubtype::Generic,
                    bytes,
                };
                first.insert("original_bytes", binary);
            }
            // Two first upserts of one message race on the unique index; the loser retries
            // and finds the winner's document.
            let mut tries = 0;
            loop {
                tries += 1;
                match self
                    .coll
                    .update_one(filter.clone(), update.clone())
                    .upsert(true)
                    .await
                {
                    Ok(_) => break,
                    Err(x) if tries < 3 && is_duplicate_key(&x) => continue,
                    Err(x) => return Err(backend("insert dead letter", x)),
                }
            }
        }
        Ok(())
    }

    async fn list(&self, filter: &DeadLetterFilter) -> mq_core::Result<Vec<DeadLetterEntry>> {
        let mut find = self.coll.find(query(filter, true)).sort(doc! { "_id": 1 });
        if let Some(n) = filter.get_limit() {
            find = find.limit(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let docs: Vec<Document> = collect(find, "list dead letters").await?;
        docs.iter().map(read).collect()
    }

    async fn get(&self, id: &EntryId) -> mq_core::Result<Option<DeadLetterEntry>> {
        let d = self
            .coll
            .find_one(doc! { "_id": id.as_str() })
            .await
            .map_err(err("get dead letter"))?;
        d.as_ref().map(read).transpose()
    }

    async fn count(&self, filter: &DeadLetterFilter) -> mq_core::Result<u64> {
        self.coll
            .count_documents(query(filter, false))
            .await
            .map_err(err("count dead letters"))
    }

    async fn begin_replay(
        &self,
        id: &EntryId,
        expected_generation: u32,
        mark: &ReplayMark,
    ) -> mq_core::Result<bool> {
        let entry = doc! {
            "_id": id.as_str(),
            "replay_generation": i64::from(expected_generation),
            "replay_state": { "$ne": "pending" },
        };
        let pending = doc! {
            "replay_state": "pending",
            "replay_generation": i64::from(mark.generation),
            "replay_message_id": mark.message_id.as_str(),
            "replay_target": mark.target.as_str(),
            "replay_started_at": to_ms(mark.started_at),
            "replayed_at": Bson::Null,
        };
        self.set_one(entry, pending, "begin replay").await
    }

    async fn finish_replay(
        &self,
        id: &EntryId,
        message_id: &MessageId,
        at: DateTime<Utc>,
    ) -> mq_core::Result<bool> {
        let entry = doc! {
            "_id": id.as_str(),
            "replay_message_id": message_id.as_str(),
            "replay_state": "pending",
        };
        let done = doc! { "replay_state": "done", "replayed_at": to_ms(at) };
        if self.set_one(entry, done, "finish replay").await? {
            return Ok(true);
        }
        let n = self
            .coll
            .count_documents(doc! { "_id": id.as_str(), "replay_message_id": message_id.as_str() })
            .await
            .map_err(err("finish replay"))?;
        Ok(n > 0)
    }

    async fn purge(&self, filter: &DeadLetterFilter) -> mq_core::Result<u64> {
        let r = self
            .coll
            .delete_many(query(filter, false))
            .await
            .map_err(err("purge dead letters"))?;
        Ok(r.deleted_count)
    }
}
