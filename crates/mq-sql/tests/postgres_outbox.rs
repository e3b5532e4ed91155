//! PostgreSQL extras: publishing inside the caller's transaction, and LISTEN/NOTIFY waking a
//! consumer in another process-like instance long before its poll interval.

#[path = "support/factory.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mq_core::{
    Batch, CommonOptions, ConsumerOptions, Handler, HandlerContext, MessageQueue, NewMessage,
    QueueName, handler_fn,
};
use mq_sql::PgQueue;
use sqlx::{AssertSqlSafe, PgPool};
use support::{Db, drop_table, fresh_table, options, publish_all, wait_until};

/// A handler that only counts the messages it is given, and its count.
fn counting_handler() -> (Arc<AtomicUsize>, Arc<dyn Handler>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let handler = handler_fn(move |batch: Batch, _ctx: HandlerContext| {
        count.fetch_add(batch.len(), Ordering::SeqCst);
        async {}
    });
    (seen, Arc::new(handler))
}

/// A queue on `table`.
async fn pg_queue(url: &str, table: &str) -> PgQueue {
    PgQueue::connect(url, options(table).common(CommonOptions::default()))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_in_tx_follows_the_transaction() {
    let Some((url, table)) = fresh_table(Db::Postgres, "po", "outbox").await else {
        return;
    };
    let q = pg_queue(&url, &table).await;
    let name = QueueName::new("outbox").expect("name");
    q.register(&name).await.expect("register");
    let pool = PgPool::connect(&url).await.expect("pool");
    let count = || {
        let pool = pool.clone();
        let table = table.clone();
        async move {
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };

    let mut tx = pool.begin().await.expect("begin");
    let report = q
        .publish_in_tx(
            &mut tx,
            &name,
            vec![NewMessage::new("a", serde_json::json!({}))],
        )
        .await
        .expect("publish");
    assert_eq!(report.published.len(), 1);
    tx.rollback().await.expect("rollback");
    assert_eq!(count().await, 0, "rolled back publish is visible");

    let mut tx = pool.begin().await.expect("begin");
    q.publish_in_tx(
        &mut tx,
        &name,
        vec![NewMessage::new("b", serde_json::json!({})); 3],
    )
    .await
    .expect("publish")
    .into_result()
    .expect("stored");
    assert_eq!(count().await, 0, "uncommitted publish is visible");
    tx.commit().await.expect("commit");
    assert_eq!(count().await, 3);
    q.shutdown().await.expect("shutdown");
    drop_table(Db::Postgres, &url, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_an_idle_consumer_of_another_instance() {
    let Some((url, table)) = fresh_table(Db::Postgres, "po", "notify").await else {
        return;
    };
    let (consumer_side, publisher_side) =
        (pg_queue(&url, &table).await, pg_queue(&url, &table).await);
    let name = QueueName::new("wake").expect("name");
    consumer_side.register(&name).await.expect("register");
    publisher_side.register(&name).await.expect("register");
    let (seen, handler) = counting_handler();
    // Idle polling every 60 s: only a notification can deliver within the deadline below.
    let opts = ConsumerOptions::default()
        .poll_interval(Duration::from_secs(60))
        .max_poll_interval(Duration::from_secs(60));
    let consumer = consumer_side
        .consume(&name, handler, opts)
        .await
        .expect("consume");
    // The consumer's first (empty) poll runs at once; the listener must be subscribed before the
    // publish, or only a poll could deliver it.
    let store = consumer_side.store();
    wait_until(Duration::from_secs(10), "listener subscribed", || {
        let listening = store.is_listening();
        async move { listening }
    })
    .await;
    let started = tokio::time::Instant::now();
    let message = NewMessage::new("x", serde_json::json!({}));
    publish_all(&publisher_side, &name, vec![message]).await;
    wait_until(Duration::from_secs(10), "notified consumer to run", || {
        let seen = seen.clone();
        async move { seen.load(Ordering::SeqCst) == 1 }
    })
    .await;
    eprintln!("publish -> handler via NOTIFY: {:?}", started.elapsed());
    consumer.stop().await;
    consumer_side.shutdown().await.expect("shutdown");
    publisher_side.shutdown().await.expect("shutdown");
    drop_table(Db::Postgres, &url, &table).await;
}

/// Unique keys inside the caller's transaction: a second message with a key in the same
/// publish, and a later publish in another transaction, are refused naming the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_in_tx_refuses_held_keys() {
    let Some((url, table)) = fresh_table(Db::Postgres, "po", "outbox_keys").await else {
        return;
    };
    let q = pg_queue(&url, &table).await;
    let name = QueueName::new("outbox").expect("name");
    q.register(&name).await.expect("register");
    let pool = PgPool::connect(&url).await.expect("pool");
    let keyed = |n: u32| NewMessage::new("t", serde_json::json!({ "n": n })).unique_key("order-1");
    let holder_of = |report: &mq_core::PublishReport| match &report.failed[0].error {
        mq_core::Error::DuplicateKey { holder, .. } => holder.clone(),
        other => panic!("expected DuplicateKey, got {other}"),
    };

    let mut tx = pool.begin().await.expect("begin");
    let first = q
        .publish_in_tx(&mut tx, &name, vec![keyed(1), keyed(2)])
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    assert_eq!(first.published.len(), 1, "{:?}", first.failed);
    assert_eq!(first.failed[0].index, 1);
    assert_eq!(holder_of(&first), first.published[0]);

    let mut tx = pool.begin().await.expect("begin");
    let again = q
        .publish_in_tx(&mut tx, &name, vec![keyed(3)])
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    assert!(again.published.is_empty(), "{again:?}");
    assert_eq!(holder_of(&again), first.published[0]);

    pool.close().await;
    q.shutdown().await.expect("shutdown");
    drop_table(Db::Postgres, &url, &table).await;
}
