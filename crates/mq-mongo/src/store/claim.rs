//! Claiming on MongoDB: the filters and the update that take a document, the batch and
//! one-by-one strategies, the expiry sweep, and what a claim keeps when a step fails.

use super::*;

impl MongoStore {
    /// Scheduled, due and not expired.
    pub(super) fn due_filter(queue: &QueueName, now: bson::DateTime) -> Document {
        doc! {
            "queue": queue.as_str(),
            "status": "scheduled",
            "execute_at": { "$lte": now },
            "$or": [ { "expires_at": Bson::Null }, { "expires_at": { "$gt": now } } ],
        }
    }

    /// Processing under a lease that expired (a consumer that crashed or hung).
    pub(super) fn recover_filter(queue: &QueueName, now: bson::DateTime) -> Document {
        doc! {
            "queue": queue.as_str(),
            "status": "processing",
            "lease_expires_at": { "$lte": now },
        }
    }

    /// Either of the above: what a claim may take.
    pub(super) fn ready_filter(queue: &QueueName, now: bson::DateTime) -> Document {
        doc! { "$or": [ Self::due_filter(queue, now), Self::recover_filter(queue, now) ] }
    }

    /// True when this claim should also look for expired messages and expired leases: at most
    /// once per [`MongoOptions::sweep_interval`] per queue and store.
    pub(super) fn should_sweep(&self, queue: &QueueName) -> bool {
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
    pub(super) fn sort() -> Document {
        doc! { "priority": -1, "execute_at": 1 }
    }

    pub(super) fn claim_update(
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

    pub(super) async fn find_ids(
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

    pub(super) async fn read_tagged(
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
    pub(super) async fn compact(&self, now: DateTime<Utc>) -> Result<()> {
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
    pub(super) async fn expire(
        &self,
        queue: &QueueName,
        now: DateTime<Utc>,
    ) -> Result<Vec<Message>> {
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

    pub(super) async fn claim_batch(&self, c: &ClaimRequest<'_>) -> Result<Taken> {
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
    pub(super) async fn claim_round(
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

    pub(super) async fn claim_one_by_one(&self, c: &ClaimRequest<'_>) -> Result<Taken> {
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
    pub(super) fn match_claims(
        filter: &mut Document,
        queue: &QueueName,
        claims: &[&Claim],
    ) -> Vec<Bson> {
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

    pub(super) fn fence(queue: &QueueName, owner: &str, now: bson::DateTime) -> Document {
        doc! {
            "queue": queue.as_str(),
            "status": "processing",
            "lease_owner": owner,
            "lease_expires_at": { "$gt": now },
        }
    }

    /// The claims among `claims` whose document does not carry `token` (not applied).
    pub(super) async fn not_tagged(
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
pub(super) struct ClaimRequest<'a> {
    pub(super) queue: &'a QueueName,
    pub(super) limit: usize,
    pub(super) now: bson::DateTime,
    /// The update that takes a document (see [`MongoStore::claim_update`]).
    pub(super) update: Document,
    /// The claim token the update writes.
    pub(super) token: String,
    /// Also take messages whose lease expired.
    pub(super) sweep: bool,
}

/// Picks `need` of the `window` (ready messages in claim order, with their priority) so that
/// concurrent claims rarely race for the same documents, without breaking priority order:
/// every message of a priority above the lowest one needed is taken, and a random part of the
/// lowest one fills the rest. Claim order is kept.
pub(super) fn pick_from_window(window: Vec<(Bson, i32)>, need: usize) -> Vec<Bson> {
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

/// Decides what a claim does when a step fails after `taken` messages were already leased to
/// this consumer: those are handed out (the failure is logged) rather than left stranded until
/// their lease runs out; with nothing taken, the claim fails with `error`.
pub(super) fn keep_what_was_claimed(
    queue: &QueueName,
    taken: usize,
    error: mq_core::Error,
) -> Result<()> {
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
pub(super) fn join_claim(
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
pub(super) struct Taken {
    pub(super) messages: Vec<Message>,
    pub(super) undecodable: Vec<Undecodable>,
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
