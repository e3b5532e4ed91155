//! A consumer whose lease expired cannot renew or complete its old claim; another consumer's
//! claim of the same message works. On every database, keeping acknowledged rows and deleting
//! them (`SqlOptions::delete_on_ack`).

#[path = "support/factory.rs"]
mod support;

use std::time::Duration;

use mq_core::backend::{Claim, Completion, CompletionAction, Holder};
use mq_core::{CommonOptions, ErrorChain, NewMessage, Status};
use support::{
    Db, connect_queue, connect_store_with, count_rows, drop_table, options, require, table_name,
};

async fn stale_owner(db: Db, delete_on_ack: bool) {
    let test = if delete_on_ack {
        "stale_owner_deleting"
    } else {
        "stale_owner"
    };
    let Some(url) = require(db, test) else { return };
    let table = table_name("lf", test);
    drop_table(db, &url, &table).await;
    let opts = options(&table).delete_on_ack(delete_on_ack);
    let q = connect_queue(db, &url, opts.clone(), CommonOptions::default()).await;
    let store = connect_store_with(db, &url, opts).await;
    let name = mq_core::QueueName::new("fencing").expect("name");
    q.register(&name).await.expect("register");
    let msgs = (0..3)
        .map(|i| NewMessage::new("t", serde_json::json!({"i": i})))
        .collect();
    q.publish(&name, msgs)
        .await
        .expect("publish")
        .into_result()
        .expect("stored");

    let lease = Duration::from_millis(200);
    let a = store
        .claim(&name, Holder::new("owner-a", lease), 10)
        .await
        .expect("claim a")
        .messages;
    assert_eq!(a.len(), 3);
    let claims_a: Vec<Claim> = a.iter().map(Claim::of).collect();
    // While A holds the lease, B gets nothing.
    assert!(
        store
            .claim(&name, Holder::new("owner-b", lease), 10)
            .await
            .expect("claim b")
            .messages
            .is_empty()
    );

    // A stalls; B claims once the lease lapses (polled, no fixed sleep).
    let mut b = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        b.extend(
            store
                .claim(&name, Holder::new("owner-b", Duration::from_secs(30)), 10)
                .await
                .expect("claim")
                .messages,
        );
    }
    assert!(
        b.iter()
            .all(|m| m.attempts == 2 && m.status == Status::Processing)
    );

    // Every kind of write from A is refused.
    let lost = store
        .renew(&name, Holder::new("owner-a", lease), &claims_a)
        .await
        .expect("renew");
    assert_eq!(lost.len(), 3, "stale owner renewed");
    let refused = store
        .complete(
            &name,
            "owner-a",
            vec![
                Completion::new(claims_a[0].clone(), CompletionAction::Ack),
                Completion::new(
                    claims_a[1].clone(),
                    CompletionAction::Retry {
                        execute_at: chrono::Utc::now(),
                        error: None,
                    },
                ),
                Completion::new(
                    claims_a[2].clone(),
                    CompletionAction::Finish {
                        status: Status::Failed,
                        error: ErrorChain::msg("x"),
                    },
                ),
            ],
        )
        .await
        .expect("complete");
    assert_eq!(refused.len(), 3, "stale owner completed");
    assert_eq!(
        count_rows(db, &url, &table).await,
        3,
        "stale ack removed a row"
    );
    // B with the wrong attempt number is refused too (fencing by attempt, not only owner).
    let wrong = Claim::new(b[0].id.clone(), 1);
    let refused = store
        .complete(
            &name,
            "owner-b",
            vec![Completion::new(wrong.clone(), CompletionAction::Ack)],
        )
        .await
        .expect("complete");
    assert_eq!(refused, vec![wrong]);

    // B's own completions apply.
    let completions = b
        .iter()
        .map(|m| Completion::new(Claim::of(m), CompletionAction::Ack))
        .collect();
    let refused = store
        .complete(&name, "owner-b", completions)
        .await
        .expect("complete");
    assert!(refused.is_empty(), "current owner refused: {refused:?}");
    let kept = if delete_on_ack { 0 } else { 3 };
    assert_eq!(count_rows(db, &url, &table).await, kept, "rows after acks");
    assert!(
        store
            .claim(&name, Holder::new("owner-c", lease), 10)
            .await
            .expect("claim")
            .messages
            .is_empty()
    );
    q.shutdown().await.expect("shutdown");
    drop(store);
    drop_table(db, &url, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_postgres() {
    stale_owner(Db::Postgres, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_postgres_delete_on_ack() {
    stale_owner(Db::Postgres, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_mysql() {
    stale_owner(Db::MySql, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_mysql_delete_on_ack() {
    stale_owner(Db::MySql, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_sqlite() {
    stale_owner(Db::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_sqlite_delete_on_ack() {
    stale_owner(Db::Sqlite, true).await;
}
