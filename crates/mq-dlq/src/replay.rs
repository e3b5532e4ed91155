//! [`Replayer`]: publishes dead letters again, idempotently and at a bounded rate.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use chrono::Utc;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mq_core::{
    DeadLetter, DeadLetterEntry, DeadLetterFilter, DeadLetterStore, EntryId, Error, MessageQueue,
    NewMessage, QueueName, ReplayMark, ReplayState, Result,
};
use serde::Serialize;

/// The `log_context` key of a replayed message that holds its dead-letter entry id.
pub const REPLAY_ENTRY_KEY: &str = "dlq_entry_id";
/// The `log_context` key of a replayed message that holds the id the message had when it failed.
pub const REPLAY_ORIGINAL_ID_KEY: &str = "dlq_original_id";

/// What a replay does: which entries, where to, how fast, for real or not.
///
/// Defaults: every entry, each to the queue it failed in, for real, no rate limit, pages and
/// publish batches of 100, entries already replayed skipped.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use mq_core::QueueName;
/// use mq_dlq::ReplayOptions;
/// use mq_core::DeadLetterFilter;
///
/// let options = ReplayOptions::default()
///     .filter(DeadLetterFilter::default().message_type("welcome"))
///     .target(Some(QueueName::new("emails-retry")?))
///     .rate(NonZeroU32::new(50))
///     .dry_run(true);
/// options.validate()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    filter: DeadLetterFilter,
    target: Option<QueueName>,
    dry_run: bool,
    rate: Option<NonZeroU32>,
    batch_size: usize,
    include_replayed: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            filter: DeadLetterFilter::default(),
            target: None,
            dry_run: false,
            rate: None,
            batch_size: 100,
            include_replayed: false,
        }
    }
}

impl ReplayOptions {
    mq_core::__option_setters! {
        /// The entries to replay (its paging fields are ignored: the replay pages itself).
        filter(filter: DeadLetterFilter) filter;
        /// Publish every entry to this queue; `None` publishes each to the queue it failed in.
        /// An entry left pending by an interrupted replay goes where that replay sent it.
        target(queue: Option<QueueName>) queue;
        /// Select and report, but neither mark nor publish anything.
        dry_run(on: bool) on;
        /// At most this many messages per second (a token bucket with no burst); `None` = no limit.
        rate(per_second: Option<NonZeroU32>) per_second;
        /// Entries read per page and published per call (fewer under a rate limit: a tenth of a
        /// second's worth, at least one).
        batch_size(n: usize) n;
        /// Replay entries already replayed once more, as a new generation with a new message id
        /// (a deliberate second copy). Off by default.
        include_replayed(on: bool) on;
    }

    /// The rate limit.
    pub fn get_rate(&self) -> Option<NonZeroU32> {
        self.rate
    }
    /// Whether this is a dry run.
    pub fn get_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(Error::invalid_option(
                "batch_size",
                format!("must be between 1 and 10000, got {}", self.batch_size),
            ));
        }
        Ok(())
    }

    fn chunk_size(&self) -> usize {
        match self.rate {
            Some(r) => (r.get() as usize / 10).clamp(1, self.batch_size),
            None => self.batch_size,
        }
    }
}

/// One entry a replay could not publish. It stays pending (or untouched) and the next replay
/// tries it again under the same message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReplayFailure {
    /// The entry.
    pub entry: EntryId,
    /// Why, as text.
    pub error: String,
}

/// What a replay did.
///
/// # Examples
///
/// ```
/// let report = mq_dlq::ReplayReport::default();
/// assert_eq!(report.selected, 0);
/// assert!(report.is_complete());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReplayReport {
    /// True when nothing was marked or published.
    pub dry_run: bool,
    /// Entries the filter selected.
    pub selected: u64,
    /// Entries published by this run (in a dry run: that would be).
    pub published: Vec<EntryId>,
    /// Entries an interrupted earlier run had already published: the queue refused their
    /// message id as a duplicate, and they are now marked done without a second copy.
    pub already_published: Vec<EntryId>,
    /// Entries skipped: already replayed, or claimed by a replay running at the same time.
    pub skipped: Vec<EntryId>,
    /// Entries that could not be published.
    pub failed: Vec<ReplayFailure>,
}

impl ReplayReport {
    /// True when no entry failed.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// Entries handled so far (published, already published, skipped or failed).
    pub fn handled(&self) -> u64 {
        (self.published.len()
            + self.already_published.len()
            + self.skipped.len()
            + self.failed.len()) as u64
    }
}

