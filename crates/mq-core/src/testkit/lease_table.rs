//! The lease-table conformance suite: every [`LeaseTable`] writes by compare-and-set, keeps
//! streams and kinds apart, and counts without losing a bump.
//!
//! A table implements [`LeaseTableFactory`] and stamps every case into a test binary:
//!
//! ```text
//! mq_core::lease_table_tests!(MyFactory::new());
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;

use crate::lease_table::{LeaseTable, MAX_LEASE_TABLE_KEY_BYTES};

pub use super::checkpoint::stream_name;

/// Builds isolated lease tables for the conformance cases.
#[async_trait]
pub trait LeaseTableFactory: Send + Sync + 'static {
    /// A table for the case named `test` (its own table, collection or namespace), or `None`
    /// (after printing why, see [`service_url`](super::service_url)) to skip it.
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseTable>>;
}

/// Nothing stored: no record, an empty listing, and no conditional write or delete succeeds.
pub async fn empty_table_holds_nothing(f: &dyn LeaseTableFactory, test: &str) {
    let table = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert_eq!(table.get(&s, "lease", "shard-0").await.expect("get"), None);
    assert!(table.list(&s, "lease").await.expect("list").is_empty());
    assert!(
        !table
            .delete(&s, "lease", "shard-0", 1)
            .await
            .expect("delete")
    );
    assert!(
        !table
            .put(&s, "lease", "shard-0", "v", Some(1))
            .await
            .expect("put"),
        "an update of a missing record must fail"
    );
    assert_eq!(table.get(&s, "lease", "shard-0").await.expect("get"), None);
}

/// A record is created once, at version 1; a second create fails and keeps the first value.
pub async fn put_creates_once(f: &dyn LeaseTableFactory, test: &str) {
    let table = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert!(
        table
            .put(&s, "lease", "a", "first", None)
            .await
            .expect("put")
    );
    assert!(
        !table
            .put(&s, "lease", "a", "second", None)
            .await
            .expect("put")
    );
    let r = table
        .get(&s, "lease", "a")
        .await
        .expect("get")
        .expect("record");
    assert_eq!((r.value.as_str(), r.version), ("first", 1));
}

/// An update succeeds only from the version it read, and raises it by one.
pub async fn put_compares_the_version(f: &dyn LeaseTableFactory, test: &str) {
    let table = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert!(table.put(&s, "lease", "a", "v1", None).await.expect("put"));
    assert!(
        table
            .put(&s, "lease", "a", "v2", Some(1))
            .await
            .expect("put")
    );
    assert!(
        !table
            .put(&s, "lease", "a", "stale", Some(1))
            .await
            .expect("put"),
        "a writer that read version 1 must lose to the one that wrote after it"
    );
    assert!(
        !table
            .put(&s, "lease", "a", "ahead", Some(3))
            .await
            .expect("put")
    );
    let r = table
        .get(&s, "lease", "a")
        .await
        .expect("get")
        .expect("record");
    assert_eq!((r.value.as_str(), r.version), ("v2", 2));
    assert!(
        table
            .put(&s, "lease", "a", "v3", Some(2))
            .await
            .expect("put")
    );
    let r = table
        .get(&s, "lease", "a")
        .await
        .expect("get")
        .expect("record");
    assert_eq!((r.value.as_str(), r.version), ("v3", 3));
}

/// A delete succeeds only at the version given; the name can be created again afterwards.
pub async fn delete_compares_the_version(f: &dyn LeaseTableFactory, test: &str) {
    let table = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert!(table.put(&s, "lease", "a", "v1", None).await.expect("put"));
    assert!(
        table
            .put(&s, "lease", "a", "v2", Some(1))
            .await
            .expect("put")
    );
    assert!(!table.delete(&s, "lease", "a", 1).await.expect("delete"));
    assert!(table.get(&s, "lease", "a").await.expect("get").is_some());
    assert!(table.delete(&s, "lease", "a", 2).await.expect("delete"));
    assert_eq!(table.get(&s, "lease", "a").await.expect("get"), None);
    assert!(!table.delete(&s, "lease", "a", 2).await.expect("delete"));
    assert!(
        table
            .put(&s, "lease", "a", "again", None)
            .await
            .expect("put")
    );
    let r = table
        .get(&s, "lease", "a")
        .await
        .expect("get")
        .expect("record");
    assert_eq!((r.value.as_str(), r.version), ("again", 1));
}

