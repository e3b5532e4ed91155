//! [`MongoStore`]: the [`QueueStore`] on a MongoDB collection.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use chrono::{DateTime, Utc};
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use mq_core::backend::duplicate_id;
use mq_core::backend::{
    Claim, Claimed, Completion, CompletionAction, Holder, QueueStore, Undecodable,
};
use mq_core::{
    CancelOutcome, CancelTarget, ErrorChain, Message, MessageId, QueueName, QueueStats, Result,
    Status, async_trait,
};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::ServerClock;
use crate::connect::{collect, prepare_schema};
use crate::document::{Decoded, Doc, Key, chrono, date, date_ceil, decode, doc_projection};
use crate::error::{backend, is_duplicate_code};
use crate::options::{ClaimStrategy, MongoOptions};
use crate::wake::{self, Wake};

/// How many find-then-take rounds a batch claim makes when other consumers win some races.
const CLAIM_ROUNDS: usize = 3;
/// A batch claim picks its messages at random among this many times as many of the oldest ready
/// ones.
const CLAIM_WINDOW: usize = 4;
/// Tries to take a unique key (the second one after taking over a lock of a finished holder).
const KEY_ROUNDS: usize = 2;
/// How long a unique-key lock whose holder is not stored yet still holds: the publisher that
/// wrote it is between its two writes. Past this it counts as left behind by a publisher that
/// died there, and the next publish of the key takes it over.
const KEY_ORPHAN_AFTER: Duration = Duration::from_secs(30);
/// Expired messages marked per claim call (the rest on the next calls).
const EXPIRE_PAGE: i64 = 1000;

/// Messages of every queue in one MongoDB collection, claimed atomically under leases.
///
/// Each message is one document keyed `"<queue>/<message id>"`. A claim
/// takes a document only through an update whose filter still sees it ready (or its lease
/// expired), so two consumers never hold one message; renewals and completions are fenced on
/// the owner, the attempt number and an unexpired lease. Every time it writes or compares
/// (`execute_at`, leases, expiry) is on the server's clock: the store measures the offset of
/// this host's clock to the server's when it connects and every 30 seconds, so a host whose
/// clock is off neither moves work early or late nor takes over running leases. Times in the
/// messages it returns are on the server's clock too.
///
/// Claims take higher priorities first and, within a priority, the oldest `execute_at`; a
/// unique key is held by one waiting or running message per queue (and for its window after it
/// finished); a paused queue (one small document per queue in
/// [`MongoOptions::control_collection`]) hands out nothing to any consumer.
///
/// Built by [`MongoQueue`](crate::MongoQueue), which hands it out for inspection and for tools
/// that drive the [`QueueStore`] contract directly.
///
/// # Examples
///
/// ```no_run
/// use mq_mongo::{MongoOptions, MongoQueue};
///
/// # async fn run() -> mq_core::Result<()> {
/// let queue = MongoQueue::connect("mongodb://127.0.0.1:27017", MongoOptions::default()).await?;
/// let store = queue.store();
/// println!("{} in {}", store.options().get_collection(), store.options().get_database());
/// # Ok(())
/// # }
/// ```
pub struct MongoStore {
    client: Client,
    db: Database,
    coll: Collection<Doc>,
    pub(crate) raw: Collection<Document>,
    controls: Collection<Document>,
    pub(crate) clock: ServerClock,
    options: MongoOptions,
    watching: OnceCell<()>,
    wake: Arc<Wake>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    token_prefix: String,
    token_seq: AtomicU64,
    swept: Mutex<HashMap<String, Instant>>,
    /// When finished messages past their retention were last cut down to their id, and up to
    /// which `finished_at` (see [`MongoOptions::idempotency_window`]).
    compacted: Mutex<(Option<Instant>, Option<DateTime<Utc>>)>,
}

impl fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.options.get_database())
            .field("collection", &self.options.get_collection())
            .field("change_stream_live", &self.wake.is_live())
            .finish_non_exhaustive()
    }
}

