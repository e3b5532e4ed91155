//! A publish is stored whole or not at all, whatever its size; large messages are cut into
//! statements by bytes as well as rows; due times are read on the database's clock.

#[path = "support/factory.rs"]
mod support;

use std::time::Duration;

use chrono::Utc;
use mq_core::backend::{Holder, QueueStore};
use mq_core::{CommonOptions, Message, MessageId, MessageQueue, NewMessage, QueueName};
use mq_sql::{SqlQueue, SqlStore};
use serde_json::json;
use support::{Db, count_rows, drop_table, fresh_table, options, test_on_each_db};

/// Makes the database itself refuse rows of type `boom`, the way a constraint, a trigger or a
/// full disk refuses a row that passed every check mq can make before writing.
async fn refuse_boom(db: Db, url: &str, table: &str) {
    let sql = match db {
        Db::Sqlite => format!(
            "CREATE TRIGGER {table}_boom BEFORE INSERT ON {table} WHEN NEW.message_type = 'boom' \
             BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        ),
        _ => format!(
            "ALTER TABLE {table} ADD CONSTRAINT {table}_boom CHECK (message_type <> 'boom')"
        ),
    };
    support::for_db!(db, |DB| {
        let pool = sqlx::Pool::<DB>::connect(url).await.expect("pool");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("add the refusal");
        pool.close().await;
    })
}

/// 6,000 messages, the one at #5,500 refused by the database: the publish fails and stores
/// none of them (a statement per 5,000 rows committed alone would leave 5,000 behind).
async fn refused_by_the_database_stores_nothing(db: Db, test: &str) {
    let Some((url, table)) = fresh_table(db, "pa", test).await else {
        return;
    };
    let name = QueueName::new("atomic").expect("name");
    let result = support::for_db!(db, |DB| {
        let q = SqlQueue::<DB>::connect(&url, options(&table).common(CommonOptions::default()))
            .await
            .expect("connect");
        q.register(&name).await.expect("register");
        refuse_boom(db, &url, &table).await;
        let batch: Vec<NewMessage> = (0..6000)
            .map(|i| NewMessage::new(if i == 5500 { "boom" } else { "ok" }, json!({ "i": i })))
            .collect();
        let result = q.publish(&name, batch).await;
        q.shutdown().await.expect("shutdown");
        result
    });
    let stored = count_rows(db, &url, &table).await;
    eprintln!(
        "{db:?}: publish of 6,000 with a refused row: {} and {stored} rows stored",
        match &result {
            Ok(r) => format!("{} published, {} failed", r.published.len(), r.failed.len()),
            Err(e) => format!("error ({e})"),
        }
    );
    match result {
        Err(_) => assert_eq!(stored, 0, "{db:?}: a failed publish left rows behind"),
        Ok(report) => {
            assert_eq!(report.failed.len(), 1, "{db:?}: only the refused row fails");
            assert_eq!(stored, 5999, "{db:?}");
        }
    }
    drop_table(db, &url, &table).await;
}

test_on_each_db!(
    database_refusal_stores_nothing,
    refused_by_the_database_stores_nothing
);

/// 40 messages of 600 KB (24 MB in all, past MySQL's default 16 MiB packet): cut into
/// statements by bytes, all stored and readable.
async fn large_messages_are_cut_by_bytes(db: Db, test: &str) {
    let Some((url, table)) = fresh_table(db, "pb", test).await else {
        return;
    };
    let name = QueueName::new("large").expect("name");
    let (published, claimed) = support::for_db!(db, |DB| {
        let q = SqlQueue::<DB>::connect(&url, options(&table).common(CommonOptions::default()))
            .await
            .expect("connect");
        q.register(&name).await.expect("register");
        let text = "x".repeat(600 * 1024);
        let batch: Vec<NewMessage> = (0..40)
            .map(|i| NewMessage::new("big", json!({ "i": i, "text": text })))
            .collect();
        let report = q.publish(&name, batch).await.expect("publish");
        let holder = Holder::new("reader", Duration::from_secs(30));
        let mut claimed = 0;
        loop {
            let got = q.store().claim(&name, holder, 10).await.expect("claim");
            if got.messages.is_empty() {
                break;
            }
            assert!(
                got.messages
                    .iter()
                    .all(|m| m.payload["text"].as_str().map(str::len) == Some(600 * 1024)),
                "{db:?}: payloads come back whole"
            );
            claimed += got.messages.len();
        }
        q.shutdown().await.expect("shutdown");
        (report.published.len(), claimed)
    });
    assert_eq!(published, 40, "{db:?}");
    assert_eq!(claimed, 40, "{db:?}");
    drop_table(db, &url, &table).await;
}

test_on_each_db!(large_messages_by_bytes, large_messages_are_cut_by_bytes);

/// A publisher whose clock runs 10 minutes ahead of the database's publishes a message that is
/// due at once: it is claimable at once, because the database reads the due time as "now" on
/// its own clock. (Before, the row said "10 minutes from now" to the database.) SQLite runs in
/// the publisher's process, on its clock, so only the servers are tried.
async fn publisher_clock_ahead(db: Db, test: &str) {
    let Some((url, table)) = fresh_table(db, "pc", test).await else {
        return;
    };
    let name = QueueName::new("skew").expect("name");
    let ahead = Utc::now() + chrono::Duration::minutes(10);
    let (claimed, expires_in) = support::for_db!(db, |DB| {
        let store = SqlStore::<DB>::connect(&url, options(&table))
            .await
            .expect("connect");
        store.register(&name).await.expect("register");
        let mut m = Message::new(
            MessageId::new("skewed-1").expect("id"),
            name.clone(),
            "t",
            json!({}),
            ahead,
        );
        m.execute_at = ahead;
        m.expires_at = Some(ahead + chrono::Duration::minutes(5));
        let stored = store.insert(&name, vec![m]).await.expect("insert");
        assert!(stored.iter().all(Result::is_ok), "{stored:?}");
        let holder = Holder::new("reader", Duration::from_secs(30));
        let got = store.claim(&name, holder, 10).await.expect("claim");
        store.close().await;
        let expires_in = got
            .messages
            .first()
            .and_then(|m| m.expires_at)
            .map(|at| at - Utc::now());
        (got.messages.len(), expires_in)
    });
    assert_eq!(
        claimed, 1,
        "{db:?}: a message due now on the publisher's clock is due now"
    );
    // The expiry keeps its distance from the publish: five minutes, not fifteen.
    let left = expires_in.expect("expires_at kept");
    assert!(
        left <= chrono::Duration::minutes(5) && left > chrono::Duration::minutes(4),
        "{db:?}: expires in {left:?}"
    );
    drop_table(db, &url, &table).await;
}

mod publisher_clock {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        publisher_clock_ahead(Db::Postgres, "publisher_clock").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        publisher_clock_ahead(Db::MySql, "publisher_clock").await;
    }
}
