//! The replay conformance suite (feature `testkit`): a dead-letter store under a queue and the
//! [`Replayer`].
//!
//! A store's crate stamps the cases into a test binary with one macro call, using the factory
//! of the store suite in `mq_core::testkit::dead_letter`; it needs this crate only as a
//! dev-dependency with this feature:
//!
//! ```text
//! [dev-dependencies]
//! mq-dlq = { version = "0.1", features = ["testkit"] }
//!
//! // tests/dead_letter_conformance.rs
//! mq_core::dead_letter_store_tests!(MyFactory::new());
//! mq_dlq::replay_conformance_tests!(MyFactory::new());
//! ```
//!
//! The queue the cases publish to is a small in-process one of this module, so the suite
//! depends on no backend crate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use mq_core::backend::{
    Claim, Claimed, Completion, CompletionAction, Holder, PollingQueue, QueueStore, duplicate_id,
};
use mq_core::testkit::dead_letter::{DeadLetterStoreFactory, all, letter};
use mq_core::{
    Batch, CommonOptions, ConsumerOptions, DeadLetterFilter, DeadLetterSink, DeadLetterStore,
    HandlerContext, Message, MessageQueue, QueueName, ReplayMark, ReplayState, Status, async_trait,
    handler_fn,
};

use crate::replay::{REPLAY_ORIGINAL_ID_KEY, ReplayOptions, Replayer};

/// The smallest queue store that keeps the queue contract the cases rely on: ready messages in
/// `execute_at` order, leases, duplicate ids refused, completions fenced by claim.
#[derive(Debug, Default)]
struct VecStore {
    held: Mutex<Vec<Held>>,
}

#[derive(Debug)]
struct Held {
    message: Message,
    owner: String,
    lease_until: chrono::DateTime<Utc>,
}

impl Held {
    fn is_held(&self, queue: &QueueName, owner: &str, claim: &Claim) -> bool {
        self.message.queue == *queue
            && self.message.id == claim.id
            && self.message.status == Status::Processing
            && self.message.attempts == claim.attempt
            && self.owner == owner
            && self.lease_until > Utc::now()
    }
}

impl VecStore {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<Held>) -> T) -> T {
        f(&mut self.held.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Applies `apply` to the message of each item's claim that `owner` still holds; returns the
    /// claims it no longer holds.
    fn on_held<T>(
        &self,
        queue: &QueueName,
        owner: &str,
        items: Vec<T>,
        claim: impl Fn(&T) -> &Claim,
        mut apply: impl FnMut(&mut Held, T),
    ) -> Vec<Claim> {
        self.with(|held| {
            let mut lost = Vec::new();
            for item in items {
                match held
                    .iter_mut()
                    .find(|h| h.is_held(queue, owner, claim(&item)))
                {
                    Some(h) => apply(h, item),
                    None => lost.push(claim(&item).clone()),
                }
            }
            lost
        })
    }
}

fn lease_end(lease: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::days(1))
}