impl Drop for MongoStore {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl MongoStore {
    /// A store in `options`' database and collection, using `client`; the options are checked
    /// by the caller, and nothing is created until [`MongoStore::prepare_schema`].
    pub(crate) fn new(client: Client, options: MongoOptions) -> Self {
        let db = client.database(options.get_database());
        let coll = db.collection::<Doc>(options.get_collection());
        let raw = db.collection::<Document>(options.get_collection());
        let controls = db.collection::<Document>(options.get_control_collection());
        MongoStore {
            client,
            db,
            coll,
            raw,
            controls,
            clock: ServerClock::default(),
            options,
            watching: OnceCell::new(),
            wake: Arc::default(),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            token_prefix: format!("{:016x}", rand::random::<u64>()),
            token_seq: AtomicU64::new(0),
            swept: Mutex::default(),
            compacted: Mutex::default(),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The options in force.
    pub fn options(&self) -> &MongoOptions {
        &self.options
    }

    /// True while a change stream wakes idle consumers (false before the first `register`, on
    /// servers without change streams, and while the stream is being reopened).
    pub fn change_stream_live(&self) -> bool {
        self.wake.is_live()
    }

    /// Stops the change-stream task and waits for it. The store keeps working (consumers poll).
    pub async fn close(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn token(&self) -> String {
        let n = self.token_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.token_prefix)
    }

    /// Now, on the server's clock.
    pub(crate) async fn now(&self) -> DateTime<Utc> {
        self.clock.now(&self.db).await
    }

    /// Creates the indexes of the collection (claiming, expiry, unique keys, retention), or
    /// checks that they exist when [`MongoOptions::create_schema`] is off; measures the offset
    /// to the server's clock.
    pub(crate) async fn prepare_schema(&self) -> Result<()> {
        self.clock.measure(&self.db).await;
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        let mut models = vec![
            index(
                doc! { "queue": 1, "status": 1, "priority": -1, "execute_at": 1 },
                "mq_claim",
            ),
            index(
                doc! { "queue": 1, "status": 1, "expires_at": 1 },
                "mq_expiry",
            ),
        ];
        if let Some(age) = self.options.get_document_lifetime() {
            let mut ttl = index(doc! { "finished_at": 1 }, "mq_retention");
            if let Some(o) = ttl.options.as_mut() {
                o.expire_after = Some(age);
            }
            models.push(ttl);
        }
        let replaced = prepare_schema(&self.raw, models, self.options.get_create_schema()).await?;
        if replaced.iter().any(|name| name == "mq_claim") {
            // Messages written before priorities have no `priority`, which the claim index
            // sorts below every number: give the waiting ones the default so they keep their
            // place in line.
            let res = self
                .raw
                .update_many(
                    doc! {
                        "status": { "$in": ["scheduled", "processing"] },
                        "priority": { "$exists": false },
                    },
                    doc! { "$set": { "priority": 0_i32 } },
                )
                .await
                .map_err(|e| backend("upgrade", e))?;
            tracing::info!(collection = %self.raw.namespace(), messages = res.modified_count,
                "mq-mongo: the claim index now orders by priority; waiting messages got priority 0");
        }
        Ok(())
    }

    /// Starts the change stream, once.
    async fn watch(&self) {
        self.watching
            .get_or_init(|| async {
                if self.options.get_change_stream() && !self.cancel.is_cancelled() {
                    self.tasks.spawn(wake::watch(
                        self.raw.clone(),
                        self.wake.clone(),
                        self.cancel.child_token(),
                    ));
                }
            })
            .await;
    }

    /// Scheduled, due and not expired.
    fn due_filter(queue: &QueueName, now: bson::DateTime) -> Document {
        doc! {
            "queue": queue.as_str(),
            "status": "scheduled",
            "execute_at": { "$lte": now },
            "$or": [ { "expires_at": Bson::Null }, { "expires_at": { "$gt": now } } ],
        }
    }

    /// Processing under a lease that expired (a consumer that crashed or hung).
    fn recover_filter(queue: &QueueName, now: bson::DateTime) -> Document {
        doc! {
            "queue": queue.as_str(),
            "status": "processing",
            "lease_expires_at": { "$lte": now },
        }
    }

    /// Either of the above: what a claim may take.
    fn ready_filter(queue: &QueueName, now: bson::DateTime) -> Document {
        doc! { "$or": [ Self::due_filter(queue, now), Self::recover_filter(queue, now) ] }
    }

    /// True when this claim should also look for expired messages and expired leases: at most
    /// once per [`MongoOptions::sweep_interval`] per queue and store.
    fn should_sweep(&self, queue: &QueueName) -> bool {
        let now = Instant::now();
        let mut last = self.swept.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(queue.as_str()) {
            Some(t) if now.duration_since(*t) < self.options.get_sweep_interval() => false,
            _ => {
                last.insert(queue.as_str().to_owned(), now);
                true
            }
        }
    }

    /// Delivery order, higher priority first, then oldest `execute_at`: the claim index gives
    /// it without a blocking sort; messages with the same priority and `execute_at` come in
    /// index (insertion) order.
    fn sort() -> Document {
        doc! { "priority": -1, "execute_at": 1 }
    }

    fn claim_update(
        owner: &str,
        now: bson::DateTime,
        lease_end: bson::DateTime,
        token: &str,
    ) -> Document {
        doc! {
            "$set": {
                "status": "processing",
                "lease_owner": owner,
                "lease_expires_at": lease_end,
                "processing_started_at": now,
                "updated_at": now,
                "claim_token": token,
            },
            "$inc": { "attempts": 1_i64 },
        }
    }

    async fn find_ids(
        &self,
        filter: Document,
        sort: Option<Document>,
        limit: i64,
    ) -> Result<Vec<Bson>> {
        let mut find = self
            .raw
            .find(filter)
            .projection(doc! { "_id": 1 })
            .limit(limit);
        if let Some(s) = sort {
            find = find.sort(s);
        }
        let docs: Vec<Document> = collect(find, "claim").await?;
        Ok(docs
            .into_iter()
            .filter_map(|mut d| d.remove("_id"))
            .collect())
    }

    async fn read_tagged(
        &self,
        ids: Vec<Bson>,
        field: &str,
        token: &str,
        op: &'static str,
    ) -> Result<Taken> {
        if ids.is_empty() {
            return Ok(Taken::default());
        }
        // Claim order is the order of `ids` (the claim index's), which `$in` does not keep.
        let position: HashMap<String, usize> = ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| Some((id.as_str()?.to_owned(), i)))
            .collect();
        let find = self
            .raw
            .find(doc! { "_id": { "$in": ids }, field: token })
            .projection(doc_projection());
        let mut docs: Vec<Document> = collect(find, op).await?;
        docs.sort_by_key(|d| {
            d.get_str("_id")
                .ok()
                .and_then(|k| position.get(k).copied())
                .unwrap_or(usize::MAX)
        });
        let mut taken = Taken::default();
        for d in docs {
            taken.push(d);
        }
        Ok(taken)
    }

    /// Under an [`MongoOptions::idempotency_window`], cuts the messages whose retention passed
    /// (since the last call) down to what refuses their id again: payload, metadata and last
    /// error go; the TTL index deletes the rest when the window passed. At most once per
    /// [`MongoOptions::sweep_interval`]; each call looks only at messages that finished after
    /// the previous call's cutoff.
    async fn compact(&self, now: DateTime<Utc>) -> Result<()> {
        let (Some(age), Some(_)) = (
            self.options.get_retention(),
            self.options.get_idempotency_window(),
        ) else {
            return Ok(());
        };
        let cutoff = mq_before(now, age);
        let since = {
            let mut last = self.compacted.lock().unwrap_or_else(|e| e.into_inner());
            if last
                .0
                .is_some_and(|t| t.elapsed() < self.options.get_sweep_interval())
            {
                return Ok(());
            }
            last.0 = Some(Instant::now());
            last.1
        };
        let mut range = doc! { "$lte": date(cutoff) };
        if let Some(since) = since {
            range.insert("$gt", date(since));
        }
        self.raw
            .update_many(
                doc! { "finished_at": range, "payload": { "$exists": true } },
                doc! { "$unset": {
                    "payload": "", "metadata": "", "last_error": "", "partition_key": "",
                } },
            )
            .await
            .map_err(|e| backend("compact", e))?;
        self.compacted.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(cutoff);
        Ok(())
    }

    /// Marks scheduled messages past `expires_at` expired; returns the ones this call flipped.
    async fn expire(&self, queue: &QueueName, now: DateTime<Utc>) -> Result<Vec<Message>> {
        let nowb = date(now);
        let filter = doc! {
            "queue": queue.as_str(), "status": "scheduled", "expires_at": { "$lte": nowb },
        };
        let ids = self.find_ids(filter.clone(), None, EXPIRE_PAGE).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let token = self.token();
        let mut cond = filter;
        cond.insert("_id", doc! { "$in": ids.clone() });
        self.raw
            .update_many(
                cond,
                doc! { "$set": {
                    "status": "expired", "updated_at": nowb, "finished_at": nowb, "op_token": &token,
                } },
            )
            .await
            .map_err(|e| backend("claim", e))?;
        let taken = self.read_tagged(ids, "op_token", &token, "claim").await?;
        if !taken.undecodable.is_empty() {
            tracing::warn!(%queue, count = taken.undecodable.len(),
                "mq-mongo: expired documents that do not decode as messages are left marked expired");
        }
        Ok(taken.messages)
    }

    async fn claim_batch(&self, c: &ClaimRequest<'_>) -> Result<Taken> {
        let mut candidates: Vec<Bson> = Vec::new();
        let mut taken: u64 = 0;
        for round in 0..CLAIM_ROUNDS {
            let want = c
                .limit
                .saturating_sub(usize::try_from(taken).unwrap_or(usize::MAX));
            if want == 0 {
                break;
            }
            match self
                .claim_round(c, round, want, &mut candidates, &mut taken)
                .await
            {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    keep_what_was_claimed(c.queue, usize::try_from(taken).unwrap_or(1), e)?;
                    break;
                }
            }
        }
        if taken == 0 {
            return Ok(Taken::default());
        }
        self.read_tagged(candidates, "claim_token", &c.token, "claim")
            .await
    }

