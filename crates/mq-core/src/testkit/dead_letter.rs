//! The dead-letter store conformance suite: plain async cases any [`DeadLetterStore`] runs
//! with one macro call.
//!
//! ```text
//! mq_core::dead_letter_store_tests!(MyFactory::new());
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;

use crate::dead_letter::{
    DeadLetter, DeadLetterEntry, DeadLetterFilter, DeadLetterOrigin, DeadLetterStore, EntryId,
    ErrorChain, ReplayMark, ReplayState,
};
use crate::message::{Message, MessageId};
use crate::queue_name::QueueName;

/// Builds isolated dead-letter stores for the conformance cases.
#[async_trait]
pub trait DeadLetterStoreFactory: Send + Sync + 'static {
    /// Why this store cannot run here (a missing service variable), or `None`. Use
    /// [`service_url`](crate::testkit::service_url) to fail under `MQ_REQUIRE_SERVICES=1` and skip with a
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
pub fn should_skip(factory: &dyn DeadLetterStoreFactory, test: &str) -> bool {
    super::skip_for(factory.skip_reason(), test)
}

/// A fresh store for `test`, or `None` when the factory cannot run here (see [`should_skip`]).
async fn open(
    factory: &dyn DeadLetterStoreFactory,
    test: &str,
) -> Option<Arc<dyn DeadLetterStore>> {
    if should_skip(factory, test) {
        return None;
    }
    Some(factory.create(test).await)
}

/// A table or collection name for `test`: `dlq_` plus the test name, cut to 55 characters.
pub fn table_name(test: &str) -> String {
    super::identifier("dlq_", test, 55)
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

/// Every entry of `store`, in id order.
pub async fn all(store: &dyn DeadLetterStore) -> Vec<DeadLetterEntry> {
    store
        .list(&DeadLetterFilter::default())
        .await
        .unwrap_or_else(|e| panic!("list: {e:?}"))
}

/// An entry keeps the message untouched, its origin, the error chain, attempts, failure times
/// and the consumer, and `get` finds it.
pub async fn stores_letters_untouched(factory: &dyn DeadLetterStoreFactory, test: &str) {
    let store = or_skip!(open(factory, test).await);
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
pub async fn repeated_letter_adds_a_failure(factory: &dyn DeadLetterStoreFactory, test: &str) {
    let store = or_skip!(open(factory, test).await);
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
pub async fn filters_agree_with_matches(factory: &dyn DeadLetterStoreFactory, test: &str) {
    let store = or_skip!(open(factory, test).await);
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
pub async fn pages_in_id_order(factory: &dyn DeadLetterStoreFactory, test: &str) {
    let store = or_skip!(open(factory, test).await);
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
pub async fn replay_marks_are_compare_and_set(factory: &dyn DeadLetterStoreFactory, test: &str) {
    let store = or_skip!(open(factory, test).await);
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

/// The original bytes of a letter come back exactly (bytes that are not UTF-8, and none at
/// all, included) from `get` and `list`; a letter without them reads as `None`; dead-lettering
/// the message again keeps the first bytes, as it keeps the first message.
pub async fn keeps_original_bytes(factory: &dyn DeadLetterStoreFactory, test: &str) {
    let store = or_skip!(open(factory, test).await);
    let binary: Vec<u8> = vec![0xf3, 0x89, 0x9a, 0xc2, 0x00, 0xff, b'{', 0xc3, 0x28, b'\n'];
    let text = b" {\"_id\" : {\"$oid\":\"65f1c0ffee\"},\t\"type\":\"t\" }\r\n".to_vec();
    let cases: [(&str, Option<Vec<u8>>); 4] = [
        ("binary", Some(binary.clone())),
        ("text", Some(text)),
        ("empty", Some(Vec::new())),
        ("none", None),
    ];
    let letters: Vec<DeadLetter> = cases
        .iter()
        .map(|(id, bytes)| {
            let l = letter("events", id, "t", "e");
            match bytes {
                Some(b) => l.original_bytes(b.clone()),
                None => l,
            }
        })
        .collect();
    store.insert(letters).await.expect("insert");
    let listed = all(&*store).await;
    assert_eq!(listed.len(), cases.len());
    for (id, bytes) in &cases {
        let e = listed
            .iter()
            .find(|e| e.message.id.as_str() == *id)
            .unwrap_or_else(|| panic!("entry {id} listed"));
        assert_eq!(&e.original_bytes, bytes, "list: original bytes of {id}");
        let got = store.get(&e.id).await.expect("get").expect("found");
        assert_eq!(&got.original_bytes, bytes, "get: original bytes of {id}");
    }
    store
        .insert(vec![
            letter("events", "binary", "t", "again").original_bytes(b"other".to_vec()),
        ])
        .await
        .expect("insert again");
    let again = store
        .list(&DeadLetterFilter::default().message_ids([MessageId::new("binary").expect("id")]))
        .await
        .expect("list");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].failures, 2);
    assert_eq!(
        again[0].original_bytes,
        Some(binary),
        "the first bytes are kept"
    );
}

/// `purge` deletes exactly the matching entries.
pub async fn purge_deletes_only_matches(factory: &dyn DeadLetterStoreFactory, test: &str) {
    let store = or_skip!(open(factory, test).await);
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

/// Stamps one `#[tokio::test]` per dead-letter store case, each calling `$factory` for a fresh
/// [`DeadLetterStoreFactory`]. The calling crate needs `tokio` with `macros` and
/// `rt-multi-thread`.
#[macro_export]
macro_rules! dead_letter_store_tests {
    ($factory:expr) => {
        $crate::__stamp_cases!($factory; dead_letter;
            stores_letters_untouched,
            repeated_letter_adds_a_failure,
            filters_agree_with_matches,
            pages_in_id_order,
            replay_marks_are_compare_and_set,
            purge_deletes_only_matches,
            keeps_original_bytes
        );
    };
}