#[async_trait]
impl QueueStore for VecStore {
    fn backend(&self) -> &'static str {
        "testkit"
    }

    async fn register(&self, _queue: &QueueName) -> mq_core::Result<()> {
        Ok(())
    }

    async fn insert(
        &self,
        queue: &QueueName,
        messages: Vec<Message>,
    ) -> mq_core::Result<Vec<mq_core::Result<()>>> {
        self.with(|held| {
            let stored = |h: &Held, m: &Message| h.message.queue == *queue && h.message.id == m.id;
            Ok(messages
                .into_iter()
                .map(|m| {
                    if held.iter().any(|h| stored(h, &m)) {
                        return Err(duplicate_id(queue, &m.id));
                    }
                    let (owner, lease_until) = (String::new(), Utc::now());
                    held.push(Held {
                        message: m,
                        owner,
                        lease_until,
                    });
                    Ok(())
                })
                .collect())
        })
    }

    async fn claim(
        &self,
        queue: &QueueName,
        holder: Holder<'_>,
        limit: usize,
    ) -> mq_core::Result<Claimed> {
        let Holder { owner, lease, .. } = holder;
        let now = Utc::now();
        self.with(|held| {
            let mut ready: Vec<&mut Held> = held
                .iter_mut()
                .filter(|h| h.message.queue == *queue)
                .filter(|h| match h.message.status {
                    Status::Scheduled => h.message.execute_at <= now,
                    Status::Processing => h.lease_until <= now,
                    _ => false,
                })
                .collect();
            ready.sort_by_key(|h| h.message.execute_at);
            let mut claimed = Claimed::default();
            for h in ready.into_iter().take(limit) {
                h.message.status = Status::Processing;
                h.message.attempts += 1;
                h.message.processing_started_at = Some(now);
                (h.owner, h.lease_until) = (owner.to_owned(), lease_end(lease));
                claimed.messages.push(h.message.clone());
            }
            Ok(claimed)
        })
    }

    async fn renew(
        &self,
        queue: &QueueName,
        holder: Holder<'_>,
        claims: &[Claim],
    ) -> mq_core::Result<Vec<Claim>> {
        let Holder { owner, lease, .. } = holder;
        let renew = |h: &mut Held, _| h.lease_until = lease_end(lease);
        Ok(self.on_held(queue, owner, claims.to_vec(), |c| c, renew))
    }

    async fn complete(
        &self,
        queue: &QueueName,
        owner: &str,
        completions: Vec<Completion>,
    ) -> mq_core::Result<Vec<Claim>> {
        let complete = |h: &mut Held, c: Completion| match c.action {
            CompletionAction::Retry { execute_at, .. } => {
                h.message.status = Status::Scheduled;
                h.message.execute_at = execute_at;
            }
            CompletionAction::Release => {
                h.message.status = Status::Scheduled;
                h.message.attempts = h.message.attempts.saturating_sub(1);
            }
            CompletionAction::Finish { status, .. } => h.message.status = status,
            // Ack, and anything newer: the message is done.
            _ => h.message.status = Status::Executed,
        };
        Ok(self.on_held(queue, owner, completions, |c| &c.claim, complete))
    }
}

/// A fresh in-process queue built with `common`.
fn queue(common: CommonOptions) -> Arc<dyn MessageQueue> {
    Arc::new(PollingQueue::new(VecStore::default(), common))
}

/// The store works as the [`DeadLetterSink`] of a queue: exhausted messages land in it.
pub async fn works_as_a_queue_sink(factory: &dyn DeadLetterStoreFactory, test: &str) {
    let store = factory.create(test).await;
    let sink: Arc<dyn DeadLetterSink> = store.clone();
    let queue = queue(CommonOptions::default().dead_letters(sink));
    let name = QueueName::new("jobs").expect("q");
    queue.register(&name).await.expect("register");
    let msgs = (0..3)
        .map(|i| mq_core::NewMessage::new("job", serde_json::json!({ "i": i })).max_attempts(1))
        .collect();
    queue
        .publish(&name, msgs)
        .await
        .expect("publish")
        .into_result()
        .expect("every message stored");
    let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async move {
        Err::<(), _>(std::io::Error::other("always fails"))
    }));
    let options = mq_core::testkit::fast_options();
    let _report = queue
        .consume_batch(&name, handler, &options)
        .await
        .expect("batch");
    let entries = all(&*store).await;
    assert_eq!(entries.len(), 3);
    for e in &entries {
        assert_eq!(e.queue(), &name);
        assert_eq!(e.origin.backend, queue.backend());
        assert!(e.error.to_string().contains("always fails"), "{}", e.error);
    }
    queue.shutdown().await.expect("shutdown");
}