    /// One round of a batch claim: picks up to `want` ready documents and leases them, adding
    /// their ids to `candidates` and the number actually taken to `taken`. True when another
    /// round may find more.
    async fn claim_round(
        &self,
        c: &ClaimRequest<'_>,
        round: usize,
        want: usize,
        candidates: &mut Vec<Bson>,
        taken: &mut u64,
    ) -> Result<bool> {
        let (queue, nowb, sweep) = (c.queue, c.now, c.sweep);
        let want_i = i64::try_from(want).unwrap_or(i64::MAX);
        let mut ids = Vec::new();
        let mut full_window = false;
        if sweep && round == 0 {
            ids = self
                .find_ids(
                    Self::recover_filter(queue, nowb),
                    Some(Self::sort()),
                    want_i,
                )
                .await?;
        }
        let recovered = ids.len();
        if recovered < want {
            // Consumers that race for the same oldest documents mostly lose: look at a
            // window of the oldest ready ones and take a random part of it, so concurrent
            // claims rarely collide. Order is kept within the window.
            let need = want - recovered;
            let window = need.saturating_mul(CLAIM_WINDOW);
            let filter = Self::due_filter(queue, nowb);
            let find = self
                .raw
                .find(filter)
                .projection(doc! { "_id": 1, "priority": 1 })
                .sort(Self::sort())
                .limit(i64::try_from(window).unwrap_or(i64::MAX));
            let due: Vec<Document> = collect(find, "claim").await?;
            let due: Vec<(Bson, i32)> = due
                .into_iter()
                .filter_map(|mut d| {
                    let p = i32::try_from(as_i64(d.get("priority"))).unwrap_or(0);
                    d.remove("_id").map(|id| (id, p))
                })
                .collect();
            if due.len() > need {
                // the window was full: more may be ready after it
                full_window = true;
            }
            ids.extend(pick_from_window(due, need));
        }
        if ids.is_empty() {
            return Ok(false);
        }
        let found = ids.len();
        let mut cond = Self::ready_filter(queue, nowb);
        cond.insert("_id", doc! { "$in": ids.clone() });
        let res = self
            .raw
            .update_many(cond, c.update.clone())
            .await
            .map_err(|e| backend("claim", e))?;
        *taken += res.modified_count;
        candidates.extend(ids);
        // Fewer ready documents than asked for: there are no more. Otherwise go again if
        // other consumers won some of these.
        Ok(found >= want || full_window)
    }

