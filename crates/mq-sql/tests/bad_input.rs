//! Bad input: unreachable database, oversize message, duplicate id, unsafe table name.

#[path = "support/factory.rs"]
mod support;

use std::time::Duration;

use mq_core::{CommonOptions, ErrorChain, MessageId, NewMessage, QueueName};
use mq_sql::{MySqlQueue, PgQueue, SqlOptions, SqliteQueue};
use support::{Db, drop_table, fresh_queue, require, table_name};

fn full_text(e: &mq_core::Error) -> String {
    format!("{} | {} | {e:?}", e, ErrorChain::from_error(e))
}

/// This crate's error behind a core error, if it is the source.
fn sql_error(e: &mq_core::Error) -> Option<&mq_sql::Error> {
    std::error::Error::source(e)?.downcast_ref()
}

#[tokio::test]
async fn unreachable_database_names_host_not_password() {
    let opts = || SqlOptions::default().connect_timeout(Duration::from_secs(2));
    let pg = PgQueue::connect(
        "postgres://app:s3cr3t-pw@127.0.0.1:1/app",
        opts().common(CommonOptions::default()),
    )
    .await
    .expect_err("port 1 is closed");
    let text = full_text(&pg);
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("s3cr3t-pw"), "password leaked: {text}");
    assert!(
        matches!(sql_error(&pg), Some(mq_sql::Error::Connect { .. })),
        "{pg:?}"
    );

    let my = MySqlQueue::connect(
        "mysql://root:s3cr3t-pw@127.0.0.1:1/app",
        opts().common(CommonOptions::default()),
    )
    .await
    .expect_err("port 1 is closed");
    let text = full_text(&my);
    assert!(
        text.contains("127.0.0.1:1") && !text.contains("s3cr3t-pw"),
        "{text}"
    );

    let dns = PgQueue::connect(
        "postgres://app:s3cr3t-pw@no-such-host.invalid:5432/app",
        opts().common(CommonOptions::default()),
    )
    .await
    .expect_err("no such host");
    let text = full_text(&dns);
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

    let sqlite = SqliteQueue::connect(
        "sqlite:///nonexistent-dir-mq/sub/q.db",
        opts().common(CommonOptions::default()),
    )
    .await
    .expect_err("directory does not exist");
    assert!(full_text(&sqlite).contains("/nonexistent-dir-mq/sub/q.db"));
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

async fn oversize_and_duplicates(db: Db) {
    let test = "oversize_dup";
    let Some(url) = require(db, test) else { return };
    let table = table_name("bi", test);
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
    q.publish(&name, vec![first])
        .await
        .expect("publish")
        .into_result()
        .expect("first stored");
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

#[tokio::test]
async fn oversize_and_duplicates_postgres() {
    oversize_and_duplicates(Db::Postgres).await;
}

#[tokio::test]
async fn oversize_and_duplicates_mysql() {
    oversize_and_duplicates(Db::MySql).await;
}

#[tokio::test]
async fn oversize_and_duplicates_sqlite() {
    oversize_and_duplicates(Db::Sqlite).await;
}

/// With `create_schema(false)` connecting creates nothing: a missing table is an error naming
/// it, and an existing table is used as is.
async fn missing_table_without_create_schema(db: Db) {
    let test = "no_create";
    let Some(url) = require(db, test) else { return };
    let table = table_name("bi", test);
    drop_table(db, &url, &table).await;
    let opts = || SqlOptions::default().table(&table).create_schema(false);
    let err = match db {
        Db::Postgres => PgQueue::connect(&url, opts()).await.map(|_| ()),
        Db::MySql => MySqlQueue::connect(&url, opts()).await.map(|_| ()),
        Db::Sqlite => SqliteQueue::connect(&url, opts()).await.map(|_| ()),
    }
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
    match db {
        Db::Postgres => PgQueue::connect(&url, opts()).await.map(|_| ()),
        Db::MySql => MySqlQueue::connect(&url, opts()).await.map(|_| ()),
        Db::Sqlite => SqliteQueue::connect(&url, opts()).await.map(|_| ()),
    }
    .expect("the table exists");
    drop_table(db, &url, &table).await;
}

#[tokio::test]
async fn missing_table_without_create_schema_postgres() {
    missing_table_without_create_schema(Db::Postgres).await;
}

#[tokio::test]
async fn missing_table_without_create_schema_mysql() {
    missing_table_without_create_schema(Db::MySql).await;
}

#[tokio::test]
async fn missing_table_without_create_schema_sqlite() {
    missing_table_without_create_schema(Db::Sqlite).await;
}