/// Publishes dead letters again through any [`MessageQueue`].
///
/// # Why a replay is idempotent
///
/// Each entry goes through two store writes around one publish:
///
/// 1. [`begin_replay`](DeadLetterStore::begin_replay) marks it *pending* with a compare-and-set on
///    its replay generation, recording the target queue and the message id it will be published
///    under. That id is derived from the entry id and the generation only
///    (`<entry id>-r<generation>`), never random.
/// 2. The message is published under that id.
/// 3. [`finish_replay`](DeadLetterStore::finish_replay) marks it *done*.
///
/// Kill the replay anywhere and run it again: entries marked done are skipped; entries still
/// pending are published again under the recorded id to the recorded queue. If the first run
/// crashed before its publish, this is the only copy; if it crashed after, the queue refuses the
/// id as a duplicate ([`mq_core::Error::DuplicateId`]), the replay counts the entry as
/// [`already_published`](ReplayReport::already_published) and marks it done. Either way each
/// entry reaches the queue exactly once per generation, and two replays running at once cannot
/// both claim an entry. The guarantee rests on the queue's duplicate-id check, which the SQL,
/// MongoDB and in-memory queues have as long as they keep the first copy (retention may purge
/// it); a queue without one (Kinesis) may receive the in-flight batch — at most one publish
/// batch — twice, which is at-least-once as everywhere else in mq.
///
/// A replay never touches an entry's stored message: replayed copies carry the original type,
/// payload, partition key, attempt limit, retry delay and metadata, plus two `log_context` keys
/// ([`REPLAY_ENTRY_KEY`], [`REPLAY_ORIGINAL_ID_KEY`]); they are ready at once, start with zero
/// attempts and have no expiry.
///
/// # Records replayed byte for byte
///
/// An entry that keeps the bytes its message was read from
/// ([`DeadLetterEntry::original_bytes`]: a Kinesis record, decoded or not) goes back as those
/// bytes when its target queue is of the backend the entry came from (the queue's
/// [`backend`](MessageQueue::backend) is the entry's `origin.backend`): the replay publishes a
/// message of type [`DeadLetter::ORIGINAL_BYTES_TYPE`] holding them, under the message's
/// partition key (for a Kinesis record, the record's own key unless its data names another
/// one), and the Kinesis queue writes exactly those bytes to the stream, whatever format they
/// are in (mq's JSON, the relaxed extended JSON of older producers, fields mq does not know,
/// bytes that are not JSON at all). Every other consumer of the stream reads the record as it
/// was first written. Replayed to a queue of any other backend, the entry is published as its
/// decoded message, as above.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use mq_core::MessageQueue;
/// use mq_dlq::{ReplayOptions, Replayer};
/// use mq_core::DeadLetterStore;
///
/// # async fn f(store: Arc<dyn DeadLetterStore>, queue: Arc<dyn MessageQueue>) -> mq_core::Result<()> {
/// let report = Replayer::new(store, queue)
///     .run(&ReplayOptions::default().rate(std::num::NonZeroU32::new(100)))
///     .await?;
/// println!("published {}, failed {}", report.published.len(), report.failed.len());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Replayer {
    store: Arc<dyn DeadLetterStore>,
    queue: Arc<dyn MessageQueue>,
    routes: HashMap<QueueName, Arc<dyn MessageQueue>>,
}

