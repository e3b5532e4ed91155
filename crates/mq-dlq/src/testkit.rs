//! The dead-letter store conformance suite (feature `testkit`).
//!
//! A store implements [`StoreFactory`] and stamps every case into its test binary with one macro
//! call:
//!
//! ```text
//! mq_dlq::store_conformance_tests!(MyFactory::new());
//! ```
//!
//! Each case is a plain async function of this module taking the factory and the test name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mq_core::{
    Batch, ConsumerOptions, DeadLetter, DeadLetterOrigin, DeadLetterSink, ErrorChain,
    HandlerContext, Message, MessageId, MessageQueue, QueueName, handler_fn,
};
use mq_memory::{InMemoryOptions, InMemoryQueue};

use crate::replay::{REPLAY_ORIGINAL_ID_KEY, ReplayOptions, Replayer};
use mq_core::DeadLetterFilter;
use mq_core::DeadLetterStore;
use mq_core::{EntryId, ReplayMark, ReplayState};

/// Builds isolated dead-letter stores for the conformance cases.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// Why this store cannot run here (a missing service variable), or `None`. Use
    /// [`mq_core::testkit::service_url`] to fail under `MQ_REQUIRE_SERVICES=1` and skip with a
    /// printed reason otherwise.
    fn skip_reason(&self) -> Option<String> {
        None
    }

    /// A fresh, migrated, empty store for the case named `test`, isolated from every other case
    /// (its own table or collection).
    async fn create(&self, test: &str) -> Arc<dyn DeadLetterStore>;
}

/// Returns true (after printing why) when `factory` cannot run here; panics instead under
/// `MQ_REQUIRE_SERVICES=1`.
pub fn should_skip(factory: &dyn StoreFactory, test: &str) -> bool {
    match factory.skip_reason() {
        Some(reason) => {
            if std::env::var("MQ_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("{test}: required service missing: {reason}");
            }
            eprintln!("skipping {test}: {reason}");
            true
        }
        None => false,
    }
}

/// A table or collection name for `test`: `dlq_` plus the test name, cut to 55 characters.
pub fn table_name(test: &str) -> String {
    let cleaned: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut name = format!("dlq_{cleaned}");
    name.truncate(55);
    name
}

/// A dead letter of message `id` of type `message_type` in `queue`, failed with `error`.
pub fn letter(queue: &str, id: &str, message_type: &str, error: &str) -> DeadLetter {
    let mut m = Message::new(
        MessageId::new(id).unwrap_or_else(|e| panic!("{e}")),
        QueueName::new(queue).unwrap_or_else(|e| panic!("{e}")),
        message_type,
        serde_json::json!({ "id": id, "n": 1.5, "nested": { "list": [1, 2, 3] } }),
        Utc::now(),
    );
    m.attempts = 3;
    m.max_attempts = Some(3);
    m.partition_key = Some(format!("pk-{id}"));
    m.metadata
        .log_context
        .insert("request_id".into(), format!("r-{id}"));
    DeadLetter::new(
        m,
        DeadLetterOrigin::backend("test"),
        ErrorChain::from_error(&Wrapped(
            error.to_owned(),
            std::io::Error::other("root cause"),
        )),
        true,
        "consumer-1",
    )
}

#[derive(Debug)]
struct Wrapped(String, std::io::Error);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.1)
    }
}

async fn all(store: &dyn DeadLetterStore) -> Vec<mq_core::DeadLetterEntry> {
    store
        .list(&DeadLetterFilter::default())
        .await
        .unwrap_or_else(|e| panic!("list: {e:?}"))
}

