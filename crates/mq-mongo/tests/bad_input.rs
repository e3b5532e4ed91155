//! Bad input: an unreachable server, a broken URI, hostile names, duplicate ids.

#[path = "common/mongo.rs"]
mod common;

use std::time::{Duration, Instant};

use mq_core::testkit::queue_name;
use mq_core::{Error as CoreError, MessageId, MessageQueue, NewMessage, Status};
use mq_mongo::mongodb::Client;
use mq_mongo::{
    Error, MongoCheckpointStore, MongoDeadLetterStore, MongoLeaseTable, MongoOptions, MongoQueue,
};
use serde_json::json;

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Opens a queue, a dead-letter store, a checkpoint store and a lease table on `uri` with
/// `options`, at once.
async fn connect_all(uri: &str, options: MongoOptions) -> [Result<(), CoreError>; 4] {
    let (q, d, c, l) = tokio::join!(
        MongoQueue::connect(uri, options.clone()),
        MongoDeadLetterStore::connect(uri, options.clone()),
        MongoCheckpointStore::connect(uri, options.clone()),
        MongoLeaseTable::connect(uri, options),
    );
    [q.map(drop), d.map(drop), c.map(drop), l.map(drop)]
}

/// The same, on a client the caller built (which has not talked to any server yet).
async fn from_client_all(client: &Client, options: MongoOptions) -> [Result<(), CoreError>; 4] {
    let (q, d, c, l) = tokio::join!(
        MongoQueue::from_client(client.clone(), options.clone()),
        MongoDeadLetterStore::from_client(client.clone(), options.clone()),
        MongoCheckpointStore::from_client(client.clone(), options.clone()),
        MongoLeaseTable::from_client(client.clone(), options),
    );
    [q.map(drop), d.map(drop), c.map(drop), l.map(drop)]
}

#[tokio::test]
async fn unreachable_server_fails_within_the_timeout_naming_the_host() {
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let results = connect_all(
        "mongodb://alice:s3cret-pw@127.0.0.1:1/?directConnection=true",
        MongoOptions::default().server_selection_timeout(timeout),
    )
    .await;
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_secs(2), "took {took:?}");
    for result in results {
        let err = result.expect_err("nothing listens on port 1");
        let text = chain(&err);
        eprintln!("took {took:?}: {text}");
        let CoreError::Connect {
            backend,
            target,
            source,
            ..
        } = &err
        else {
            panic!("not a connect error: {text}");
        };
        assert_eq!((*backend, target.as_str()), ("mongo", "127.0.0.1:1"));
        assert!(
            matches!(
                source.downcast_ref::<Error>(),
                Some(Error::Unreachable { .. })
            ),
            "{text}"
        );
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        assert!(
            text.contains("no MongoDB server answered within 1s"),
            "{text}"
        );
        assert!(
            !text.contains("s3cret-pw") && !text.contains("alice"),
            "credentials leaked: {text}"
        );
    }
}

#[tokio::test]
async fn broken_uri_is_refused() {
    for result in connect_all("postgres://nope", MongoOptions::default()).await {
        let err = result.expect_err("not a MongoDB URI");
        assert!(
            matches!(err, CoreError::InvalidOption { field: "uri", .. }),
            "{err}"
        );
    }
    let bad_database = MongoOptions::default().database("has.dot");
    for result in connect_all("mongodb://127.0.0.1:1", bad_database).await {
        let err = result.expect_err("bad option");
        assert!(err.to_string().contains("database"), "{err}");
    }
}

/// Every hostile name is refused by every constructor with `InvalidName`, before any call to a
/// server: the URI points nowhere with a long timeout, so a call would show as a slow answer
/// or a connect error.
#[tokio::test]
async fn hostile_names_are_refused_before_any_call() {
    let uri = "mongodb://127.0.0.1:1/?directConnection=true";
    let client = Client::with_uri_str(uri).await.expect("a lazy client");
    let base = MongoOptions::default().server_selection_timeout(Duration::from_secs(30));
    let huge = "x".repeat(10 * 1024);
    // A Cyrillic "с", and a zero-width space: both read as "jobs".
    let (look_alike, invisible) = ("jobs\u{0441}", "\u{200b}jobs");
    let names = ["a$b", "a\0b", "a\nb", look_alike, invisible, &huge, ""];
    for name in names {
        let cases: [(&str, MongoOptions); 5] = [
            ("database", base.clone().database(name)),
            ("collection", base.clone().collection(name)),
            ("collection", base.clone().dead_letter_collection(name)),
            ("collection", base.clone().checkpoint_collection(name)),
            ("collection", base.clone().lease_collection(name)),
        ];
        for (kind, options) in cases {
            let started = Instant::now();
            let mut results = Vec::from(connect_all(uri, options.clone()).await);
            results.extend(from_client_all(&client, options).await);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{name:?} reached the network"
            );
            for result in results {
                let err = result.expect_err("hostile name");
                assert!(
                    matches!(&err, CoreError::InvalidName { kind: k, .. } if *k == kind),
                    "{kind} {name:?}: {err}"
                );
                assert!(err.to_string().len() < 600, "short message: {err}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_are_reported_per_message() {
    let test = "duplicate_ids_are_reported_per_message";
    let Some((_, q, name)) = common::registered_queue(test).await else {
        return;
    };
    let id = |s: &str| MessageId::new(s).unwrap();
    let m = |s: &str| NewMessage::new("t", json!({ "id": s })).id(id(s));
    common::publish_all(&q, &name, vec![m("a"), m("with/slash")], "stored").await;
    // An id may be reused in another queue: the key is (queue, id).
    let other = queue_name("duplicate_ids_other_queue");
    q.register(&other).await.expect("register");
    common::publish_all(&q, &other, vec![m("a")], "same id, other queue").await;

    let r = q
        .publish(
            &name,
            vec![m("b"), m("a"), m("c"), m("c"), m("with/slash"), m("d")],
        )
        .await
        .expect("publish");
    let mut published: Vec<String> = r.published.iter().map(ToString::to_string).collect();
    published.sort();
    assert_eq!(published, vec!["b", "c", "d"]);
    let failed: Vec<(usize, String)> = r
        .failed
        .iter()
        .map(|f| (f.index, f.error.to_string()))
        .collect();
    assert_eq!(
        failed.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![1, 3, 4],
        "{failed:?}"
    );
    for f in &r.failed {
        assert!(
            matches!(f.error, CoreError::DuplicateId { .. }),
            "{}",
            f.error
        );
    }
    assert!(failed[2].1.contains("with/slash"), "{failed:?}");
    let stats = q.queue_stats(Some(&name)).await.expect("stats");
    assert_eq!(
        stats[0].count(Status::Scheduled),
        5,
        "a, with/slash, b, c, d: {stats:?}"
    );
    q.shutdown().await.expect("shutdown");
}