/// A listing holds one stream's records of one kind, sorted by name (bytewise); other streams
/// and kinds, names that share a prefix, and names that differ only in case or in a trailing
/// space stay apart.
pub async fn list_keeps_streams_and_kinds_apart(f: &dyn LeaseTableFactory, test: &str) {
    let table = or_skip!(f.create(test).await);
    let s = stream_name(test);
    let other = format!("{s}-other");
    for name in [
        "shard-2", "shard-10", "shard-1", "a%_b", "SHARD-1", "shard-1 ",
    ] {
        assert!(table.put(&s, "lease", name, name, None).await.expect("put"));
    }
    assert!(
        table
            .put(&s, "member", "shard-1", "m", None)
            .await
            .expect("put")
    );
    assert!(
        table
            .put(&other, "lease", "shard-9", "o", None)
            .await
            .expect("put")
    );
    // a stream whose name extends another's, and a kind that extends another's
    assert!(
        table
            .put(&format!("{s}x"), "lease", "x", "x", None)
            .await
            .expect("put")
    );
    assert!(table.put(&s, "leasex", "y", "y", None).await.expect("put"));
    let listed: Vec<(String, String)> = table
        .list(&s, "lease")
        .await
        .expect("list")
        .into_iter()
        .map(|(n, r)| (n, r.value))
        .collect();
    let want: Vec<(String, String)> = [
        "SHARD-1", "a%_b", "shard-1", "shard-1 ", "shard-10", "shard-2",
    ]
    .iter()
    .map(|n| ((*n).to_owned(), (*n).to_owned()))
    .collect();
    assert_eq!(
        listed, want,
        "sorted by name (bytewise), this stream and kind only"
    );
    assert_eq!(table.list(&s, "member").await.expect("list").len(), 1);
    assert_eq!(table.list(&other, "lease").await.expect("list").len(), 1);
    let upper = table
        .get(&s, "lease", "SHARD-1")
        .await
        .expect("get")
        .expect("record");
    assert_eq!(upper.value, "SHARD-1");
    assert_eq!(
        table.get(&other, "lease", "shard-1").await.expect("get"),
        None
    );
}

/// Names and streams of [`MAX_LEASE_TABLE_KEY_BYTES`] bytes (not ASCII) and a value of 512 KiB
/// round-trip unchanged: a published shard listing of a large stream is that big.
pub async fn long_keys_and_large_values_round_trip(f: &dyn LeaseTableFactory, test: &str) {
    let table = or_skip!(f.create(test).await);
    let s = stream_name(test);
    // 'é' is two bytes in UTF-8
    let name = "é".repeat(MAX_LEASE_TABLE_KEY_BYTES / 2) + "x";
    assert_eq!(name.len(), MAX_LEASE_TABLE_KEY_BYTES);
    let stream = format!(
        "{s}-{}",
        "s".repeat(MAX_LEASE_TABLE_KEY_BYTES - s.len() - 1)
    );
    assert_eq!(stream.len(), MAX_LEASE_TABLE_KEY_BYTES);
    let value: String = (0..512 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert!(
        table
            .put(&stream, "listing", &name, &value, None)
            .await
            .expect("put")
    );
    let r = table
        .get(&stream, "listing", &name)
        .await
        .expect("get")
        .expect("record");
    assert_eq!(r.value.len(), value.len());
    assert!(r.value == value, "the value must come back byte for byte");
    let listed = table.list(&stream, "listing").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, name);
    let json = r#"{"owner":"b\"q\\","n":"日本"}"#;
    assert!(table.put(&s, "lease", "j", json, None).await.expect("put"));
    let r = table
        .get(&s, "lease", "j")
        .await
        .expect("get")
        .expect("record");
    assert_eq!(r.value, json);
}

