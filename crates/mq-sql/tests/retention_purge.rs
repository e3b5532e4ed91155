//! Retention: finished rows older than the age are deleted (or archived) in bounded batches;
//! scheduled and processing rows are kept. On every database.

#[path = "support/factory.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use mq_core::{
    Batch, CommonOptions, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn,
};
use support::{Db, drop_table, options, require, table_name};

async fn purge(db: Db, archive: bool) {
    let test = if archive {
        "purge_archive"
    } else {
        "purge_delete"
    };
    let Some(url) = require(db, test) else { return };
    let table = table_name("rp", test);
    drop_table(db, &url, &table).await;
    let opts = options(&table).archive(archive);
    let name = QueueName::new("retention").expect("name");
    let publish_and_ack = |q: Arc<dyn MessageQueue>| {
        let name = name.clone();
        async move {
            q.register(&name).await.expect("register");
            let msgs = (0..25)
                .map(|i| NewMessage::new("t", serde_json::json!({"i": i})))
                .collect();
            q.publish(&name, msgs)
                .await
                .expect("publish")
                .into_result()
                .expect("every message stored");
            let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
            let opts = mq_core::ConsumerOptions::default().batch_size(20);
            let r = q.consume_batch(&name, handler, &opts).await.expect("batch");
            assert_eq!(r.acked, 20);
            // 5 stay scheduled.
        }
    };
    let removed = match db {
        Db::Postgres => {
            let q = mq_sql::PgQueue::connect(&url, opts.common(CommonOptions::default()))
                .await
                .expect("connect");
            publish_and_ack(Arc::new(q.clone())).await;
            assert_eq!(
                q.purge_finished(Duration::from_secs(3600), 7)
                    .await
                    .expect("purge"),
                0,
                "too young"
            );
            let n = q.purge_finished(Duration::ZERO, 7).await.expect("purge");
            q.shutdown().await.expect("shutdown");
            n
        }
        Db::MySql => {
            let q = mq_sql::MySqlQueue::connect(&url, opts.common(CommonOptions::default()))
                .await
                .expect("connect");
            publish_and_ack(Arc::new(q.clone())).await;
            assert_eq!(
                q.purge_finished(Duration::from_secs(3600), 7)
                    .await
                    .expect("purge"),
                0,
                "too young"
            );
            let n = q.purge_finished(Duration::ZERO, 7).await.expect("purge");
            q.shutdown().await.expect("shutdown");
            n
        }
        Db::Sqlite => {
            let q = mq_sql::SqliteQueue::connect(&url, opts.common(CommonOptions::default()))
                .await
                .expect("connect");
            publish_and_ack(Arc::new(q.clone())).await;
            assert_eq!(
                q.purge_finished(Duration::from_secs(3600), 7)
                    .await
                    .expect("purge"),
                0,
                "too young"
            );
            let n = q.purge_finished(Duration::ZERO, 7).await.expect("purge");
            q.shutdown().await.expect("shutdown");
            n
        }
    };
    assert_eq!(removed, 20, "{db:?}");
    drop_table(db, &url, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_postgres() {
    purge(Db::Postgres, false).await;
    purge(Db::Postgres, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_mysql() {
    purge(Db::MySql, false).await;
    purge(Db::MySql, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_sqlite() {
    purge(Db::Sqlite, false).await;
    purge(Db::Sqlite, true).await;
}