/// An entry keeps the message untouched, its origin, the error chain, attempts, failure times
/// and the consumer, and `get` finds it.
pub async fn stores_letters_untouched(factory: &dyn StoreFactory, test: &str) {
    let store = factory.create(test).await;
    let mut l = letter("orders", "m1", "charge", "card declined");
    l.origin = DeadLetterOrigin::shard(
        "kinesis",
        "shardId-000000000001",
        "49590338271490256608559692538361571095921575989136588898",
    );
    let expected = l.clone();
    store.insert(vec![l]).await.expect("insert");
    let entries = all(&*store).await;
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.message, expected.message, "message untouched");
    assert_eq!(e.origin, expected.origin);
    assert_eq!(e.error, expected.error);
    assert_eq!(e.error.causes(), ["card declined", "root cause"]);
    assert_eq!(e.attempts, 3);
    assert!(e.exhausted);
    assert_eq!(e.failures, 1);
    assert_eq!(e.consumer_id, "consumer-1");
    assert_eq!(
        e.first_failed_at.timestamp_millis(),
        expected.failed_at.timestamp_millis()
    );
    assert_eq!(e.first_failed_at, e.last_failed_at);
    assert_eq!(e.replay_state(), ReplayState::None);
    let got = store.get(&e.id).await.expect("get").expect("found");
    assert_eq!(&got, e);
    assert!(
        store
            .get(&EntryId::generate())
            .await
            .expect("get")
            .is_none()
    );
    store.insert(vec![]).await.expect("empty insert is a no-op");
}

/// The same message dead-lettered again adds a failure to its entry.
pub async fn repeated_letter_adds_a_failure(factory: &dyn StoreFactory, test: &str) {
    let store = factory.create(test).await;
    let first = letter("orders", "m1", "charge", "card declined");
    let mut again = letter("orders", "m1", "charge", "gateway timeout");
    again.failed_at = first.failed_at + chrono::Duration::seconds(5);
    again.message.attempts = 5;
    again.consumer_id = "consumer-2".into();
    store.insert(vec![first.clone()]).await.expect("insert");
    store
        .insert(vec![again, letter("orders", "m2", "charge", "x")])
        .await
        .expect("insert");
    let entries = all(&*store).await;
    assert_eq!(entries.len(), 2);
    let e = entries
        .iter()
        .find(|e| e.message.id.as_str() == "m1")
        .expect("m1");
    assert_eq!(e.failures, 2);
    assert_eq!(e.attempts, 5);
    assert_eq!(e.error.causes()[0], "gateway timeout");
    assert_eq!(e.consumer_id, "consumer-2");
    assert_eq!(
        e.message.attempts, 3,
        "the stored message stays as first failed"
    );
    assert_eq!(
        e.last_failed_at - e.first_failed_at,
        chrono::Duration::seconds(5)
    );
}

/// Every filter criterion selects what [`DeadLetterFilter::matches`] says, and `count` agrees.
pub async fn filters_agree_with_matches(factory: &dyn StoreFactory, test: &str) {
    let store = factory.create(test).await;
    let t0 = Utc::now() - chrono::Duration::minutes(10);
    let mut letters = Vec::new();
    for i in 0..12 {
        let queue = if i % 2 == 0 { "orders" } else { "emails" };
        let ty = if i % 3 == 0 { "charge" } else { "notify" };
        let error = match i % 4 {
            0 => "Gateway TIMEOUT after 30s",
            1 => "100% of retries_used",
            2 => "card declined",
            _ => "timeout_x",
        };
        let mut l = letter(queue, &format!("m{i}"), ty, error);
        l.failed_at = t0 + chrono::Duration::seconds(i);
        letters.push(l);
    }
    store.insert(letters).await.expect("insert");
    let entries = all(&*store).await;
    assert_eq!(entries.len(), 12);
    let ids: Vec<EntryId> = entries.iter().take(3).map(|e| e.id.clone()).collect();
    let filters = [
        DeadLetterFilter::default(),
        DeadLetterFilter::default().queue(QueueName::new("orders").expect("q")),
        DeadLetterFilter::default().message_type("charge"),
        DeadLetterFilter::default().failed_after(t0 + chrono::Duration::seconds(4)),
        DeadLetterFilter::default().failed_before(t0 + chrono::Duration::seconds(4)),
        DeadLetterFilter::default()
            .failed_after(t0 + chrono::Duration::seconds(2))
            .failed_before(t0 + chrono::Duration::seconds(9)),
        DeadLetterFilter::default().ids(ids),
        DeadLetterFilter::default().message_ids([
            MessageId::new("m3").expect("id"),
            MessageId::new("m7").expect("id"),
        ]),
        DeadLetterFilter::default().error_contains("timeout"),
        DeadLetterFilter::default().error_contains("100%"),
        DeadLetterFilter::default().error_contains("t_x"),
        DeadLetterFilter::default().error_contains("ROOT cause"),
        DeadLetterFilter::default().error_contains("no such text"),
        DeadLetterFilter::default().replay_state(ReplayState::None),
        DeadLetterFilter::default().replay_state(ReplayState::Done),
        DeadLetterFilter::default()
            .queue(QueueName::new("emails").expect("q"))
            .error_contains("timeout")
            .message_type("notify"),
    ];
    for f in filters {
        let want: Vec<&EntryId> = entries
            .iter()
            .filter(|e| f.matches(e))
            .map(|e| &e.id)
            .collect();
        let got = store.list(&f).await.expect("list");
        let got: Vec<&EntryId> = got.iter().map(|e| &e.id).collect();
        assert_eq!(got, want, "filter {f:?}");
        assert_eq!(
            store.count(&f).await.expect("count"),
            want.len() as u64,
            "count {f:?}"
        );
    }
    assert_eq!(
        store
            .count(&DeadLetterFilter::default().error_contains("100%"))
            .await
            .expect("count"),
        3,
        "% is literal"
    );
}