/// A bump creates a missing counter at 1 and raises it by one a call, also on a record that was
/// written with [`LeaseTable::put`], whose value it keeps.
pub async fn bump_counts_from_one(f: &dyn LeaseTableFactory, test: &str) {
    let table = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert_eq!(table.bump(&s, "meta", "version").await.expect("bump"), 1);
    assert_eq!(table.bump(&s, "meta", "version").await.expect("bump"), 2);
    assert_eq!(
        table
            .get(&s, "meta", "version")
            .await
            .expect("get")
            .map(|r| r.version),
        Some(2)
    );
    assert!(
        table
            .put(&s, "meta", "kept", "value", None)
            .await
            .expect("put")
    );
    assert_eq!(table.bump(&s, "meta", "kept").await.expect("bump"), 2);
    let r = table
        .get(&s, "meta", "kept")
        .await
        .expect("get")
        .expect("record");
    assert_eq!((r.value.as_str(), r.version), ("value", 2));
    assert_eq!(
        table
            .bump(&format!("{s}-other"), "meta", "version")
            .await
            .expect("bump"),
        1
    );
}

/// Eight writers bump one counter 25 times each: it ends at 200 and every bump saw its own
/// number.
pub async fn concurrent_bumps_lose_nothing(f: &dyn LeaseTableFactory, test: &str) {
    let table = or_skip!(f.create(test).await);
    let s = stream_name(test);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (table, s) = (table.clone(), s.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..25 {
                    seen.push(table.bump(&s, "meta", "version").await.expect("bump"));
                }
                seen
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for t in tasks {
        for v in t.await.expect("task") {
            assert!(all.insert(v), "bump {v} was handed out twice");
        }
    }
    assert_eq!(all.len(), 200);
    assert_eq!(all.iter().next_back().copied(), Some(200));
}

/// Eight writers add one to a number in a record 20 times each by read, compare-and-set and
/// retry: it ends at 160 (no update lost), and of eight creates of one name exactly one wins.
pub async fn concurrent_writers_lose_no_update(f: &dyn LeaseTableFactory, test: &str) {
    let table = or_skip!(f.create(test).await);
    let s = stream_name(test);
    assert!(
        table
            .put(&s, "failures", "n", "0", None)
            .await
            .expect("put")
    );
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (table, s) = (table.clone(), s.clone());
            tokio::spawn(async move {
                for _ in 0..20 {
                    loop {
                        let r = table
                            .get(&s, "failures", "n")
                            .await
                            .expect("get")
                            .expect("n");
                        let n: u64 = r.value.parse().expect("a number");
                        let next = (n + 1).to_string();
                        if table
                            .put(&s, "failures", "n", &next, Some(r.version))
                            .await
                            .expect("put")
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let r = table
        .get(&s, "failures", "n")
        .await
        .expect("get")
        .expect("n");
    assert_eq!(r.value, "160", "every read-modify-write must count once");
    assert_eq!(r.version, 161);

    let creators: Vec<_> = (0..8)
        .map(|i| {
            let (table, s) = (table.clone(), s.clone());
            tokio::spawn(async move {
                table
                    .put(&s, "lease", "contested", &i.to_string(), None)
                    .await
                    .expect("put")
            })
        })
        .collect();
    let mut winners = 0;
    for c in creators {
        winners += usize::from(c.await.expect("task"));
    }
    assert_eq!(winners, 1, "exactly one create of a name may win");
}

/// The store's clock is Unix milliseconds close to this machine's (same host in tests), and
/// does not run backwards between calls.
pub async fn clock_is_unix_milliseconds(f: &dyn LeaseTableFactory, test: &str) {
    let table = or_skip!(f.create(test).await);
    let local = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let first = table.now_ms().await.expect("now");
    let second = table.now_ms().await.expect("now");
    assert!(
        first.abs_diff(local) < 60_000,
        "store clock {first} ms is not near local {local} ms: not Unix milliseconds?"
    );
    assert!(
        second >= first,
        "the clock ran backwards: {first} then {second}"
    );
}

/// Stamps every lease-table conformance case into the calling test binary as a `#[tokio::test]`,
/// each building its table with `$factory` (an expression that creates a
/// [`LeaseTableFactory`]).
#[macro_export]
macro_rules! lease_table_tests {
    ($factory:expr) => {
        $crate::__stamp_cases!($factory; lease_table;
            empty_table_holds_nothing,
            put_creates_once,
            put_compares_the_version,
            delete_compares_the_version,
            list_keeps_streams_and_kinds_apart,
            long_keys_and_large_values_round_trip,
            bump_counts_from_one,
            concurrent_bumps_lose_nothing,
            concurrent_writers_lose_no_update,
            clock_is_unix_milliseconds
        );
    };
}
