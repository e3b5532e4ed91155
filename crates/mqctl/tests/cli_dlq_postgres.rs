//! `mqctl` run as a real binary against PostgreSQL: dead letters made by a real queue, listed,
//! shown, purged, replayed with a rate limit, the replay killed half-way and run again.

#[path = "common/dlq.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BIN, dead_letter_all, json_of, mqctl_json, mqctl_ok, service};
use mq::sql::PgDeadLetterStore;
use mq::{CommonOptions, NewMessage, PgQueue, SqlOptions};
use mq::{DeadLetterFilter, DeadLetterStore, ReplayState};
use sqlx::{Executor, PgPool, Row};

/// Drops the test's tables, then dead-letters `n` messages of queue `orders` through a real
/// `PgQueue` whose handler always fails.
async fn dead_letter(
    url: &str,
    dlq: &str,
    table: &str,
    n: usize,
) -> (PgPool, Arc<PgDeadLetterStore>) {
    let pool = PgPool::connect(url).await.expect("connect");
    for t in [dlq.to_owned(), table.to_owned(), format!("{table}_archive")] {
        pool.execute(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
            .await
            .expect("drop");
    }
    let store = Arc::new(PgDeadLetterStore::new(pool.clone(), dlq).expect("store"));
    store.migrate().await.expect("migrate");
    let queue = PgQueue::connect(
        url,
        SqlOptions::default()
            .table(table)
            .notify(false)
            .common(CommonOptions::default().dead_letters(store.clone())),
    )
    .await
    .expect("queue");
    let msgs = (0..n)
        .map(|i| {
            NewMessage::new(
                if i % 2 == 0 { "charge" } else { "refund" },
                serde_json::json!({ "n": i }),
            )
            .max_attempts(1)
        })
        .collect();
    dead_letter_all(&queue, &*store, msgs).await;
    (pool, store)
}

async fn count_in(pool: &PgPool, table: &str, queue: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) AS n FROM {table} WHERE queue = $1"
    )))
    .bind(queue)
    .fetch_one(pool)
    .await
    .map(|r| r.get::<i64, _>("n"))
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_killed_half_way_publishes_each_message_exactly_once() {
    let Some(url) = service("MQ_TEST_POSTGRES_URL") else {
        return;
    };
    let (dlq, table, target) = ("mqctl_kill_dlq", "mqctl_kill_q", "orders-replayed");
    let (pool, store) = dead_letter(&url, dlq, table, 100).await;
    let rate = 20;
    let args = [
        "--json",
        "--yes",
        "dlq",
        "--store-url",
        &url,
        "--table",
        dlq,
        "replay",
        "--queue-table",
        table,
        "--to",
        target,
        "--rate",
        &rate.to_string(),
    ];

    // First run: kill it once about half the messages are in the target queue.
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mqctl");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_seen = None;
    loop {
        let n = count_in(&pool, table, target).await;
        if n > 0 && first_seen.is_none() {
            first_seen = Some((Instant::now(), n));
        }
        if n >= 50 {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "replay ended before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "replay too slow: {n} published in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("kill");
    child.wait().expect("reap");
    let at_kill = count_in(&pool, table, target).await;
    let (t0, n0) = first_seen.expect("seen");
    let measured = (at_kill - n0) as f64 / t0.elapsed().as_secs_f64();
    eprintln!(
        "killed after {:.2}s with {at_kill}/100 published; measured {measured:.1} msg/s at --rate {rate}",
        started.elapsed().as_secs_f64()
    );
    assert!(at_kill < 100, "the replay finished before the kill");
    assert!(
        measured <= f64::from(rate) * 1.10 + 2.0,
        "rate {measured:.1}/s above the limit {rate}/s"
    );

    // Second run: to completion.
    let report = mqctl_json(args);
    let len = |k: &str| report[k].as_array().map_or(usize::MAX, Vec::len);
    eprintln!(
        "second run: published {}, already published {}, skipped {}, failed {}",
        len("published"),
        len("already_published"),
        len("skipped"),
        len("failed")
    );
    assert_eq!(report["selected"], 100);
    assert_eq!(len("failed"), 0);
    assert_eq!(
        len("published") + len("already_published") + len("skipped"),
        100
    );
    assert!(
        len("skipped") as i64 >= at_kill - 2,
        "done entries are skipped"
    );
    assert!(len("already_published") <= 2, "at most the in-flight chunk");

    // Every dead letter is in the target queue exactly once, by its original id.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT metadata->'log_context'->>'dlq_original_id' AS orig, COUNT(*) AS n \
         FROM {table} WHERE queue = $1 GROUP BY 1"
    )))
    .bind(target)
    .fetch_all(&pool)
    .await
    .expect("count");
    let duplicates: i64 = rows.iter().map(|r| r.get::<i64, _>("n") - 1).sum();
    eprintln!(
        "target queue: {} distinct originals, {duplicates} duplicates",
        rows.len()
    );
    assert_eq!(rows.len(), 100);
    assert_eq!(duplicates, 0);
    assert!(
        rows.iter()
            .all(|r| r.get::<Option<String>, _>("orig").is_some())
    );
    let done = DeadLetterFilter::default().replay_state(ReplayState::Done);
    assert_eq!(store.count(&done).await.expect("count"), 100);

    // A third run publishes nothing.
    let report = mqctl_json(args);
    assert_eq!(report["published"].as_array().map(Vec::len), Some(0));
    assert_eq!(count_in(&pool, table, target).await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_purge_dry_run_and_stats() {
    let Some(url) = service("MQ_TEST_POSTGRES_URL") else {
        return;
    };
    let (dlq, table) = ("mqctl_misc_dlq", "mqctl_misc_q");
    let (pool, store) = dead_letter(&url, dlq, table, 10).await;
    let base = ["dlq", "--store-url", url.as_str(), "--table", dlq];
    let run = |extra: &[&str]| {
        let mut c = assert_cmd::Command::new(BIN);
        c.args(base).args(extra);
        c
    };
    let ok = |extra: &[&str]| mqctl_ok(base.iter().chain(extra));

    let out = ok(&["list", "--type", "charge", "--json"]);
    let list = json_of(&out);
    assert_eq!(list["total"], 5);
    let entries = list["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 5);
    let id = entries[0]["id"].as_str().expect("id").to_owned();
    let human = ok(&["list", "--error", "GATEWAY"]);
    let human = String::from_utf8_lossy(&human);
    assert!(human.starts_with("ID"), "{human}");
    assert!(human.contains("10 shown, 10 matching"), "{human}");

    let shown = ok(&["show", &id]);
    let shown = String::from_utf8_lossy(&shown);
    assert!(shown.contains("payment gateway down"), "{shown}");
    assert!(shown.contains("backend        sql"), "{shown}");
    run(&["show", "01JDQ8Z6N6X1N6N8C3V1T5K2QW"])
        .assert()
        .failure();
    run(&["show", "not-an-id"]).assert().failure();
    run(&["list", "--since", "yesterday"]).assert().failure();

    // Dry run: nothing marked, nothing published.
    let out = ok(&[
        "replay",
        "--dry-run",
        "--queue-table",
        table,
        "--to",
        "dry",
        "--json",
    ]);
    let report = json_of(&out);
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["published"].as_array().map(Vec::len), Some(10));
    assert_eq!(count_in(&pool, table, "dry").await, 0);
    let none = DeadLetterFilter::default().replay_state(ReplayState::None);
    assert_eq!(store.count(&none).await.expect("count"), 10);

    // Purge: refuses without a filter, refuses without --yes and no terminal, then purges.
    run(&["purge"]).assert().failure();
    run(&["purge", "--type", "refund"])
        .write_stdin("")
        .assert()
        .failure();
    assert_eq!(
        store
            .count(&DeadLetterFilter::default())
            .await
            .expect("count"),
        10
    );
    let out = ok(&["purge", "--type", "refund", "--yes", "--json"]);
    assert_eq!(json_of(&out)["purged"], 5);
    assert_eq!(
        store
            .count(&DeadLetterFilter::default())
            .await
            .expect("count"),
        5
    );

    // Queue stats over the queue table.
    let stats = mqctl_json([
        "queue",
        "stats",
        "--url",
        url.as_str(),
        "--table",
        table,
        "--json",
    ]);
    let orders = stats
        .as_array()
        .and_then(|a| a.iter().find(|q| q["queue"] == "orders"))
        .expect("orders stats");
    assert_eq!(orders["total"], 10);
    assert_eq!(orders["expired_leases"], 0);
    let human = mqctl_ok(["queue", "stats", "--url", url.as_str(), "--table", table]);
    assert!(String::from_utf8_lossy(&human).contains("orders"));
}