    async fn claim_one_by_one(&self, c: &ClaimRequest<'_>) -> Result<Taken> {
        let mut out = Taken::default();
        let mut recovering = c.sweep;
        while out.len() < c.limit {
            let filter = if recovering {
                Self::recover_filter(c.queue, c.now)
            } else {
                Self::due_filter(c.queue, c.now)
            };
            let doc = self
                .raw
                .find_one_and_update(filter, c.update.clone())
                .sort(Self::sort())
                .projection(doc_projection())
                .return_document(ReturnDocument::After)
                .await
                .map_err(|e| backend("claim", e));
            match doc {
                Ok(Some(d)) => out.push(d),
                Ok(None) if recovering => recovering = false,
                Ok(None) => break,
                Err(e) => {
                    keep_what_was_claimed(c.queue, out.len(), e)?;
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Adds to `filter` the conditions that select exactly `claims`: `_id` in their keys and
    /// `attempts` equal to each claim's attempt (an `$or` per attempt number when they differ).
    /// Returns the keys.
    fn match_claims(filter: &mut Document, queue: &QueueName, claims: &[&Claim]) -> Vec<Bson> {
        let mut by_attempt: HashMap<u32, Vec<Bson>> = HashMap::new();
        let mut all = Vec::with_capacity(claims.len());
        for c in claims {
            let k = Key::bson(queue, &c.id);
            by_attempt.entry(c.attempt).or_default().push(k.clone());
            all.push(k);
        }
        filter.insert("_id", doc! { "$in": all.clone() });
        if by_attempt.len() == 1 {
            if let Some(a) = by_attempt.keys().next() {
                filter.insert("attempts", i64::from(*a));
            }
        } else {
            let groups: Vec<Document> = by_attempt
                .into_iter()
                .map(|(a, keys)| doc! { "_id": { "$in": keys }, "attempts": i64::from(a) })
                .collect();
            filter.insert("$or", groups);
        }
        all
    }

    fn fence(queue: &QueueName, owner: &str, now: bson::DateTime) -> Document {
        doc! {
            "queue": queue.as_str(),
            "status": "processing",
            "lease_owner": owner,
            "lease_expires_at": { "$gt": now },
        }
    }

    /// The claims among `claims` whose document does not carry `token` (not applied).
    async fn not_tagged(
        &self,
        queue: &QueueName,
        claims: Vec<Claim>,
        all: Vec<Bson>,
        token: &str,
        op: &'static str,
    ) -> Result<Vec<Claim>> {
        let find = self
            .raw
            .find(doc! { "_id": { "$in": all }, "op_token": token })
            .projection(doc! { "_id": 1 });
        let docs: Vec<Document> = collect(find, op).await?;
        let applied: HashSet<&str> = docs.iter().filter_map(|d| d.get_str("_id").ok()).collect();
        Ok(claims
            .into_iter()
            .filter(|c| !applied.contains(Key::string(queue, &c.id).as_str()))
            .collect())
    }
}

impl MongoStore {
    /// True while `queue` is paused (its control document says so).
    async fn paused(&self, queue: &QueueName, op: &'static str) -> Result<bool> {
        let control = self
            .controls
            .find_one(doc! { "_id": Self::pause_id(queue) })
            .projection(doc! { "paused": 1 })
            .await
            .map_err(|e| backend(op, e))?;
        Ok(control.is_some_and(|c| c.get_bool("paused").unwrap_or(false)))
    }

    /// The `_id` of the control document that pauses `queue`.
    fn pause_id(queue: &QueueName) -> String {
        format!("paused/{}", queue.as_str())
    }

    /// The `_id` of the control document of a unique key.
    fn key_id(queue: &QueueName, key: &str) -> String {
        format!("key/{}/{key}", queue.as_str())
    }

    /// True while the message `holder` of `queue` keeps its unique key: it waits or runs, or
    /// finished less than its window ago. A message that is gone (deleted by retention, or
    /// never stored) holds nothing.
    async fn key_blocks(
        &self,
        queue: &QueueName,
        holder: &MessageId,
        taken_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let doc = self
            .raw
            .find_one(doc! { "_id": Key::bson(queue, holder) })
            .projection(doc! { "finished_at": 1, "unique_window_ms": 1 })
            .await
            .map_err(|e| backend("publish", e))?;
        Ok(match doc {
            // Not stored (yet): a lock this young belongs to a publish between its two writes.
            None => taken_at.is_some_and(|t| mq_after(t, KEY_ORPHAN_AFTER) > now),
            Some(d) => match d.get_datetime("finished_at") {
                Err(_) => true,
                Ok(finished) => {
                    let window = u64::try_from(as_i64(d.get("unique_window_ms"))).unwrap_or(0);
                    mq_after(chrono(*finished), Duration::from_millis(window)) > now
                }
            },
        })
    }

    /// Takes the unique keys of `messages[candidates]` before they are stored: one lock
    /// document per key in the control collection, naming its holder. A key is held while its
    /// holder waits or runs and for its window after it finished; the lock of a holder that
    /// finished longer ago, or is gone, is taken over. Returns the refusals by position in
    /// `messages`, and the positions whose lock this call wrote.
    async fn take_keys(
        &self,
        queue: &QueueName,
        messages: &[Message],
        candidates: &[usize],
        now: DateTime<Utc>,
    ) -> Result<(HashMap<usize, mq_core::Error>, Vec<usize>)> {
        let taken_by = |key: &str, holder: &MessageId| mq_core::Error::DuplicateKey {
            key: key.to_owned(),
            holder: holder.clone(),
            queue: queue.clone(),
        };
        let mut refused = HashMap::new();
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut pending = Vec::new();
        for &i in candidates {
            let Some(key) = messages[i].unique_key.as_deref() else {
                continue;
            };
            if let Some(&j) = first.get(key) {
                refused.insert(i, taken_by(key, &messages[j].id));
            } else {
                first.insert(key, i);
                pending.push(i);
            }
        }
        let key_of = |i: usize| messages[i].unique_key.as_deref().unwrap_or_default();
        let mut written = Vec::new();
        for round in 0..KEY_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let locks: Vec<Document> = pending
                .iter()
                .map(|&i| {
                    doc! {
                        "_id": Self::key_id(queue, key_of(i)),
                        "holder": messages[i].id.as_str(),
                        "taken_at": date(now),
                    }
                })
                .collect();
            let failed: HashSet<usize> = match self.controls.insert_many(locks).ordered(false).await
            {
                Ok(_) => HashSet::new(),
                Err(e) => match &*e.kind {
                    ErrorKind::InsertMany(f)
                        if f.write_concern_error.is_none()
                            && f.write_errors
                                .iter()
                                .flatten()
                                .all(|w| is_duplicate_code(w.code)) =>
                    {
                        f.write_errors
                            .iter()
                            .flatten()
                            .filter_map(|w| pending.get(w.index).copied())
                            .collect()
                    }
                    _ => return Err(backend("publish", e)),
                },
            };
            written.extend(pending.iter().filter(|i| !failed.contains(i)));
            let last = round + 1 == KEY_ROUNDS;
            let mut again = Vec::new();
            for i in pending.iter().copied().filter(|i| failed.contains(i)) {
                let (key, id) = (key_of(i), Self::key_id(queue, key_of(i)));
                let lock = self
                    .controls
                    .find_one(doc! { "_id": &id })
                    .await
                    .map_err(|e| backend("publish", e))?;
                let holder = lock
                    .as_ref()
                    .and_then(|l| l.get_str("holder").ok())
                    .and_then(|h| MessageId::new(h).ok());
                let taken_at = lock
                    .as_ref()
                    .and_then(|l| l.get_datetime("taken_at").ok())
                    .map(|t| chrono(*t));
                match holder {
                    // Its own lock from an earlier publish: the insert reports the duplicate id.
                    Some(h) if h == messages[i].id => {}
                    Some(h) if last || self.key_blocks(queue, &h, taken_at, now).await? => {
                        refused.insert(i, taken_by(key, &h));
                    }
                    Some(h) => {
                        self.controls
                            .delete_one(doc! { "_id": &id, "holder": h.as_str() })
                            .await
                            .map_err(|e| backend("publish", e))?;
                        again.push(i);
                    }
                    None if last => {
                        refused.insert(
                            i,
                            mq_core::Error::backend(
                                "mongo",
                                "publish",
                                format!(
                                    "unique key {key:?} of message {} is contended by other publishers; publish it again",
                                    messages[i].id
                                ),
                            ),
                        );
                    }
                    None => again.push(i),
                }
            }
            pending = again;
        }
        Ok((refused, written))
    }

    /// Gives back the unique keys this publish took for messages that were not stored.
    async fn release_keys(&self, queue: &QueueName, messages: &[(usize, &Message)]) {
        for (_, m) in messages {
            let Some(key) = &m.unique_key else {
                continue;
            };
            let lock = doc! { "_id": Self::key_id(queue, key), "holder": m.id.as_str() };
            if let Err(e) = self.controls.delete_one(lock).await {
                // A lock left behind names a message that does not exist: the next publish of
                // the key takes it over.
                tracing::debug!(%queue, key, error = %e, "mq-mongo: releasing a unique key failed");
            }
        }
    }
}

/// One claim call, as both strategies see it.
struct ClaimRequest<'a> {
    queue: &'a QueueName,
    limit: usize,
    now: bson::DateTime,
    /// The update that takes a document (see [`MongoStore::claim_update`]).
    update: Document,
    /// The claim token the update writes.
    token: String,
    /// Also take messages whose lease expired.
    sweep: bool,
}

/// An integer field of any numeric type as `i64` (0 when missing or not a number).
fn as_i64(b: Option<&Bson>) -> i64 {
    match b {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

/// Picks `need` of the `window` (ready messages in claim order, with their priority) so that
/// concurrent claims rarely race for the same documents, without breaking priority order:
/// every message of a priority above the lowest one needed is taken, and a random part of the
/// lowest one fills the rest. Claim order is kept.
fn pick_from_window(window: Vec<(Bson, i32)>, need: usize) -> Vec<Bson> {
    if window.len() <= need {
        return window.into_iter().map(|(id, _)| id).collect();
    }
    let Some(&(_, cutoff)) = window.get(need.saturating_sub(1)) else {
        return Vec::new();
    };
    let above = window.iter().take_while(|(_, p)| *p > cutoff).count();
    let at_cutoff = window[above..]
        .iter()
        .take_while(|(_, p)| *p == cutoff)
        .count();
    let mut picked: Vec<usize> =
        rand::seq::index::sample(&mut rand::rng(), at_cutoff, need - above).into_vec();
    picked.sort_unstable();
    window[..above]
        .iter()
        .map(|(id, _)| id.clone())
        .chain(picked.into_iter().map(|i| window[above + i].0.clone()))
        .collect()
}

/// `now - d`, saturating.
fn mq_before(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `now + d`, saturating.
fn mq_after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Decides what a claim does when a step fails after `taken` messages were already leased to
/// this consumer: those are handed out (the failure is logged) rather than left stranded until
/// their lease runs out; with nothing taken, the claim fails with `error`.
fn keep_what_was_claimed(queue: &QueueName, taken: usize, error: mq_core::Error) -> Result<()> {
    if taken == 0 {
        return Err(error);
    }
    tracing::warn!(%queue, taken, error = %ErrorChain::from_error(&error),
        "mq: a claim step failed; delivering what was already claimed");
    Ok(())
}

/// Joins the two halves of a claim that ran side by side. The claimed messages are leased to
/// this consumer whatever happened to the expiry sweep, so they are returned even when the
/// sweep failed (it runs again on a later claim); only a failed claim fails the call.
fn join_claim(
    queue: &QueueName,
    expired: Result<Vec<Message>>,
    claimed: Result<Taken>,
) -> Result<Claimed> {
    let Taken {
        messages,
        undecodable,
    } = claimed?;
    let expired = expired.unwrap_or_else(|e| {
        tracing::warn!(%queue, error = %ErrorChain::from_error(&e),
            "mq: expiring overdue messages failed; it is tried again on a later claim");
        Vec::new()
    });
    Ok(Claimed::new(messages, expired).with_undecodable(undecodable))
}

/// What a claim took: the messages, and the documents that do not decode as messages (the
/// runtime dead-letters each alone, so they never hold back their batch).
#[derive(Debug, Default)]
struct Taken {
    messages: Vec<Message>,
    undecodable: Vec<Undecodable>,
}

impl Taken {
    fn len(&self) -> usize {
        self.messages.len() + self.undecodable.len()
    }

    /// Adds a claimed document.
    fn push(&mut self, raw: Document) {
        match decode(raw) {
            Decoded::Message(m) => self.messages.push(*m),
            Decoded::Undecodable(row) => self.undecodable.push(row),
            Decoded::Unnamed(reason) => {
                // Nothing can complete it: it comes back when its lease ends.
                tracing::error!(
                    reason,
                    "mq-mongo: a claimed document has no message key and cannot be handled; remove it"
                );
            }
        }
    }
}

#[async_trait]
impl QueueStore for MongoStore {
    async fn close(&self) {
        MongoStore::close(self).await;
    }

    fn backend(&self) -> &'static str {
        "mongo"
    }

    async fn register(&self, queue: &QueueName) -> Result<()> {
        self.watch().await;
        // Create the signal now so a wake-up that arrives before the first wait is not lost.
        let _ = self.wake.notify(queue.as_str());
        Ok(())
    }

    async fn insert(&self, queue: &QueueName, messages: Vec<Message>) -> Result<Vec<Result<()>>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(messages.len());
        let mut docs = Vec::with_capacity(messages.len());
        // position in `docs` -> position in `messages`
        let mut origin = Vec::with_capacity(messages.len());
        let now = if messages.iter().any(|m| m.unique_key.is_some()) {
            Some(self.now().await)
        } else {
            None
        };
        for (i, m) in messages.iter().enumerate() {
            match Doc::from_message(m, &self.clock) {
                Ok(d) => {
                    docs.push(d);
                    origin.push(i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(mq_core::Error::backend("mongo", "publish", e))),
            }
        }
        let mut locked = Vec::new();
        if let Some(now) = now {
            let (mut refused, written) = self.take_keys(queue, &messages, &origin, now).await?;
            locked = written;
            let mut kept = Vec::with_capacity(docs.len());
            let mut kept_origin = Vec::with_capacity(origin.len());
            for (d, i) in docs.into_iter().zip(origin) {
                match refused.remove(&i) {
                    Some(e) => results[i] = Err(e),
                    None => {
                        kept.push(d);
                        kept_origin.push(i);
                    }
                }
            }
            (docs, origin) = (kept, kept_origin);
        }
        if docs.is_empty() {
            return Ok(results);
        }
        match self.coll.insert_many(docs).ordered(false).await {
            Ok(_) => {}
            Err(e) => {
                let ErrorKind::InsertMany(failure) = &*e.kind else {
                    return Err(backend("publish", e));
                };
                if failure.write_concern_error.is_some() {
                    // Stored, but not as durably as asked: report it for the whole call.
                    return Err(backend("publish", e));
                }
                for w in failure.write_errors.iter().flatten() {
                    let Some(&i) = origin.get(w.index) else {
                        continue;
                    };
                    let m = &messages[i];
                    results[i] = Err(if is_duplicate_code(w.code) {
                        duplicate_id(queue, &m.id)
                    } else {
                        mq_core::Error::backend(
                            "mongo",
                            "publish",
                            format!("write error {} for message {}: {}", w.code, m.id, w.message),
                        )
                    });
                }
            }
        }
        let unstored: Vec<(usize, &Message)> = locked
            .into_iter()
            .filter(|&i| results[i].is_err())
            .map(|i| (i, &messages[i]))
            .collect();
        self.release_keys(queue, &unstored).await;
        self.wake.wake(queue.as_str());
        Ok(results)
    }

    fn check(&self, message: &Message) -> Result<()> {
        crate::document::check(message)
    }

    async fn claim(&self, queue: &QueueName, holder: Holder<'_>, limit: usize) -> Result<Claimed> {
        let Holder { owner, lease, .. } = holder;
        if self.paused(queue, "claim").await? {
            return Ok(Claimed::default());
        }
        let now = self.now().await;
        let sweep = self.should_sweep(queue);
        let (expired, messages) = tokio::join!(
            async {
                if !sweep {
                    return Ok(Vec::new());
                }
                if let Err(e) = self.compact(now).await {
                    tracing::warn!(error = %ErrorChain::from_error(&e),
                        "mq-mongo: cutting finished messages down to their ids failed; tried again later");
                }
                self.expire(queue, now).await
            },
            async {
                if limit == 0 {
                    return Ok(Taken::default());
                }
                let token = self.token();
                let nowb = date(now);
                let update = Self::claim_update(owner, nowb, date(mq_after(now, lease)), &token);
                let request = ClaimRequest {
                    queue,
                    limit,
                    now: nowb,
                    update,
                    token,
                    sweep,
                };
                match self.options.get_claim_strategy() {
                    ClaimStrategy::Batch => self.claim_batch(&request).await,
                    ClaimStrategy::FindOneAndUpdate => self.claim_one_by_one(&request).await,
                }
            }
        );
        join_claim(queue, expired, messages)
    }

    async fn renew(
        &self,
        queue: &QueueName,
        holder: Holder<'_>,
        claims: &[Claim],
    ) -> Result<Vec<Claim>> {
        let Holder { owner, lease, .. } = holder;
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now().await;
        let nowb = date(now);
        let refs: Vec<&Claim> = claims.iter().collect();
        let mut filter = Self::fence(queue, owner, nowb);
        let all = Self::match_claims(&mut filter, queue, &refs);
        let token = self.token();
        let res = self
            .raw
            .update_many(
                filter,
                doc! { "$set": { "lease_expires_at": date(mq_after(now, lease)), "op_token": &token } },
            )
            .await
            .map_err(|e| backend("renew", e))?;
        if res.matched_count as usize >= claims.len() {
            return Ok(Vec::new());
        }
        self.not_tagged(queue, claims.to_vec(), all, &token, "renew")
            .await
    }

    async fn complete(
        &self,
        queue: &QueueName,
        owner: &str,
        completions: Vec<Completion>,
    ) -> Result<Vec<Claim>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now().await;
        let nowb = date(now);
        let token = self.token();
        let unset = doc! { "lease_owner": "", "lease_expires_at": "", "claim_token": "" };
        let mut statements: Vec<Document> = Vec::new();
        let mut acks: Vec<&Claim> = Vec::new();
        for c in &completions {
            let release = matches!(c.action, CompletionAction::Release);
            let (set, multi_ok) = match &c.action {
                CompletionAction::Ack => {
                    acks.push(&c.claim);
                    (None, true)
                }
                CompletionAction::Retry { execute_at, error } => {
                    let mut set = doc! {
                        "status": "scheduled",
                        "execute_at": date_ceil(self.clock.to_server(*execute_at)),
                        "updated_at": nowb, "op_token": &token,
                    };
                    if let Some(e) = error {
                        set.insert("last_error", e.to_string());
                    }
                    (Some(set), false)
                }
                // Due at once, and the delivery cut short by shutdown not counted.
                CompletionAction::Release => (
                    Some(doc! {
                        "status": "scheduled", "execute_at": nowb,
                        "updated_at": nowb, "op_token": &token,
                    }),
                    false,
                ),
                CompletionAction::Finish { status, error } => (
                    Some(doc! {
                        "status": status.as_str(), "updated_at": nowb, "finished_at": nowb,
                        "last_error": error.to_string(), "op_token": &token,
                    }),
                    false,
                ),
                // CompletionAction is non-exhaustive: an unknown action is refused, not guessed.
                _ => {
                    return Err(mq_core::Error::backend(
                        "mongo",
                        "complete",
                        format!("unsupported completion action {:?}", c.action),
                    ));
                }
            };
            if let (Some(set), false) = (set, multi_ok) {
                let mut q = Self::fence(queue, owner, nowb);
                q.insert("_id", Key::bson(queue, &c.claim.id));
                q.insert("attempts", i64::from(c.claim.attempt));
                let mut u = doc! { "$set": set, "$unset": unset.clone() };
                if release {
                    u.insert("$inc", doc! { "attempts": -1 });
                }
                statements.push(doc! { "q": q, "u": u, "multi": false });
            }
        }
        if !acks.is_empty() {
            let mut q = Self::fence(queue, owner, nowb);
            Self::match_claims(&mut q, queue, &acks);
            statements.push(doc! {
                "q": q,
                "u": { "$set": {
                    "status": "executed", "updated_at": nowb, "finished_at": nowb, "op_token": &token,
                }, "$unset": unset.clone() },
                "multi": true,
            });
        }
        let reply = self
            .db
            .run_command(doc! {
                "update": self.options.get_collection(),
                "updates": statements,
                "ordered": false,
            })
            .await
            .map_err(|e| backend("complete", e))?;
        if let Ok(errors) = reply.get_array("writeErrors")
            && !errors.is_empty()
        {
            return Err(mq_core::Error::backend(
                "mongo",
                "complete",
                format!(
                    "the server refused {} completion update(s): {errors:?}",
                    errors.len()
                ),
            ));
        }
        let matched = match reply.get("n") {
            Some(Bson::Int32(n)) => i64::from(*n),
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Double(n)) => *n as i64,
            _ => -1,
        };
        if matched >= 0 && matched as usize >= completions.len() {
            return Ok(Vec::new());
        }
        let claims: Vec<Claim> = completions.into_iter().map(|c| c.claim).collect();
        let all = claims.iter().map(|c| Key::bson(queue, &c.id)).collect();
        self.not_tagged(queue, claims, all, &token, "complete")
            .await
    }

    async fn queue_stats(&self, queue: Option<&QueueName>) -> Result<Vec<QueueStats>> {
        self.stats(queue).await
    }

    async fn cancel(&self, queue: &QueueName, target: CancelTarget) -> Result<CancelOutcome> {
        let id = match target {
            CancelTarget::Id(id) => id,
            CancelTarget::UniqueKey(key) => {
                let lock = self
                    .controls
                    .find_one(doc! { "_id": Self::key_id(queue, &key) })
                    .await
                    .map_err(|e| backend("cancel", e))?;
                match lock
                    .as_ref()
                    .and_then(|l| l.get_str("holder").ok())
                    .and_then(|h| MessageId::new(h).ok())
                {
                    Some(holder) => holder,
                    None => return Ok(CancelOutcome::NotFound),
                }
            }
            // CancelTarget is non-exhaustive: a target this store does not know names nothing.
            _ => return Ok(CancelOutcome::NotFound),
        };
        let which = doc! { "_id": Key::bson(queue, &id) };
        let nowb = date(self.now().await);
        let mut live = which.clone();
        live.insert("status", doc! { "$in": ["scheduled", "processing"] });
        // The holder of a running message loses it at once: renewals and completions are
        // fenced on `processing`, so its next renewal fails and its handler is cancelled.
        let before = self
            .raw
            .find_one_and_update(
                live,
                doc! {
                    "$set": {
                        "status": Status::Cancelled.as_str(), "updated_at": nowb, "finished_at": nowb,
                    },
                    "$unset": { "lease_owner": "", "lease_expires_at": "", "claim_token": "" },
                },
            )
            .projection(doc! { "_id": 1, "status": 1 })
            .return_document(ReturnDocument::Before)
            .await
            .map_err(|e| backend("cancel", e))?;
        if let Some(d) = before {
            return Ok(if d.get_str("status") == Ok("processing") {
                CancelOutcome::CancelledRunning(id)
            } else {
                CancelOutcome::Cancelled(id)
            });
        }
        let finished = self
            .raw
            .find_one(which)
            .projection(doc! { "status": 1 })
            .await
            .map_err(|e| backend("cancel", e))?;
        Ok(
            match finished.and_then(|d| d.get_str("status").ok()?.parse::<Status>().ok()) {
                Some(status) => CancelOutcome::AlreadyFinished(id, status),
                None => CancelOutcome::NotFound,
            },
        )
    }

    async fn set_paused(&self, queue: &QueueName, paused: bool) -> Result<()> {
        let nowb = date(self.now().await);
        self.controls
            .update_one(
                doc! { "_id": Self::pause_id(queue) },
                doc! { "$set": { "paused": paused, "updated_at": nowb } },
            )
            .upsert(true)
            .await
            .map_err(|e| backend(if paused { "pause" } else { "resume" }, e))?;
        if !paused {
            self.wake.wake(queue.as_str());
        }
        Ok(())
    }

    async fn is_paused(&self, queue: &QueueName) -> Result<bool> {
        self.paused(queue, "is paused").await
    }

    fn wake(&self, queue: &QueueName) {
        self.wake.wake(queue.as_str());
    }

    async fn wait_for_work(&self, queue: &QueueName, timeout: Duration) {
        // Woken by the change stream when it is live, and by inserts made through this store
        // in any case; otherwise the timeout is the poll.
        let notify = self.wake.notify(queue.as_str());
        let _ = tokio::time::timeout(timeout, notify.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use mq_core::{Error, MessageId};

    use super::*;

    fn message(id: &str) -> Message {
        let queue = QueueName::new("jobs").expect("queue name");
        let id = MessageId::new(id).expect("id");
        Message::new(id, queue, "t", serde_json::Value::Null, Utc::now())
    }

    fn failure() -> Error {
        Error::invalid_option("test", "a failing step")
    }

    #[test]
    fn a_failed_expiry_sweep_keeps_the_claimed_batch() {
        let queue = QueueName::new("jobs").expect("queue name");
        let claimed = join_claim(
            &queue,
            Err(failure()),
            Ok(Taken {
                messages: vec![message("m1"), message("m2")],
                undecodable: Vec::new(),
            }),
        )
        .expect("the claim succeeded; only the sweep failed");
        assert_eq!(claimed.messages.len(), 2);
        assert!(claimed.expired.is_empty());
        assert!(join_claim(&queue, Ok(vec![message("e1")]), Err(failure())).is_err());
    }

    #[test]
    fn a_window_pick_keeps_priority_order() {
        let id = |i: usize| Bson::String(format!("m{i}"));
        let window: Vec<(Bson, i32)> = [5, 5, 3, 3, 3, 3, 0, 0]
            .into_iter()
            .enumerate()
            .map(|(i, p)| (id(i), p))
            .collect();
        for _ in 0..20 {
            let picked = pick_from_window(window.clone(), 4);
            assert_eq!(picked.len(), 4);
            assert_eq!(
                picked[..2],
                [id(0), id(1)],
                "the higher priority is taken whole"
            );
            assert!(
                picked[2..]
                    .iter()
                    .all(|p| window[2..6].iter().any(|(w, _)| w == p))
            );
            assert!(picked[2] != picked[3]);
        }
        assert_eq!(pick_from_window(window[..3].to_vec(), 4).len(), 3);
    }

    /// Stores on hosts whose clocks are an hour fast and an hour slow, and one whose clock is
    /// right, share a queue: nothing is delivered early or late, no running lease is taken over.
    #[tokio::test]
    async fn a_skewed_host_clock_moves_no_work_early_or_late() {
        let url = match mq_core::testkit::service_url("MONGODB_URI") {
            Ok(u) => u,
            Err(reason) => {
                eprintln!("skipping a_skewed_host_clock_moves_no_work_early_or_late: {reason}");
                return;
            }
        };
        let client = Client::with_uri_str(&url).await.expect("client");
        let db = "mqt_unit_skewed_host_clock";
        client
            .database(db)
            .drop()
            .await
            .expect("drop the test's database");
        let options = MongoOptions::default()
            .database(db)
            .change_stream(false)
            .sweep_interval(Duration::ZERO);
        let store = |skew: chrono::Duration| {
            let s = MongoStore::new(client.clone(), options.clone());
            *s.clock.skew.lock().unwrap() = skew;
            s
        };
        let (fast, slow, right) = (
            store(chrono::Duration::hours(1)),
            store(chrono::Duration::hours(-1)),
            store(chrono::Duration::zero()),
        );
        for s in [&fast, &slow, &right] {
            s.prepare_schema().await.expect("schema");
        }
        let queue = QueueName::new("jobs").expect("queue name");
        let lease = Duration::from_secs(60);
        let at = |s: &MongoStore, id: &str, delay: chrono::Duration| {
            let id = MessageId::new(id).expect("id");
            let mut m = Message::new(
                id,
                queue.clone(),
                "t",
                serde_json::Value::Null,
                s.clock.local(),
            );
            m.execute_at += delay;
            m
        };

        // Published "now" by the fast host: due now, not an hour late.
        let stored = fast
            .insert(&queue, vec![at(&fast, "due-now", chrono::Duration::zero())])
            .await;
        assert!(stored.expect("insert").iter().all(Result::is_ok));
        // Due within the error of the two offset measurements (milliseconds), not in an hour.
        let deadline = Instant::now() + Duration::from_secs(5);
        let claimed = loop {
            let claimed = right
                .claim(&queue, Holder::new("right", lease), 10)
                .await
                .expect("claim");
            if !claimed.messages.is_empty() || Instant::now() > deadline {
                break claimed;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            claimed.messages.len(),
            1,
            "a message published now is due now"
        );
        right
            .complete(
                &queue,
                "right",
                vec![Completion::new(
                    Claim::of(&claimed.messages[0]),
                    CompletionAction::Ack,
                )],
            )
            .await
            .expect("ack");

        // Delayed half an hour by the slow host: not due yet, not half an hour early.
        let stored = slow
            .insert(
                &queue,
                vec![at(&slow, "in-30-min", chrono::Duration::minutes(30))],
            )
            .await;
        assert!(stored.expect("insert").iter().all(Result::is_ok));
        let claimed = right
            .claim(&queue, Holder::new("right", lease), 10)
            .await
            .expect("claim");
        assert!(
            claimed.messages.is_empty(),
            "delivered early: {:?}",
            claimed.messages
        );

        // Leased for a minute by the slow host: nobody takes it over meanwhile.
        let stored = right
            .insert(&queue, vec![at(&right, "leased", chrono::Duration::zero())])
            .await;
        assert!(stored.expect("insert").iter().all(Result::is_ok));
        let held = slow
            .claim(&queue, Holder::new("slow", lease), 10)
            .await
            .expect("claim");
        assert_eq!(held.messages.len(), 1);
        let stolen = right
            .claim(&queue, Holder::new("right", lease), 10)
            .await
            .expect("claim");
        assert!(
            stolen.messages.is_empty(),
            "a running lease was taken over: {:?}",
            stolen.messages
        );
        let lost = slow
            .renew(
                &queue,
                Holder::new("slow", lease),
                &[Claim::of(&held.messages[0])],
            )
            .await
            .expect("renew");
        assert!(lost.is_empty(), "the slow host lost its own lease");
    }

    #[test]
    fn a_later_failed_claim_step_keeps_what_was_taken() {
        let queue = QueueName::new("jobs").expect("queue name");
        assert!(keep_what_was_claimed(&queue, 3, failure()).is_ok());
        assert!(keep_what_was_claimed(&queue, 0, failure()).is_err());
    }
}
