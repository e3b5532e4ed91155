//! Hostile names on every backend: quotes, semicolons, `*`, newlines, NUL, Unicode look-alikes,
//! braces, spaces and a 10 KB string, as a queue (and so Kinesis stream) name, a SQL table name
//! (queue, dead-letter and checkpoint stores), a Redis key prefix and a MongoDB database or
//! collection name. Each is refused before anything reaches a server: the URLs point at a port
//! where nothing listens, so a name that got through would fail with a connection error instead
//! of the naming error asserted here.

use std::time::Duration;

use mq::mongo::{MongoOptions, MongoQueue};
use mq::sql::{
    MySqlQueue, PgQueue, SqlOptions, SqliteCheckpointStore, SqliteDeadLetterStore, SqliteQueue,
};
use mq::{Error, QueueName};

/// Nothing listens on port 1: reaching the server is a connection error, not a naming one.
const NOWHERE_PG: &str = "postgres://mq@127.0.0.1:1/app";
const NOWHERE_MYSQL: &str = "mysql://mq@127.0.0.1:1/app";
const NOWHERE_MONGO: &str = "mongodb://127.0.0.1:1/?directConnection=true";
const NOWHERE_REDIS: &str = "redis://127.0.0.1:1";

fn hostile() -> Vec<(&'static str, String)> {
    [
        ("quote and comment", "jobs'; DROP TABLE x; --"),
        ("double quote", "jobs\"x"),
        ("backtick", "jobs`x"),
        ("semicolon", "jobs;x"),
        ("star", "jobs*"),
        ("newline", "jobs\nx"),
        ("carriage return", "jobs\rx"),
        ("NUL", "jobs\0x"),
        ("Cyrillic a", "jobs_\u{0430}"),
        ("fullwidth j", "\u{ff4a}obs"),
        ("zero-width space", "jobs\u{200b}"),
        ("braces", "{jobs}"),
        ("space", "jobs x"),
    ]
    .into_iter()
    .map(|(what, name)| (what, name.to_owned()))
    .chain([("10 KB", "j".repeat(10 * 1024))])
    .collect()
}

/// The error is the naming error (not a connection error), short, and says what was wrong.
fn assert_naming_error(what: &str, e: &Error, kind: &str) {
    let text = e.to_string();
    assert!(
        matches!(
            e,
            Error::InvalidName { .. }
                | Error::InvalidQueueName { .. }
                | Error::InvalidOption { .. }
        ),
        "{what}: not a naming error: {e:?}"
    );
    assert!(text.contains(kind), "{what}: names the {kind}: {text}");
    assert!(text.len() < 1024, "{what}: {} bytes of error", text.len());
}

#[test]
fn queue_and_stream_names() {
    for (what, name) in hostile() {
        let e = QueueName::new(&name).expect_err(what);
        assert_naming_error(what, &e, "queue name");
    }
}

#[tokio::test]
async fn sql_table_names() {
    let sqlite_path = std::env::temp_dir().join(format!("mq-hostile-{}.db", std::process::id()));
    let sqlite_url = format!("sqlite://{}?mode=rwc", sqlite_path.display());
    let pool = mq::sql::sqlx::SqlitePool::connect("sqlite::memory:")
        .await
        .expect("in-memory SQLite");
    for (what, name) in hostile() {
        let opts = || {
            SqlOptions::default()
                .table(name.as_str())
                .connect_timeout(Duration::from_secs(2))
        };
        let e = PgQueue::connect(NOWHERE_PG, opts()).await.expect_err(what);
        assert_naming_error(what, &e, "table");
        let e = MySqlQueue::connect(NOWHERE_MYSQL, opts())
            .await
            .expect_err(what);
        assert_naming_error(what, &e, "table");
        let e = SqliteQueue::connect(&sqlite_url, opts())
            .await
            .expect_err(what);
        assert_naming_error(what, &e, "table");
        let e = SqliteDeadLetterStore::new(pool.clone(), name.as_str()).expect_err(what);
        assert_naming_error(what, &e, "table");
        let e = SqliteCheckpointStore::from_pool(pool.clone(), name.as_str())
            .await
            .expect_err(what);
        assert_naming_error(what, &e, "table");
    }
    assert!(
        !sqlite_path.exists(),
        "a refused name still created the SQLite file"
    );
}

#[tokio::test]
async fn redis_key_prefixes() {
    for (what, name) in hostile() {
        let e = mq::kinesis::RedisLeaseStore::connect(NOWHERE_REDIS, name.as_str())
            .await
            .expect_err(what);
        let e = Error::from(e);
        assert_naming_error(what, &e, "prefix");
    }
}

/// MongoDB names are BSON strings, never parsed as a query, so a quote or a semicolon is only a
/// character there; what MongoDB itself refuses, and what could pass for another name (control
/// characters, look-alikes, spaces, overlong names), is refused before connecting.
#[tokio::test]
async fn mongodb_database_and_collection_names() {
    let opts = || {
        MongoOptions::default()
            .server_selection_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
    };
    for (what, name) in hostile() {
        let database_refuses = !name.chars().all(|c| c.is_ascii_graphic())
            || name.len() > 63
            || name.contains(['"', '*', '.', '$', '/', '\\']);
        if database_refuses {
            let e = MongoQueue::connect(NOWHERE_MONGO, opts().database(name.as_str()))
                .await
                .expect_err(what);
            assert_naming_error(what, &e, "database");
        }
        if !name.chars().all(|c| c.is_ascii_graphic()) || name.len() > 255 {
            let e = MongoQueue::connect(NOWHERE_MONGO, opts().collection(name.as_str()))
                .await
                .expect_err(what);
            assert_naming_error(what, &e, "collection");
        }
    }
}
