//! A consumer whose lease expired cannot renew or complete its old claim; another consumer's
//! claim of the same message works. On every database, keeping acknowledged rows and deleting
//! them (`SqlOptions::delete_on_ack`).

#[path = "support/factory.rs"]
mod support;

use std::time::Duration;

use mq_core::backend::{Claim, Completion, CompletionAction, Holder, QueueStore};
use mq_core::{CommonOptions, ErrorChain, NewMessage, QueueName, Status};
use support::{
    Db, connect_queue, connect_store_with, count_rows, drop_table, fresh_table, options,
    publish_all, test_on_each_db,
};

/// An ack of each of `claims`.
fn acks(claims: impl IntoIterator<Item = Claim>) -> Vec<Completion> {
    claims
        .into_iter()
        .map(|c| Completion::new(c, CompletionAction::Ack))
        .collect()
}

/// Whether `owner` claims nothing of `name`.
async fn claims_nothing(
    store: &dyn QueueStore,
    name: &QueueName,
    owner: &str,
    lease: Duration,
) -> bool {
    let claimed = store
        .claim(name, Holder::new(owner, lease), 10)
        .await
        .expect("claim");
    claimed.messages.is_empty()
}

async fn stale_owner(db: Db, test: &str, delete_on_ack: bool) {
    let Some((url, table)) = fresh_table(db, "lf", test).await else {
        return;
    };
    let opts = options(&table).delete_on_ack(delete_on_ack);
    let q = connect_queue(db, &url, opts.clone(), CommonOptions::default()).await;
    let store = connect_store_with(db, &url, opts).await;
    let name = QueueName::new("fencing").expect("name");
    q.register(&name).await.expect("register");
    let msgs = (0..3)
        .map(|i| NewMessage::new("t", serde_json::json!({"i": i})))
        .collect();
    publish_all(&*q, &name, msgs).await;

    let lease = Duration::from_millis(200);
    let a = store
        .claim(&name, Holder::new("owner-a", lease), 10)
        .await
        .expect("claim a")
        .messages;
    assert_eq!(a.len(), 3);
    let claims_a: Vec<Claim> = a.iter().map(Claim::of).collect();
    // While A holds the lease, B gets nothing.
    assert!(claims_nothing(&*store, &name, "owner-b", lease).await);

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
        .complete(&name, "owner-b", acks([wrong.clone()]))
        .await
        .expect("complete");
    assert_eq!(refused, vec![wrong]);

    // B's own completions apply.
    let refused = store
        .complete(&name, "owner-b", acks(b.iter().map(Claim::of)))
        .await
        .expect("complete");
    assert!(refused.is_empty(), "current owner refused: {refused:?}");
    let kept = if delete_on_ack { 0 } else { 3 };
    assert_eq!(count_rows(db, &url, &table).await, kept, "rows after acks");
    assert!(claims_nothing(&*store, &name, "owner-c", lease).await);
    q.shutdown().await.expect("shutdown");
    drop(store);
    drop_table(db, &url, &table).await;
}

test_on_each_db!(stale_owner, |db, test| stale_owner(db, test, false));
test_on_each_db!(stale_owner_deleting, |db, test| stale_owner(db, test, true));
