//! Durable checkpoint stores for the tests: one table (or database) per test, dropped when the
//! test starts so a failed run leaves its data for inspection.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use mq_core::backend::CheckpointStore;
use mq_core::testkit::service_url;

/// The URL in `var`, or `None` after printing why the test skips (panics under
/// `MQ_REQUIRE_SERVICES=1`).
pub fn url(var: &str, test: &str) -> Option<String> {
    match service_url(var) {
        Ok(u) => Some(u),
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            None
        }
    }
}

/// A table or database name for `test`.
pub fn name(test: &str) -> String {
    mq_core::testkit::identifier("mqt_kck_", test, 60)
}

/// A pool of 8 connections to the server at `url`, without the table `t`.
async fn pool_without<DB: sqlx::Database>(url: &str, t: &str) -> sqlx::Pool<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let pool = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(8)
        .connect(url)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
        .execute(&pool)
        .await
        .unwrap();
    pool
}

pub async fn postgres(test: &str) -> Option<Arc<dyn CheckpointStore>> {
    let url = url("MQ_TEST_POSTGRES_URL", test)?;
    let t = name(test);
    let pool = pool_without::<sqlx::Postgres>(&url, &t).await;
    Some(Arc::new(
        mq_sql::PgCheckpointStore::from_pool(pool, t).await.unwrap(),
    ))
}

pub async fn mysql(test: &str) -> Option<Arc<dyn CheckpointStore>> {
    let url = url("MQ_TEST_MYSQL_URL", test)?;
    let t = name(test);
    let pool = pool_without::<sqlx::MySql>(&url, &t).await;
    Some(Arc::new(
        mq_sql::MySqlCheckpointStore::from_pool(pool, t)
            .await
            .unwrap(),
    ))
}

pub async fn sqlite(test: &str) -> Arc<dyn CheckpointStore> {
    // removed when the test starts again, like the server tables
    let path = std::env::temp_dir().join(format!("{}.db", name(test)));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let url = format!("sqlite://{}", path.display());
    Arc::new(
        mq_sql::SqliteCheckpointStore::connect(&url, "checkpoints")
            .await
            .expect("open the SQLite checkpoint store"),
    )
}

pub async fn mongo(test: &str) -> Option<Arc<dyn CheckpointStore>> {
    let url = url("MONGODB_URI", test)?;
    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    client.database(&name(test)).drop().await.unwrap();
    let options = mq_mongo::MongoOptions::default()
        .database(name(test))
        .checkpoint_collection("checkpoints");
    Some(Arc::new(
        mq_mongo::MongoCheckpointStore::from_client(client, options)
            .await
            .unwrap(),
    ))
}

/// Another PostgreSQL checkpoint store with a pool of its own, on the table [`postgres`] made for
/// `test`: one per instance of a fleet.
pub async fn postgres_again(test: &str) -> Option<Arc<dyn CheckpointStore>> {
    let url = url("MQ_TEST_POSTGRES_URL", test)?;
    let pool = sqlx::pool::PoolOptions::<sqlx::Postgres>::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    Some(Arc::new(
        mq_sql::PgCheckpointStore::from_pool(pool, name(test))
            .await
            .unwrap(),
    ))
}