/// Collects the messages of `queue` in `q` (one consume_batch of up to 1000).
pub async fn drain(q: &dyn MessageQueue, queue: &QueueName) -> Vec<Message> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = Arc::new(handler_fn(move |b: Batch, _c: HandlerContext| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(b.iter().cloned());
        }
    }));
    let options = ConsumerOptions::default()
        .batch_size(1000)
        .lease_duration(Duration::from_secs(30));
    let _report = q
        .consume_batch(queue, handler, &options)
        .await
        .expect("consume");
    seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A fresh store of `factory` holding `n` dead letters of queue `orders`.
async fn store_with_orders(
    factory: &dyn DeadLetterStoreFactory,
    test: &str,
    n: usize,
) -> Arc<dyn DeadLetterStore> {
    let store = factory.create(test).await;
    let letters = (0..n)
        .map(|i| letter("orders", &format!("m{i}"), "t", "e"))
        .collect();
    store.insert(letters).await.expect("insert");
    store
}

/// A dry run marks and publishes nothing.
pub async fn dry_run_publishes_nothing(factory: &dyn DeadLetterStoreFactory, test: &str) {
    let store = store_with_orders(factory, test, 5).await;
    let queue = queue(CommonOptions::default());
    let report = Replayer::new(store.clone(), queue.clone())
        .run(&ReplayOptions::default().dry_run(true))
        .await
        .expect("replay");
    assert!(report.dry_run);
    assert_eq!(report.selected, 5);
    assert_eq!(report.published.len(), 5, "would publish");
    let name = QueueName::new("orders").expect("q");
    queue.register(&name).await.expect("register");
    assert!(drain(&*queue, &name).await.is_empty(), "nothing published");
    let none = DeadLetterFilter::default().replay_state(ReplayState::None);
    assert_eq!(
        store.count(&none).await.expect("count"),
        5,
        "nothing marked"
    );
}

