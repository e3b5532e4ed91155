//! Bad input: unreachable database, oversize message, duplicate id, unsafe table name.

#[path = "support/factory.rs"]
mod support;

use std::time::Duration;

use mq_core::{CommonOptions, ErrorChain, MessageId, NewMessage, QueueName};
use mq_sql::{SqlOptions, SqliteQueue};
use support::{Db, drop_table, fresh_queue, publish_all, test_on_each_db, try_connect_queue};

fn full_text(e: &mq_core::Error) -> String {
    format!("{} | {} | {e:?}", e, ErrorChain::from_error(e))
}

/// This crate's error behind a core error, if it is the source.
fn sql_error(e: &mq_core::Error) -> Option<&mq_sql::Error> {
    std::error::Error::source(e)?.downcast_ref()
}

/// The error connecting to `db` at `url` fails with (`why` it must fail), and its full text.
async fn connect_error(db: Db, url: &str, why: &str) -> (mq_core::Error, String) {
    let opts = SqlOptions::default().connect_timeout(Duration::from_secs(2));
    let e = try_connect_queue(db, url, opts)
        .await
        .map(|_| ())
        .expect_err(why);
    let text = full_text(&e);
    (e, text)
}

#[tokio::test]
async fn unreachable_database_names_host_not_password() {
    let closed = "port 1 is closed";
    let (pg, text) = connect_error(
        Db::Postgres,
        "postgres://app:s3cr3t-pw@127.0.0.1:1/app",
        closed,
    )
    .await;
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("s3cr3t-pw"), "password leaked: {text}");
    assert!(
        matches!(sql_error(&pg), Some(mq_sql::Error::Connect { .. })),
        "{pg:?}"
    );

    let (_, text) =
        connect_error(Db::MySql, "mysql://root:s3cr3t-pw@127.0.0.1:1/app", closed).await;
    assert!(
        text.contains("127.0.0.1:1") && !text.contains("s3cr3t-pw"),
        "{text}"
    );

    let dns = "postgres://app:s3cr3t-pw@no-such-host.invalid:5432/app";
    let (_, text) = connect_error(Db::Postgres, dns, "no such host").await;
    assert!(
        text.contains("no-such-host.invalid:5432") && !text.contains("s3cr3t-pw"),
        "{text}"
    );

    // The core error's chain names the host and hides the password.
    let chain = ErrorChain::from_error(&pg).to_string();
    assert!(
        chain.starts_with("sql connect failed: cannot connect to postgres at 127.0.0.1:1"),
        "{chain}"
    );
    assert!(!chain.contains("s3cr3t-pw"));

    let path = "/nonexistent-dir-mq/sub/q.db";
    let (_, text) = connect_error(
        Db::Sqlite,
        &format!("sqlite://{path}"),
        "directory does not exist",
    )
    .await;
    assert!(text.contains(path), "{text}");
}

#[tokio::test]
async fn unsafe_table_name_is_refused_before_connecting() {
    let e = SqliteQueue::connect(
        "sqlite::memory:",
        SqlOptions::default()
            .table("jobs; DROP TABLE users")
            .common(CommonOptions::default()),
    )
    .await
    .expect_err("unsafe name");
    assert!(
        matches!(e, mq_core::Error::InvalidName { kind: "table", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("jobs; DROP TABLE users"));
}

async fn oversize_and_duplicates(db: Db, test: &str) {
    let Some((url, table)) = support::fresh_table(db, "bi", test).await else {
        return;
    };
    let q = fresh_queue(
        db,
        &url,
        &table,
        CommonOptions::default().max_message_bytes(1024),
    )
    .await;
    let name = QueueName::new("bad-input").expect("name");
    q.register(&name).await.expect("register");

    // Oversize: refused before insert; the other message of the batch is stored.
    let big = NewMessage::new("big", serde_json::json!({"blob": "x".repeat(4096)}));
    let small = NewMessage::new("small", serde_json::json!({}));
    let report = q.publish(&name, vec![big, small]).await.expect("publish");
    assert_eq!(report.published.len(), 1);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].index, 0);
    assert!(
        matches!(
            report.failed[0].error,
            mq_core::Error::MessageTooLarge { .. }
        ),
        "{}",
        report.failed[0].error
    );

    // Duplicate id: a clear error naming the id; the rest of the batch is stored.
    let id = MessageId::new("order-42").expect("id");
    let first = NewMessage::new("t", serde_json::json!({})).id(id.clone());
    publish_all(&*q, &name, vec![first]).await;
    let again = NewMessage::new("t", serde_json::json!({})).id(id.clone());
    let fresh =
        NewMessage::new("t", serde_json::json!({})).id(MessageId::new("order-43").expect("id"));
    let twin =
        NewMessage::new("t", serde_json::json!({})).id(MessageId::new("order-43").expect("id"));
    let report = q
        .publish(&name, vec![again, fresh, twin])
        .await
        .expect("publish");
    assert_eq!(
        report.published,
        vec![MessageId::new("order-43").expect("id")]
    );
    assert_eq!(report.failed.len(), 2, "{:?}", report.failed);
    assert_eq!(report.failed[0].index, 0);
    assert_eq!(report.failed[1].index, 2);
    let text = report.failed[0].error.to_string();
    assert!(matches!(
        report.failed[0].error,
        mq_core::Error::DuplicateId { .. }
    ));
    assert_eq!(
        text,
        "message id order-42 already exists in queue bad-input"
    );
    q.shutdown().await.expect("shutdown");
    drop_table(db, &url, &table).await;
}

test_on_each_db!(oversize_dup, oversize_and_duplicates);

/// With `create_schema(false)` connecting creates nothing: a missing table is an error naming
/// it, and an existing table is used as is.
async fn missing_table_without_create_schema(db: Db, test: &str) {
    let Some((url, table)) = support::fresh_table(db, "bi", test).await else {
        return;
    };
    let opts = || SqlOptions::default().table(&table).create_schema(false);
    let err = try_connect_queue(db, &url, opts())
        .await
        .map(|_| ())
        .expect_err("the table does not exist");
    assert!(
        matches!(sql_error(&err), Some(mq_sql::Error::MissingTable { table: t }) if *t == table),
        "{err:?}"
    );
    assert!(full_text(&err).contains(&table), "{err:?}");

    // Created once, the table is found without creating anything.
    fresh_queue(db, &url, &table, CommonOptions::default())
        .await
        .shutdown()
        .await
        .expect("shutdown");
    try_connect_queue(db, &url, opts())
        .await
        .map(|_| ())
        .expect("the table exists");
    drop_table(db, &url, &table).await;
}

test_on_each_db!(no_create, missing_table_without_create_schema);