impl fmt::Debug for Replayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replayer")
            .field("store", &self.store)
            .field("queue", &self.queue.backend())
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Replayer {
    /// Replays entries of `store` through `queue`.
    pub fn new(store: Arc<dyn DeadLetterStore>, queue: Arc<dyn MessageQueue>) -> Self {
        Replayer {
            store,
            queue,
            routes: HashMap::new(),
        }
    }

    /// Publishes to target queue `name` through `queue` instead of the default one (for
    /// dead letters of several backends in one store).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use mq_core::{MessageQueue, QueueName};
    /// # use mq_dlq::Replayer;
    /// # use mq_core::DeadLetterStore;
    /// # fn f(store: Arc<dyn DeadLetterStore>, sql: Arc<dyn MessageQueue>, kinesis: Arc<dyn MessageQueue>) -> mq_core::Result<()> {
    /// let _replayer = Replayer::new(store, sql).route(QueueName::new("events")?, kinesis);
    /// # Ok(()) }
    /// ```
    pub fn route(mut self, name: QueueName, queue: Arc<dyn MessageQueue>) -> Self {
        self.routes.insert(name, queue);
        self
    }

    fn queue_for(&self, name: &QueueName) -> &Arc<dyn MessageQueue> {
        self.routes.get(name).unwrap_or(&self.queue)
    }

    /// Runs a replay; see the type's documentation for what it guarantees.
    ///
    /// # Errors
    ///
    /// Options that cannot work, and store failures (the replay stops; run it again to go on).
    /// Publish failures do not stop it: they are listed in [`ReplayReport::failed`].
    pub async fn run(&self, options: &ReplayOptions) -> Result<ReplayReport> {
        self.run_with_progress(options, |_, _| {}).await
    }

    /// Like [`run`](Replayer::run), calling `progress(report so far, entries selected in all)`
    /// after each batch.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(replayer: mq_dlq::Replayer) -> mq_core::Result<()> {
    /// let options = mq_dlq::ReplayOptions::default();
    /// replayer
    ///     .run_with_progress(&options, |report, total| {
    ///         eprintln!("{}/{total}", report.handled());
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_with_progress(
        &self,
        options: &ReplayOptions,
        mut progress: impl FnMut(&ReplayReport, u64) + Send,
    ) -> Result<ReplayReport> {
        options.validate()?;
        let mut filter = options
            .filter
            .clone()
            .first_page()
            .limit(options.batch_size);
        let total = self.store.count(&filter).await?;
        let limiter = options
            .rate
            .map(|r| RateLimiter::direct(Quota::per_second(r).allow_burst(NonZeroU32::MIN)));
        let mut report = ReplayReport {
            dry_run: options.dry_run,
            ..ReplayReport::default()
        };
        let mut registered = HashSet::new();
        progress(&report, total);
        loop {
            let page = self.store.list(&filter).await?;
            let Some(last) = page.last() else { break };
            filter = filter.after(last.id.clone());
            report.selected += page.len() as u64;
            for chunk in page.chunks(options.chunk_size()) {
                if options.dry_run {
                    for e in chunk {
                        if e.replay_state() == ReplayState::Done && !options.include_replayed {
                            report.skipped.push(e.id.clone());
                        } else {
                            report.published.push(e.id.clone());
                        }
                    }
                } else {
                    let claimed = self.claim(chunk, options, &mut report).await?;
                    self.publish(claimed, limiter.as_ref(), &mut registered, &mut report)
                        .await?;
                }
                progress(&report, total);
            }
        }
        Ok(report)
    }

    /// Phase one for a chunk: the entries to publish, each with its mark.
    async fn claim<'a>(
        &self,
        chunk: &'a [DeadLetterEntry],
        options: &ReplayOptions,
        report: &mut ReplayReport,
    ) -> Result<Vec<(&'a DeadLetterEntry, ReplayMark)>> {
        let mut out = Vec::with_capacity(chunk.len());
        for e in chunk {
            match (&e.replay, e.replay_state()) {
                (Some(mark), ReplayState::Pending) => out.push((e, mark.clone())),
                (_, ReplayState::Done) if !options.include_replayed => {
                    report.skipped.push(e.id.clone());
                }
                (prev, _) => {
                    let generation = prev.as_ref().map_or(0, |m| m.generation);
                    let target = options.target.clone().unwrap_or_else(|| e.queue().clone());
                    let mark =
                        ReplayMark::new(&e.id, generation.saturating_add(1), target, Utc::now());
                    if self.store.begin_replay(&e.id, generation, &mark).await? {
                        out.push((e, mark));
                    } else {
                        report.skipped.push(e.id.clone());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Phase two for a chunk: wait for the rate limit, publish per target, mark done.
    async fn publish(
        &self,
        claimed: Vec<(&DeadLetterEntry, ReplayMark)>,
        limiter: Option<&DefaultDirectRateLimiter>,
        registered: &mut HashSet<QueueName>,
        report: &mut ReplayReport,
    ) -> Result<()> {
        let mut by_target: Vec<(QueueName, Vec<(&DeadLetterEntry, ReplayMark)>)> = Vec::new();
        for (e, mark) in claimed {
            match by_target.iter_mut().find(|(t, _)| *t == mark.target) {
                Some((_, group)) => group.push((e, mark)),
                None => by_target.push((mark.target.clone(), vec![(e, mark)])),
            }
        }
        for (target, group) in by_target {
            let queue = self.queue_for(&target);
            if !registered.contains(&target) {
                if let Err(err) = queue.register(&target).await {
                    fail_all(report, &group, &err);
                    continue;
                }
                registered.insert(target.clone());
            }
            if let Some(limiter) = limiter {
                for _ in &group {
                    limiter.until_ready().await;
                }
            }
            let as_bytes = |e: &DeadLetterEntry| queue.backend() == e.origin.backend;
            let messages = group
                .iter()
                .map(|(e, m)| replay_message(e, m, as_bytes(e)))
                .collect();
            let outcome = match queue.publish(&target, messages).await {
                Ok(outcome) => outcome,
                Err(err) => {
                    fail_all(report, &group, &err);
                    continue;
                }
            };
            let mut refused: HashMap<usize, Error> = outcome
                .failed
                .into_iter()
                .map(|f| (f.index, f.error))
                .collect();
            for (i, (e, mark)) in group.iter().enumerate() {
                match refused.remove(&i) {
                    None => {
                        self.store
                            .finish_replay(&e.id, &mark.message_id, Utc::now())
                            .await?;
                        report.published.push(e.id.clone());
                    }
                    Some(Error::DuplicateId { .. }) => {
                        self.store
                            .finish_replay(&e.id, &mark.message_id, Utc::now())
                            .await?;
                        report.already_published.push(e.id.clone());
                    }
                    Some(err) => report.failed.push(ReplayFailure {
                        entry: e.id.clone(),
                        error: error_text(&err),
                    }),
                }
            }
        }
        Ok(())
    }
}

fn fail_all(report: &mut ReplayReport, group: &[(&DeadLetterEntry, ReplayMark)], err: &Error) {
    let text = error_text(err);
    for (e, _) in group {
        report.failed.push(ReplayFailure {
            entry: e.id.clone(),
            error: text.clone(),
        });
    }
}

fn error_text(err: &Error) -> String {
    mq_core::ErrorChain::from_error(err).to_string()
}

/// The message a replay publishes for `entry` under `mark`: with `as_bytes`, the entry's original
/// bytes (when it has them) as a [`DeadLetter::ORIGINAL_BYTES_TYPE`] message; otherwise the
/// stored message.
fn replay_message(entry: &DeadLetterEntry, mark: &ReplayMark, as_bytes: bool) -> NewMessage {
    let m = &entry.message;
    let (message_type, payload) = match &entry.original_bytes {
        Some(bytes) if as_bytes => (
            DeadLetter::ORIGINAL_BYTES_TYPE.to_owned(),
            DeadLetter::original_bytes_payload(bytes),
        ),
        _ => (m.message_type.clone(), m.payload.clone()),
    };
    let mut metadata = m.metadata.clone();
    metadata
        .log_context
        .insert(REPLAY_ENTRY_KEY.to_owned(), entry.id.to_string());
    metadata
        .log_context
        .insert(REPLAY_ORIGINAL_ID_KEY.to_owned(), m.id.to_string());
    let mut out = NewMessage::new(message_type, payload)
        .id(mark.message_id.clone())
        .metadata(metadata);
    if let Some(k) = &m.partition_key {
        out = out.partition_key(k.clone());
    }
    if let Some(n) = m.max_attempts.filter(|n| *n > 0) {
        out = out.max_attempts(n);
    }
    if let Some(d) = m.retry_delay {
        out = out.retry_delay(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_follows_the_rate() {
        let o = ReplayOptions::default();
        assert_eq!(o.chunk_size(), 100);
        assert_eq!(o.clone().rate(NonZeroU32::new(5)).chunk_size(), 1);
        assert_eq!(o.clone().rate(NonZeroU32::new(50)).chunk_size(), 5);
        assert_eq!(o.rate(NonZeroU32::new(100_000)).chunk_size(), 100);
        assert!(ReplayOptions::default().batch_size(0).validate().is_err());
    }

    #[test]
    fn original_bytes_replace_the_message_only_when_asked() {
        let mut m = mq_core::Message::new(
            mq_core::MessageId::new("m1").unwrap(),
            QueueName::new("events").unwrap(),
            "welcome",
            serde_json::json!({"to": "a"}),
            Utc::now(),
        );
        m.partition_key = Some("pk".into());
        let letter = DeadLetter::new(
            m,
            mq_core::DeadLetterOrigin::backend("kinesis"),
            mq_core::ErrorChain::msg("e"),
            true,
            "c",
        );
        let plain = DeadLetterEntry::from_letter(letter.clone());
        let kept = DeadLetterEntry::from_letter(letter.original_bytes(b"{ \"a\" }".to_vec()));
        let mark = ReplayMark::new(&kept.id, 1, QueueName::new("events").unwrap(), Utc::now());
        let built = |entry: &DeadLetterEntry, as_bytes: bool| {
            replay_message(entry, &mark, as_bytes).into_message(
                &mq_core::UlidGenerator,
                QueueName::new("events").unwrap(),
                Utc::now(),
            )
        };
        let raw = built(&kept, true);
        assert_eq!(raw.message_type, DeadLetter::ORIGINAL_BYTES_TYPE);
        assert_eq!(
            DeadLetter::original_bytes_in(&raw).as_deref(),
            Some(&b"{ \"a\" }"[..])
        );
        assert_eq!(raw.partition_key.as_deref(), Some("pk"));
        assert_eq!(raw.id, mark.message_id);
        for (entry, as_bytes) in [(&kept, false), (&plain, true), (&plain, false)] {
            let out = built(entry, as_bytes);
            assert_eq!(out.message_type, "welcome");
            assert_eq!(out.payload, serde_json::json!({"to": "a"}));
        }
    }
}