/// A replay interrupted at every possible point and run again publishes each entry exactly once.
pub async fn replay_resumes_without_duplicates(factory: &dyn DeadLetterStoreFactory, test: &str) {
    let store = store_with_orders(factory, test, 10).await;
    let entries = all(&*store).await;
    let queue = queue(CommonOptions::default());
    let name = QueueName::new("orders").expect("q");
    queue.register(&name).await.expect("register");
    // The "crashed" first run: entries 0..6 marked pending; 0..3 published; 0..2 marked done.
    for (i, e) in entries.iter().enumerate().take(6) {
        let mark = ReplayMark::new(&e.id, 1, name.clone(), Utc::now());
        assert!(store.begin_replay(&e.id, 0, &mark).await.expect("begin"));
        if i < 3 {
            let m = mq_core::NewMessage::new("t", serde_json::json!({}))
                .id(mark.message_id.clone())
                .log_context(REPLAY_ORIGINAL_ID_KEY, e.message.id.as_str());
            queue
                .publish(&name, vec![m])
                .await
                .expect("publish")
                .into_result()
                .expect("every message stored");
        }
        if i < 2 {
            store
                .finish_replay(&e.id, &mark.message_id, Utc::now())
                .await
                .expect("finish");
        }
    }
    let replayer = Replayer::new(store.clone(), queue.clone());
    let report = replayer
        .run(&ReplayOptions::default().batch_size(4))
        .await
        .expect("replay");
    assert_eq!(report.selected, 10);
    assert_eq!(report.skipped.len(), 2, "{report:?}");
    assert_eq!(report.already_published.len(), 1, "{report:?}");
    assert_eq!(report.published.len(), 7, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    // A third run does nothing.
    let again = replayer
        .run(&ReplayOptions::default())
        .await
        .expect("replay");
    assert_eq!(again.skipped.len(), 10);
    assert!(again.published.is_empty());
    let mut per_original: HashMap<String, usize> = HashMap::new();
    for m in drain(&*queue, &name).await {
        let orig = m
            .metadata
            .log_context
            .get(REPLAY_ORIGINAL_ID_KEY)
            .cloned()
            .unwrap_or_default();
        *per_original.entry(orig).or_default() += 1;
    }
    assert_eq!(per_original.len(), 10, "{per_original:?}");
    assert!(per_original.values().all(|n| *n == 1), "{per_original:?}");
    let done = DeadLetterFilter::default().replay_state(ReplayState::Done);
    assert_eq!(store.count(&done).await.expect("count"), 10);
}

/// An entry with original bytes replayed to a queue of the backend it came from goes back as
/// those bytes (a [`DeadLetter::ORIGINAL_BYTES_TYPE`](mq_core::DeadLetter::ORIGINAL_BYTES_TYPE)
/// message under its partition key); replayed to a queue of another backend, or without bytes,
/// it goes back as its decoded message.
pub async fn replays_original_bytes_to_their_backend(
    factory: &dyn DeadLetterStoreFactory,
    test: &str,
) {
    let store = factory.create(test).await;
    let queue = queue(CommonOptions::default());
    let bytes: Vec<u8> = vec![b'{', b' ', 0xff, 0x00, b'"', b'$', b'}', b'\n'];
    let backend = queue.backend();
    let mut same = letter("events", "same", "t", "e").original_bytes(bytes.clone());
    same.origin = mq_core::DeadLetterOrigin::shard(backend, "shard-0", "17");
    let mut other = letter("events", "other", "t", "e").original_bytes(bytes.clone());
    other.origin = mq_core::DeadLetterOrigin::shard("elsewhere", "shard-0", "18");
    let mut plain = letter("events", "plain", "t", "e");
    plain.origin = mq_core::DeadLetterOrigin::backend(backend);
    store
        .insert(vec![same.clone(), other.clone(), plain.clone()])
        .await
        .expect("insert");
    let report = Replayer::new(store.clone(), queue.clone())
        .run(&ReplayOptions::default())
        .await
        .expect("replay");
    assert_eq!(report.published.len(), 3, "{report:?}");
    let name = QueueName::new("events").expect("q");
    let replayed: HashMap<String, Message> = drain(&*queue, &name)
        .await
        .into_iter()
        .map(|m| {
            let orig = m.metadata.log_context[REPLAY_ORIGINAL_ID_KEY].clone();
            (orig, m)
        })
        .collect();
    assert_eq!(replayed.len(), 3, "{replayed:?}");
    let as_bytes = &replayed["same"];
    assert_eq!(
        as_bytes.message_type,
        mq_core::DeadLetter::ORIGINAL_BYTES_TYPE
    );
    assert_eq!(
        mq_core::DeadLetter::original_bytes_in(as_bytes),
        Some(bytes),
        "the original bytes, unchanged"
    );
    assert_eq!(as_bytes.partition_key, same.message.partition_key);
    for (id, letter) in [("other", &other), ("plain", &plain)] {
        let m = &replayed[id];
        assert_eq!(m.message_type, letter.message.message_type, "{id}");
        assert_eq!(
            m.payload, letter.message.payload,
            "{id}: the decoded message"
        );
        assert_eq!(m.partition_key, letter.message.partition_key, "{id}");
    }
}

/// Stamps one `#[tokio::test]` per replay case, each calling `$factory` for a fresh
/// `mq_core::testkit::dead_letter::DeadLetterStoreFactory`. The calling crate needs `tokio` with
/// `macros` and `rt-multi-thread`.
#[macro_export]
macro_rules! replay_conformance_tests {
    ($factory:expr) => {
        $crate::replay_conformance_tests!(@cases $factory;
            works_as_a_queue_sink,
            dry_run_publishes_nothing,
            replay_resumes_without_duplicates,
            replays_original_bytes_to_their_backend
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                let test = concat!(module_path!(), "::", stringify!($case));
                if mq_core::testkit::dead_letter::should_skip(&factory, test) {
                    return;
                }
                $crate::testkit::$case(&factory, stringify!($case)).await;
            }
        )*
    };
}
