//! Retention: finished rows older than the age are deleted (or archived) in bounded batches;
//! scheduled and processing rows are kept. On every database.

#[path = "support/factory.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use mq_core::{
    Batch, CommonOptions, HandlerContext, MessageQueue, NewMessage, QueueName, handler_fn,
};
use mq_sql::SqlQueue;
use support::{Db, drop_table, fresh_table, options, publish_all, test_on_each_db};

async fn purge(db: Db, test: &str, archive: bool) {
    let Some((url, table)) = fresh_table(db, "rp", test).await else {
        return;
    };
    let opts = options(&table).archive(archive);
    let name = QueueName::new("retention").expect("name");
    let publish_and_ack = |q: Arc<dyn MessageQueue>| {
        let name = name.clone();
        async move {
            q.register(&name).await.expect("register");
            let msgs = (0..25)
                .map(|i| NewMessage::new("t", serde_json::json!({"i": i})))
                .collect();
            publish_all(&*q, &name, msgs).await;
            let handler = Arc::new(handler_fn(|_b: Batch, _c: HandlerContext| async {}));
            let opts = mq_core::ConsumerOptions::default().batch_size(20);
            let r = q.consume_batch(&name, handler, &opts).await.expect("batch");
            assert_eq!(r.acked, 20);
            // 5 stay scheduled.
        }
    };
    let removed = support::for_db!(db, |DB| {
        let q = SqlQueue::<DB>::connect(&url, opts.common(CommonOptions::default()))
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
    });
    assert_eq!(removed, 20, "{db:?}");
    drop_table(db, &url, &table).await;
}

test_on_each_db!(purge_delete, |db, test| purge(db, test, false));
test_on_each_db!(purge_archive, |db, test| purge(db, test, true));