/// `list` pages in id order with `after` and `limit`.
pub async fn pages_in_id_order(factory: &dyn StoreFactory, test: &str) {
    let store = factory.create(test).await;
    let letters = (0..25)
        .map(|i| letter("orders", &format!("m{i:02}"), "t", "e"))
        .collect();
    store.insert(letters).await.expect("insert");
    let everything = all(&*store).await;
    let mut sorted = everything.clone();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(everything, sorted, "id order");
    let mut seen = Vec::new();
    let mut f = DeadLetterFilter::default().limit(10);
    loop {
        let page = store.list(&f).await.expect("list");
        assert!(page.len() <= 10);
        let Some(last) = page.last() else { break };
        f = f.after(last.id.clone());
        seen.extend(page.into_iter().map(|e| e.id));
    }
    assert_eq!(seen, sorted.into_iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!(
        store
            .count(&DeadLetterFilter::default().limit(3))
            .await
            .expect("count"),
        25,
        "count ignores paging"
    );
}

/// Replay marks are a compare-and-set on the generation, pending then done.
pub async fn replay_marks_are_compare_and_set(factory: &dyn StoreFactory, test: &str) {
    let store = factory.create(test).await;
    store
        .insert(vec![letter("orders", "m1", "t", "e")])
        .await
        .expect("insert");
    let id = all(&*store).await[0].id.clone();
    let target = QueueName::new("orders-retry").expect("q");
    let mark = ReplayMark::new(&id, 1, target.clone(), Utc::now());
    assert!(
        !store.begin_replay(&id, 1, &mark).await.expect("cas"),
        "wrong generation"
    );
    assert!(store.begin_replay(&id, 0, &mark).await.expect("cas"));
    assert!(
        !store.begin_replay(&id, 0, &mark).await.expect("cas"),
        "taken"
    );
    let e = store.get(&id).await.expect("get").expect("found");
    assert_eq!(e.replay_state(), ReplayState::Pending);
    assert_eq!(
        e.replay.as_ref().map(|m| &m.message_id),
        Some(&mark.message_id)
    );
    assert_eq!(e.replay.as_ref().map(|m| &m.target), Some(&target));
    let other = MessageId::new("other").expect("id");
    assert!(
        !store
            .finish_replay(&id, &other, Utc::now())
            .await
            .expect("finish")
    );
    assert!(
        store
            .finish_replay(&id, &mark.message_id, Utc::now())
            .await
            .expect("finish")
    );
    assert!(
        store
            .finish_replay(&id, &mark.message_id, Utc::now())
            .await
            .expect("finish"),
        "finishing twice is harmless"
    );
    let e = store.get(&id).await.expect("get").expect("found");
    assert_eq!(e.replay_state(), ReplayState::Done);
    assert_eq!(e.replay.as_ref().map(|m| m.generation), Some(1));
    let done = DeadLetterFilter::default().replay_state(ReplayState::Done);
    assert_eq!(store.count(&done).await.expect("count"), 1);
    let second = ReplayMark::new(&id, 2, target, Utc::now());
    assert!(!store.begin_replay(&id, 0, &second).await.expect("cas"));
    assert!(store.begin_replay(&id, 1, &second).await.expect("cas"));
    assert!(
        !store
            .begin_replay(&EntryId::generate(), 0, &second)
            .await
            .expect("cas"),
        "unknown entry"
    );
}

/// `purge` deletes exactly the matching entries.
pub async fn purge_deletes_only_matches(factory: &dyn StoreFactory, test: &str) {
    let store = factory.create(test).await;
    let letters = (0..10)
        .map(|i| {
            let q = if i < 4 { "orders" } else { "emails" };
            letter(q, &format!("m{i}"), "t", "e")
        })
        .collect();
    store.insert(letters).await.expect("insert");
    let orders = DeadLetterFilter::default().queue(QueueName::new("orders").expect("q"));
    assert_eq!(store.purge(&orders).await.expect("purge"), 4);
    assert_eq!(store.count(&orders).await.expect("count"), 0);
    assert_eq!(
        store
            .count(&DeadLetterFilter::default())
            .await
            .expect("count"),
        6
    );
    // A purged message dead-lettered again is a new entry.
    store
        .insert(vec![letter("orders", "m0", "t", "e")])
        .await
        .expect("insert");
    assert_eq!(store.count(&orders).await.expect("count"), 1);
    assert_eq!(
        store
            .purge(&DeadLetterFilter::default())
            .await
            .expect("purge"),
        7
    );
}

/// The store works as the [`DeadLetterSink`] of a queue: exhausted messages land in it.
pub async fn works_as_a_queue_sink(factory: &dyn StoreFactory, test: &str) {
    let store = factory.create(test).await;
    let sink: Arc<dyn DeadLetterSink> = store.clone();
    let queue = InMemoryQueue::new(
        InMemoryOptions::default().common(mq_core::CommonOptions::default().dead_letters(sink)),
    );
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
        assert_eq!(e.origin.backend, "memory");
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

/// A dry run marks and publishes nothing.
pub async fn dry_run_publishes_nothing(factory: &dyn StoreFactory, test: &str) {
    let store = factory.create(test).await;
    let letters = (0..5)
        .map(|i| letter("orders", &format!("m{i}"), "t", "e"))
        .collect();
    store.insert(letters).await.expect("insert");
    let queue = Arc::new(InMemoryQueue::default());
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
pub async fn replay_resumes_without_duplicates(factory: &dyn StoreFactory, test: &str) {
    let store = factory.create(test).await;
    let letters = (0..10)
        .map(|i| letter("orders", &format!("m{i}"), "t", "e"))
        .collect();
    store.insert(letters).await.expect("insert");
    let entries = all(&*store).await;
    let queue = Arc::new(InMemoryQueue::default());
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

/// Stamps one `#[tokio::test]` per store conformance case, each calling `$factory` for a fresh
/// [`StoreFactory`]. The calling crate needs `tokio` with `macros` and `rt-multi-thread`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::store_conformance_tests!(@cases $factory;
            stores_letters_untouched,
            repeated_letter_adds_a_failure,
            filters_agree_with_matches,
            pages_in_id_order,
            replay_marks_are_compare_and_set,
            purge_deletes_only_matches,
            works_as_a_queue_sink,
            dry_run_publishes_nothing,
            replay_resumes_without_duplicates
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                let test = concat!(module_path!(), "::", stringify!($case));
                if $crate::testkit::should_skip(&factory, test) {
                    return;
                }
                $crate::testkit::$case(&factory, stringify!($case)).await;
            }
        )*
    };
}
