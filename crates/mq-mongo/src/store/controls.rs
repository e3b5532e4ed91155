//! Queue controls on MongoDB: the pause flag of a queue and the locks of unique keys, one
//! small document each in the control collection.

use super::*;

impl MongoStore {
    /// True while `queue` is paused (its control document says so).
    pub(super) async fn paused(&self, queue: &QueueName, op: &'static str) -> Result<bool> {
        let control = self
            .controls
            .find_one(doc! { "_id": Self::pause_id(queue) })
            .projection(doc! { "paused": 1 })
            .await
            .map_err(|e| backend(op, e))?;
        Ok(control.is_some_and(|c| c.get_bool("paused").unwrap_or(false)))
    }

    /// The `_id` of the control document that pauses `queue`.
    pub(super) fn pause_id(queue: &QueueName) -> String {
        format!("paused/{}", queue.as_str())
    }

    /// The `_id` of the control document of a unique key.
    pub(super) fn key_id(queue: &QueueName, key: &str) -> String {
        format!("key/{}/{key}", queue.as_str())
    }

    /// True while the message `holder` of `queue` keeps its unique key: it waits or runs, or
    /// finished less than its window ago. A message that is gone (deleted by retention, or
    /// never stored) holds nothing.
    pub(super) async fn key_blocks(
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
    pub(super) async fn take_keys(
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
    pub(super) async fn release_keys(&self, queue: &QueueName, messages: &[(usize, &Message)]) {
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
