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
        self.stats(queue, false).await
    }

    async fn queue_depth(&self, queue: Option<&QueueName>) -> Result<Vec<QueueStats>> {
        self.stats(queue, true).await
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

mod claim;
mod controls;

use claim::{ClaimRequest, Taken, join_claim};
#[cfg(test)]
mod tests;
