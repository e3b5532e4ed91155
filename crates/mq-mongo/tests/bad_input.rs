//! Bad input: an unreachable server, a broken URI, duplicate ids.

use std::time::{Duration, Instant};

use mq_core::testkit::{queue_name, service_url};
use mq_core::{CommonOptions, Error as CoreError, MessageId, MessageQueue, NewMessage};
use mq_mongo::{Error, MongoOptions, MongoQueue};
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

#[tokio::test]
async fn unreachable_server_fails_within_the_timeout_naming_the_host() {
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = MongoQueue::connect(
        "mongodb://alice:s3cret-pw@127.0.0.1:1/?directConnection=true",
        MongoOptions::default().server_selection_timeout(timeout),
        CommonOptions::default(),
    )
    .await
    .expect_err("nothing listens on port 1");
    let took = started.elapsed();
    let text = chain(&err);
    eprintln!("took {took:?}: {text}");
    assert!(took < timeout + Duration::from_secs(2), "took {took:?}");
    assert!(matches!(err, Error::Unreachable { .. }), "{text}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(err.to_string().contains("cannot reach MongoDB"), "{err}");
    assert!(
        !text.contains("s3cret-pw") && !text.contains("alice"),
        "credentials leaked: {text}"
    );
    let core: CoreError = err.into();
    assert!(chain(&core).contains("127.0.0.1:1"));
}

#[tokio::test]
async fn broken_uri_is_refused() {
    let err = MongoQueue::connect(
        "postgres://nope",
        MongoOptions::default(),
        CommonOptions::default(),
    )
    .await
    .expect_err("not a MongoDB URI");
    assert!(matches!(err, Error::InvalidUri { .. }), "{err}");
    let err = MongoQueue::connect(
        "mongodb://127.0.0.1:1",
        MongoOptions::default().database("has.dot"),
        CommonOptions::default(),
    )
    .await
    .expect_err("bad option");
    assert!(err.to_string().contains("database"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_are_reported_per_message() {
    let test = "duplicate_ids_are_reported_per_message";
    let url = match service_url("MONGODB_URI") {
        Ok(u) => u,
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            return;
        }
    };
    let db = "mqt_bad_input_duplicates";
    let q = MongoQueue::connect(
        &url,
        MongoOptions::default().database(db),
        CommonOptions::default(),
    )
    .await
    .expect("connect");
    q.store().client().database(db).drop().await.expect("drop");
    let name = queue_name(test);
    q.register(&name).await.expect("register");
    let id = |s: &str| MessageId::new(s).unwrap();
    let m = |s: &str| NewMessage::new("t", json!({ "id": s })).id(id(s));
    q.publish(&name, vec![m("a"), m("with/slash")])
        .await
        .expect("publish")
        .into_result()
        .expect("stored");
    // An id may be reused in another queue: the key is (queue, id).
    let other = queue_name("duplicate_ids_other_queue");
    q.register(&other).await.expect("register");
    q.publish(&other, vec![m("a")])
        .await
        .expect("publish")
        .into_result()
        .expect("same id, other queue");

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
    let depth = q.store().depth(&name).await.expect("depth");
    assert_eq!(
        depth.values().sum::<u64>(),
        5,
        "a, with/slash, b, c, d: {depth:?}"
    );
    q.shutdown().await.expect("shutdown");
}
