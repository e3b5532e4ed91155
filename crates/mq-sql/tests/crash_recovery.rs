//! A consumer in a child process is killed with SIGKILL mid-batch; after its leases expire its
//! messages are delivered again. 10,000 messages on PostgreSQL: none lost, duplicates bounded by
//! the batches in flight when it died.

#[path = "support/factory.rs"]
mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mq_core::{
    Batch, CommonOptions, ConsumerOptions, HandlerContext, MessageId, MessageQueue, NewMessage,
    QueueName, handler_fn,
};
use sqlx::{AssertSqlSafe, PgPool};
use support::{Db, connect_queue, drop_table, fresh_table, options, publish_all, wait_until};

const MESSAGES: usize = 10_000;
const BATCH: usize = 100;
const CONCURRENCY: usize = 4;
const LEASE: Duration = Duration::from_secs(2);
const CHILD_ENV: &str = "MQ_SQL_CRASH_CHILD_TABLE";
/// The PostgreSQL `application_name` of the child's connections.
const CHILD_APP: &str = "mq_crash_child";

fn consumer_options() -> ConsumerOptions {
    ConsumerOptions::default()
        .batch_size(BATCH)
        .concurrency(CONCURRENCY)
        .lease_duration(LEASE)
        .poll_interval(Duration::from_millis(20))
        .max_poll_interval(Duration::from_millis(200))
}

/// A handler that records every delivery in `<table>_log` (before acking), then acks after a
/// short pause so that a kill lands mid-batch.
fn logging_handler(
    pool: PgPool,
    log: String,
    who: &'static str,
    pause: Duration,
) -> Arc<dyn mq_core::Handler> {
    Arc::new(handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        let pool = pool.clone();
        let log = log.clone();
        async move {
            let ids: Vec<String> = batch.iter().map(|m| m.id.to_string()).collect();
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {log} (id, consumer) SELECT unnest($1::text[]), $2"
            )))
            .bind(&ids)
            .bind(who)
            .execute(&pool)
            .await?;
            tokio::time::sleep(pause).await;
            Ok::<(), sqlx::Error>(())
        }
    }))
}

/// The queue of the test on `table`, its queue registered.
async fn crash_queue(url: &str, table: &str) -> (Arc<dyn MessageQueue>, QueueName) {
    let q = connect_queue(Db::Postgres, url, options(table), CommonOptions::default()).await;
    let name = QueueName::new("crash").expect("name");
    q.register(&name).await.expect("register");
    (q, name)
}

/// The child: consumes until killed. A no-op unless started by the parent test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(table) = std::env::var(CHILD_ENV) else {
        return;
    };
    let Ok(url) = std::env::var("MQ_TEST_POSTGRES_URL") else {
        return;
    };
    let (q, name) = crash_queue(&url, &table).await;
    let pool = PgPool::connect(&url).await.expect("pool");
    let handler = logging_handler(
        pool,
        format!("{table}_log"),
        "child",
        Duration::from_millis(30),
    );
    let _consumer = q
        .consume(&name, handler, consumer_options())
        .await
        .expect("consume");
    // Run until the parent kills this process.
    std::future::pending::<()>().await;
}

async fn count(pool: &PgPool, sql: String) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumer_batch_is_redelivered() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let Some((url, table)) = fresh_table(Db::Postgres, "cr", "killed_consumer").await else {
        return;
    };
    let log = format!("{table}_log");
    let pool = PgPool::connect(&url).await.expect("pool");
    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {log}")))
        .execute(&pool)
        .await
        .expect("drop log");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {log} (id text NOT NULL, consumer text NOT NULL)"
    )))
    .execute(&pool)
    .await
    .expect("log table");

    let (q, name) = crash_queue(&url, &table).await;
    for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(1000) {
        let msgs = chunk
            .iter()
            .map(|i| {
                NewMessage::new("job", serde_json::json!({"i": i}))
                    .id(MessageId::new(format!("m-{i:05}")).expect("id"))
            })
            .collect();
        publish_all(&*q, &name, msgs).await;
    }

    // The child's connections carry a name, so the parent can see when the server let go of them.
    let sep = if url.contains('?') { '&' } else { '?' };
    let child_url = format!("{url}{sep}application_name={CHILD_APP}");
    let exe = std::env::current_exe().expect("test executable");
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &table)
        .env("MQ_TEST_POSTGRES_URL", &child_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let log_count = format!("SELECT count(*) FROM {log}");
    wait_until(
        Duration::from_secs(120),
        "child consumer to process 2,000 messages",
        || {
            let pool = pool.clone();
            let sql = log_count.clone();
            async move { count(&pool, sql).await >= 2000 }
        },
    )
    .await;
    child.kill().expect("SIGKILL the child"); // SIGKILL on Unix
    child.wait().expect("reap child");
    // A statement the child sent just before it died still commits on the server (an ack can
    // turn a held row into an executed one after the kill): count what it held only once the
    // server has closed every connection of the child.
    let child_sessions =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{CHILD_APP}'");
    wait_until(
        Duration::from_secs(30),
        "the killed child's sessions to end",
        || {
            let pool = pool.clone();
            let sql = child_sessions.clone();
            async move { count(&pool, sql).await == 0 }
        },
    )
    .await;
    let in_flight = count(
        &pool,
        format!("SELECT count(*) FROM {table} WHERE status = 'processing'"),
    )
    .await;
    let logged_by_child = count(&pool, log_count.clone()).await;
    eprintln!(
        "killed child after {logged_by_child} deliveries; {in_flight} messages held by it (in flight)"
    );
    assert!(in_flight > 0, "the kill should land mid-batch");

    let handler = logging_handler(pool.clone(), log.clone(), "parent", Duration::ZERO);
    let consumer = q
        .consume(&name, handler, consumer_options())
        .await
        .expect("consume");
    let executed = format!("SELECT count(*) FROM {table} WHERE status = 'executed'");
    wait_until(Duration::from_secs(180), "every message executed", || {
        let pool = pool.clone();
        let sql = executed.clone();
        async move { count(&pool, sql).await as usize == MESSAGES }
    })
    .await;
    consumer.stop().await;
    q.shutdown().await.expect("shutdown");

    let total = count(&pool, log_count).await as usize;
    let distinct = count(&pool, format!("SELECT count(DISTINCT id) FROM {log}")).await as usize;
    let lost = MESSAGES - distinct;
    let duplicates = total - distinct;
    let redelivered = count(
        &pool,
        format!("SELECT count(*) FROM {table} WHERE attempts > 1"),
    )
    .await;
    eprintln!(
        "crash recovery: messages={MESSAGES} delivered={total} distinct={distinct} lost={lost} \
         duplicates={duplicates} redelivered_after_lease_expiry={redelivered} bound={}",
        BATCH * CONCURRENCY
    );
    assert_eq!(lost, 0, "messages lost");
    assert!(
        duplicates <= BATCH * CONCURRENCY,
        "{duplicates} duplicates > {} in flight",
        BATCH * CONCURRENCY
    );
    // Every message held at the kill came back after its lease expired (under heavy load a late
    // renewal can add a few more redeliveries; those are not losses).
    assert!(
        redelivered >= in_flight,
        "{redelivered} redelivered < {in_flight} held at the kill"
    );
    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {log}")))
        .execute(&pool)
        .await
        .expect("drop log");
    drop_table(Db::Postgres, &url, &table).await;
}
