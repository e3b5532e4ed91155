//! A dead-letter table created by the first schema version, with an entry in it, is upgraded in
//! place by `migrate`: the old entry reads back unchanged and without original bytes, new
//! entries keep theirs, and migrating again changes nothing.

#[path = "support/factory.rs"]
mod support;

use mq_core::testkit::dead_letter::letter;
use mq_core::{DeadLetterEntry, DeadLetterFilter, DeadLetterStore, MessageId};
use mq_sql::SqlDeadLetterStore;
use support::{Db, fresh_table, test_on_each_db};

/// The first dead-letter migration of `db`, as the previous version ran it on `table`.
fn first_version(db: Db, table: &str) -> String {
    let sql = match db {
        Db::Postgres => include_str!("../migrations/postgres/0001_dead_letters.sql"),
        Db::MySql => include_str!("../migrations/mysql/0001_dead_letters.sql"),
        Db::Sqlite => include_str!("../migrations/sqlite/0001_dead_letters.sql"),
    };
    sql.replace("{idx_failed}", &format!("{table}_failed"))
        .replace("{idx_type}", &format!("{table}_type"))
        .replace("{idx_message}", &format!("{table}_message"))
        .replace("{table}", table)
}

/// The row the previous version wrote for `letter`: every column but the original bytes.
fn old_insert(table: &str, id: &str, letter: &mq_core::DeadLetter) -> String {
    let message = serde_json::to_string(&letter.message).expect("message json");
    let error = serde_json::to_string(&letter.error).expect("error json");
    let ms = letter.failed_at.timestamp_millis();
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    format!(
        "INSERT INTO {table} (id, queue, message_id, message_type, message, backend, shard_id, \
         sequence_number, error, error_text, exhausted, attempts, failures, first_failed_at, \
         last_failed_at, consumer_id, replay_state, replay_generation, replay_message_id, \
         replay_target, replay_started_at, replayed_at) VALUES ({}, {}, {}, {}, {}, {}, NULL, \
         NULL, {}, {}, 1, 3, 1, {ms}, {ms}, {}, 'none', 0, NULL, NULL, NULL, NULL)",
        quote(id),
        quote(letter.message.queue.as_str()),
        quote(letter.message.id.as_str()),
        quote(&letter.message.message_type),
        quote(&message),
        quote(&letter.origin.backend),
        quote(&error),
        quote(&letter.error.to_string()),
        quote(&letter.consumer_id),
    )
}

async fn upgrade(db: Db, test: &str) {
    let Some((url, table)) = fresh_table(db, "dlu", test).await else {
        return;
    };
    let connect = if db == Db::Sqlite {
        format!("{url}?mode=rwc")
    } else {
        url.clone()
    };
    let old_id = "01JDQ8Z6N6X1N6N8C3V1T5K2QW";
    let old = letter("orders", "old-1", "charge", "card declined");
    support::for_db!(db, |DB| {
        let pool = sqlx::Pool::<DB>::connect(&connect).await.expect("pool");
        for stmt in first_version(db, &table).split(";\n") {
            if stmt
                .lines()
                .all(|l| l.trim().is_empty() || l.trim().starts_with("--"))
            {
                continue;
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(stmt.to_owned()))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(old_insert(&table, old_id, &old)))
            .execute(&pool)
            .await
            .expect("old row");

        let store = SqlDeadLetterStore::<DB>::new(pool.clone(), table.clone()).expect("store");
        store.migrate().await.expect("migrate an old table");
        store
            .migrate()
            .await
            .expect("migrating again changes nothing");

        let entries = store
            .list(&DeadLetterFilter::default())
            .await
            .expect("list after the upgrade");
        assert_eq!(entries.len(), 1, "the old entry is still there");
        let e: &DeadLetterEntry = &entries[0];
        assert_eq!(e.id.as_str(), old_id);
        assert_eq!(
            e.message, old.message,
            "the old message reads back unchanged"
        );
        assert_eq!(e.original_bytes, None, "an old entry has no original bytes");

        let bytes: Vec<u8> = vec![0xff, 0x00, b'{', b' ', 0xc3, 0x28];
        store
            .insert(vec![
                letter("orders", "new-1", "charge", "x").original_bytes(bytes.clone()),
                letter("orders", "new-2", "charge", "x").original_bytes(Vec::new()),
                letter("orders", "new-3", "charge", "x"),
            ])
            .await
            .expect("insert after the upgrade");
        for (id, want) in [
            ("new-1", Some(bytes.clone())),
            ("new-2", Some(Vec::new())),
            ("new-3", None),
            ("old-1", None),
        ] {
            let found = store
                .list(&DeadLetterFilter::default().message_ids([MessageId::new(id).expect("id")]))
                .await
                .expect("list");
            assert_eq!(found.len(), 1, "{id}");
            assert_eq!(found[0].original_bytes, want, "original bytes of {id}");
        }
        let versions: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {table}_versions"
        )))
        .fetch_one(&pool)
        .await
        .expect("versions");
        assert_eq!(versions, 2, "both dead-letter migrations are recorded once");
        pool.close().await;
    });
    support::drop_table(db, &url, &table).await;
}

test_on_each_db!(dead_letter_table_upgrade, upgrade);
