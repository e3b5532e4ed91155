//! `mqctl` as an operator's first mistakes meet it: a mistyped dead-letter table or collection is
//! a one-line error with exit code 2 and is not created; an unreachable server fails fast.

use std::process::Command;
use std::time::{Duration, Instant};

use mq_core::testkit::service_url;
use sqlx::{PgPool, Row};

const BIN: &str = env!("CARGO_BIN_EXE_mqctl");

/// Runs mqctl; returns its exit code and its standard error.
fn mqctl(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("MQ_DLQ_URL")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run mqctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The command failed with exit code 2 and one line naming `needle`.
fn assert_refused(code: Option<i32>, stderr: &str, needle: &str) {
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} in {stderr}");
}

/// Whether PostgreSQL has a table `name`.
async fn pg_table_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query("SELECT to_regclass($1) IS NOT NULL AS e")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("query")
        .get("e")
}

/// A fresh SQLite file with an empty dead-letter table: its pool and the URL mqctl opens.
async fn sqlite_dead_letters(test: &str) -> (sqlx::SqlitePool, String) {
    use mq::DeadLetterStore;
    let dir = std::env::temp_dir().join(format!("mqctl-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("dlq.db");
    let _ = std::fs::remove_file(&path);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("create the database");
    let store =
        mq::sql::SqliteDeadLetterStore::new(pool.clone(), "mq_dead_letters").expect("store");
    store.migrate().await.expect("migrate");
    (pool, format!("sqlite://{}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_table_is_an_error_and_is_not_created() {
    let url = match service_url("MQ_TEST_POSTGRES_URL") {
        Ok(u) => u,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let typo = "mqctl_dead_leters_typo";
    let pool = PgPool::connect(&url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {typo}")))
        .execute(&pool)
        .await
        .expect("drop");
    for command in [
        &["list"][..],
        &["show", "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
        &["replay", "--dry-run"],
    ] {
        let mut args = vec!["dlq", "--store-url", &url, "--table", typo];
        args.extend_from_slice(command);
        let (code, stderr) = mqctl(&args);
        assert_refused(code, &stderr, typo);
    }
    let exists = pg_table_exists(&pool, typo).await;
    assert!(!exists, "a read-only command created {typo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_collection_is_an_error_and_is_not_created() {
    let uri = match service_url("MONGODB_URI") {
        Ok(u) => u,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let (db, typo) = ("mqctl_read_only", "dead_leters_typo");
    let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
    client.database(db).drop().await.expect("drop");
    let args = [
        "dlq",
        "--store-url",
        &uri,
        "--mongo-database",
        db,
        "--table",
        typo,
        "list",
    ];
    // A dropped client's session clean-up used to race the exit and print the driver's panic
    // after the error now and then; several runs let such a race show.
    for _ in 0..8 {
        let (code, stderr) = mqctl(&args);
        assert_refused(code, &stderr, typo);
    }
    let names = client
        .database(db)
        .list_collection_names()
        .await
        .expect("list collections");
    assert!(
        !names.iter().any(|n| n == typo),
        "created {typo}: {names:?}"
    );
}

#[test]
fn an_unreachable_server_fails_fast_and_says_where() {
    // Nothing listens on port 9 of this host: the connection is refused.
    let url = "postgres://postgres@127.0.0.1:9/app";
    let started = Instant::now();
    let (code, stderr) = mqctl(&["dlq", "--store-url", url, "list"]);
    assert_refused(code, &stderr, "127.0.0.1:9");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_missing_sqlite_file_is_an_error_and_is_not_created() {
    let dir = std::env::temp_dir().join(format!("mqctl-read-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("typo.db");
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}", path.display());
    let (code, stderr) = mqctl(&["dlq", "--store-url", &url, "list"]);
    assert_refused(code, &stderr, "typo.db");
    assert!(
        !path.exists(),
        "a read-only command created {}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_and_bad_arguments_are_one_line_errors() {
    let (_pool, url) = sqlite_dead_letters("bad-args").await;
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let (code, stderr) = mqctl(&["dlq", "--url", &url, "show", unknown]);
    assert_refused(code, &stderr, unknown);
    let (code, stderr) = mqctl(&["dlq", "--url", &url, "show", "not-an-id"]);
    assert_refused(code, &stderr, "not-an-id");
    let (code, stderr) = mqctl(&["dlq", "--url", &url, "--table", "bad;name", "list"]);
    assert_refused(code, &stderr, "bad;name");
    let (code, stderr) = mqctl(&["dlq", "--url", "redis://127.0.0.1", "list"]);
    assert_refused(code, &stderr, "redis");
    // A flag mqctl does not know: clap's usage error, exit code 2.
    let (code, _) = mqctl(&["dlq", "--url", &url, "list", "--no-such-flag"]);
    assert_eq!(code, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_stream_is_one_short_line() {
    let redis = match service_url("REDIS_URL") {
        Ok(u) => u,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let (app, _state) = ferrokinesis::create_app(ferrokinesis::store::StoreOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "kinesis",
                "status",
                "--stream",
                "no-such-stream",
                "--redis-url",
                &redis,
                "--endpoint-url",
                &endpoint,
                "--region",
                "us-east-1",
            ])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .expect("run mqctl")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_refused(out.status.code(), &stderr, "no-such-stream");
    assert!(stderr.len() < 400, "{} bytes: {stderr}", stderr.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_refuse_unknown_queues_missing_tables_and_bad_names() {
    let url = match service_url("MQ_TEST_POSTGRES_URL") {
        Ok(u) => u,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let (table, typo) = ("mqctl_stats_q", "mqctl_stats_typo");
    let pool = PgPool::connect(&url).await.expect("connect");
    for t in [table, typo] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
            .execute(&pool)
            .await
            .expect("drop");
    }
    let queue = mq::PgQueue::connect(&url, mq::SqlOptions::default().table(table).notify(false))
        .await
        .expect("queue");
    let orders = mq::QueueName::new("orders").expect("name");
    mq::MessageQueue::register(&queue, &orders)
        .await
        .expect("register");
    mq::MessageQueue::publish(
        &queue,
        &orders,
        vec![mq::NewMessage::new("t", serde_json::json!({}))],
    )
    .await
    .expect("publish")
    .into_result()
    .expect("stored");
    mq::MessageQueue::shutdown(&queue).await.expect("shutdown");

    let ok = Command::new(BIN)
        .args([
            "--json", "queue", "stats", "--url", &url, "--table", table, "--queue", "orders",
        ])
        .output()
        .expect("run mqctl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("json");
    assert_eq!(stats[0]["counts"]["scheduled"], 1, "{stats}");

    let (code, stderr) = mqctl(&[
        "queue", "stats", "--url", &url, "--table", table, "--queue", "ordres",
    ]);
    assert_refused(code, &stderr, "ordres");
    let (code, stderr) = mqctl(&[
        "queue",
        "stats",
        "--url",
        &url,
        "--table",
        table,
        "--queue",
        "bad name!",
    ]);
    assert_refused(code, &stderr, "bad name!");
    let (code, stderr) = mqctl(&["queue", "stats", "--url", &url, "--table", typo]);
    assert_refused(code, &stderr, typo);
    let exists = pg_table_exists(&pool, typo).await;
    assert!(!exists, "queue stats created {typo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_into_a_missing_queue_table_is_refused_and_creates_nothing() {
    let (pool, url) = sqlite_dead_letters("replay-target").await;
    let (code, stderr) = mqctl(&["dlq", "--url", &url, "replay", "--queue-table", "jobz"]);
    assert_refused(code, &stderr, "jobz");
    let tables: i64 = sqlx::query("SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'jobz'")
        .fetch_one(&pool)
        .await
        .expect("query")
        .get("n");
    assert_eq!(tables, 0, "replay created the queue table");
}

/// `queue migrations` lists what an upgrade would apply and creates nothing; `queue migrate`
/// applies it (with `--yes`), after which nothing is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_migrations_lists_without_changing_then_migrate_applies() {
    let dir = std::env::temp_dir().join(format!("mqctl-migrations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("queue.db");
    let _ = std::fs::remove_file(&path);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("create the database");
    let url = format!("sqlite://{}", path.display());
    let base = ["queue", "migrations", "--url", &url, "--table", "jobs"];
    let out = Command::new(BIN).args(base).output().expect("run mqctl");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listed.matches("pending").count(), 3, "{listed}");
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
        .fetch_one(&pool)
        .await
        .expect("count tables");
    assert_eq!(tables, 0, "listing created nothing");
    let out = Command::new(BIN)
        .args([
            "--yes", "queue", "migrate", "--url", &url, "--table", "jobs",
        ])
        .output()
        .expect("run mqctl");
    let applied = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(applied.matches("applied").count(), 3, "{applied}");
    assert!(!applied.contains("pending"), "{applied}");
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
