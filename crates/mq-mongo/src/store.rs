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
use mq_core::backend::{Claim, Claimed, Completion, CompletionAction, Holder, QueueStore};
use mq_core::{ErrorChain, Message, QueueName, QueueStats, Result, async_trait};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connect::{collect, prepare_schema};
use crate::document::{Doc, Key, date, date_ceil, doc_projection};
use crate::error::{backend, is_duplicate_code};
use crate::options::{ClaimStrategy, MongoOptions};
use crate::wake::{self, Wake};

/// How many find-then-take rounds a batch claim makes when other consumers win some races.
const CLAIM_ROUNDS: usize = 3;
/// A batch claim picks its messages at random among this many times as many of the oldest ready
/// ones.
const CLAIM_WINDOW: usize = 4;
/// Expired messages marked per claim call (the rest on the next calls).
const EXPIRE_PAGE: i64 = 1000;

/// Messages of every queue in one MongoDB collection, claimed atomically under leases.
///
/// Each message is one document keyed `"<queue>/<message id>"`. A claim
/// takes a document only through an update whose filter still sees it ready (or its lease
/// expired), so two consumers never hold one message; renewals and completions are fenced on
/// the owner, the attempt number and an unexpired lease. Times are compared with this
/// process's clock, so keep the clocks of consumer hosts in sync (NTP).
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
    options: MongoOptions,
    watching: OnceCell<()>,
    wake: Arc<Wake>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    token_prefix: String,
    token_seq: AtomicU64,
    swept: Mutex<HashMap<String, Instant>>,
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
        MongoStore {
            client,
            db,
            coll,
            raw,
            options,
            watching: OnceCell::new(),
            wake: Arc::default(),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            token_prefix: format!("{:016x}", rand::random::<u64>()),
            token_seq: AtomicU64::new(0),
            swept: Mutex::default(),
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

    /// Creates the indexes of the collection (claiming, expiry, retention), or checks that they
    /// exist when [`MongoOptions::create_schema`] is off.
    pub(crate) async fn prepare_schema(&self) -> Result<()> {
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        let mut models = vec![
            index(
                doc! { "queue": 1, "status": 1, "execute_at": 1 },
                "mq_claim",
            ),
            index(
                doc! { "queue": 1, "status": 1, "expires_at": 1 },
                "mq_expiry",
            ),
        ];
        if let Some(age) = self.options.get_retention() {
            let mut ttl = index(doc! { "finished_at": 1 }, "mq_retention");
            if let Some(o) = ttl.options.as_mut() {
                o.expire_after = Some(age);
            }
            models.push(ttl);
        }
        prepare_schema(&self.raw, models, self.options.get_create_schema()).await
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

    /// Delivery order: the claim index gives it without a blocking sort; messages with the same
    /// `execute_at` come in index (insertion) order.
    fn sort() -> Document {
        doc! { "execute_at": 1 }
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
    ) -> Result<Vec<Message>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let find = self
            .coll
            .find(doc! { "_id": { "$in": ids }, field: token })
            .projection(doc_projection());
        let docs: Vec<Doc> = collect(find, op).await?;
        let mut out = docs
            .into_iter()
            .map(Doc::into_message)
            .collect::<Result<Vec<Message>>>()?;
        out.sort_by_key(|m| (m.execute_at, m.created_at));
        Ok(out)
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
        self.read_tagged(ids, "op_token", &token, "claim").await
    }

    async fn claim_batch(&self, c: &ClaimRequest<'_>) -> Result<Vec<Message>> {
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
            return Ok(Vec::new());
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
            let mut due = self
                .find_ids(
                    Self::due_filter(queue, nowb),
                    Some(Self::sort()),
                    i64::try_from(window).unwrap_or(i64::MAX),
                )
                .await?;
            if due.len() > need {
                let mut picked: Vec<usize> =
                    rand::seq::index::sample(&mut rand::rng(), due.len(), need).into_vec();
                picked.sort_unstable();
                due = picked.into_iter().map(|i| due[i].clone()).collect();
                // the window was full: more may be ready after it
                full_window = true;
            }
            ids.extend(due);
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

    async fn claim_one_by_one(&self, c: &ClaimRequest<'_>) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        let mut recovering = c.sweep;
        while out.len() < c.limit {
            let filter = if recovering {
                Self::recover_filter(c.queue, c.now)
            } else {
                Self::due_filter(c.queue, c.now)
            };
            let doc = self
                .coll
                .find_one_and_update(filter, c.update.clone())
                .sort(Self::sort())
                .projection(doc_projection())
                .return_document(ReturnDocument::After)
                .await
                .map_err(|e| backend("claim", e));
            match doc.and_then(|d| d.map(Doc::into_message).transpose()) {
                Ok(Some(m)) => out.push(m),
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
    claimed: Result<Vec<Message>>,
) -> Result<Claimed> {
    let messages = claimed?;
    let expired = expired.unwrap_or_else(|e| {
        tracing::warn!(%queue, error = %ErrorChain::from_error(&e),
            "mq: expiring overdue messages failed; it is tried again on a later claim");
        Vec::new()
    });
    Ok(Claimed::new(messages, expired))
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
        for (i, m) in messages.iter().enumerate() {
            match Doc::from_message(m) {
                Ok(d) => {
                    docs.push(d);
                    origin.push(i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(mq_core::Error::backend("mongo", "publish", e))),
            }
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
        self.wake.wake(queue.as_str());
        Ok(results)
    }

    async fn claim(&self, queue: &QueueName, holder: Holder<'_>, limit: usize) -> Result<Claimed> {
        let Holder { owner, lease, .. } = holder;
        let now = Utc::now();
        let sweep = self.should_sweep(queue);
        let (expired, messages) = tokio::join!(
            async {
                if sweep {
                    self.expire(queue, now).await
                } else {
                    Ok(Vec::new())
                }
            },
            async {
                if limit == 0 {
                    return Ok(Vec::new());
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
        let now = Utc::now();
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
        let now = Utc::now();
        let nowb = date(now);
        let token = self.token();
        let unset = doc! { "lease_owner": "", "lease_expires_at": "", "claim_token": "" };
        let mut statements: Vec<Document> = Vec::new();
        let mut acks: Vec<&Claim> = Vec::new();
        for c in &completions {
            let (set, multi_ok) = match &c.action {
                CompletionAction::Ack => {
                    acks.push(&c.claim);
                    (None, true)
                }
                CompletionAction::Retry { execute_at, error } => {
                    let mut set = doc! {
                        "status": "scheduled", "execute_at": date_ceil(*execute_at),
                        "updated_at": nowb, "op_token": &token,
                    };
                    if let Some(e) = error {
                        set.insert("last_error", e.to_string());
                    }
                    (Some(set), false)
                }
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
                statements.push(doc! {
                    "q": q, "u": { "$set": set, "$unset": unset.clone() }, "multi": false,
                });
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
            Ok(vec![message("m1"), message("m2")]),
        )
        .expect("the claim succeeded; only the sweep failed");
        assert_eq!(claimed.messages.len(), 2);
        assert!(claimed.expired.is_empty());
        assert!(join_claim(&queue, Ok(vec![message("e1")]), Err(failure())).is_err());
    }

    #[test]
    fn a_later_failed_claim_step_keeps_what_was_taken() {
        let queue = QueueName::new("jobs").expect("queue name");
        assert!(keep_what_was_claimed(&queue, 3, failure()).is_ok());
        assert!(keep_what_was_claimed(&queue, 0, failure()).is_err());
    }
}
