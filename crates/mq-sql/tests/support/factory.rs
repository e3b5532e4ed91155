//! Test support shared by the mq-sql test binaries: per-test tables, service URLs, cleanup.

#![allow(dead_code, unreachable_pub, unused_variables)]

use std::sync::Arc;
use std::sync::Mutex;

use mq_core::backend::QueueStore;
use mq_core::testkit::{QueueFactory, service_url};
use mq_core::{CommonOptions, MessageQueue};
use mq_sql::{SqlOptions, SqlStore};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Postgres,
    MySql,
    Sqlite,
}

/// The URL of `db`, or why the test skips (panics under `MQ_REQUIRE_SERVICES=1`).
pub fn url(db: Db, test: &str) -> Result<String, String> {
    match db {
        Db::Postgres => service_url("MQ_TEST_POSTGRES_URL"),
        Db::MySql => service_url("MQ_TEST_MYSQL_URL"),
        Db::Sqlite => {
            let path = std::env::temp_dir().join(format!(
                "mq-sql-{}-{}.db",
                table_name("f", test),
                std::process::id()
            ));
            Ok(format!("sqlite://{}", path.display()))
        }
    }
}

/// A table name for `test` with a per-binary `prefix`.
pub fn table_name(prefix: &str, test: &str) -> String {
    let cleaned: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("mqt_{prefix}_{cleaned}");
    name.truncate(50);
    name
}

/// Drops `table` and its archive.
pub async fn drop_table(db: Db, url: &str, table: &str) {
    if db == Db::Sqlite {
        let path = url.trim_start_matches("sqlite://");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
        return;
    }
    let archive = format!("{table}_archive");
    let sql = |t: &str| format!("DROP TABLE IF EXISTS {t}");
    match db {
        #[cfg(feature = "postgres")]
        Db::Postgres => {
            if let Ok(pool) = sqlx::PgPool::connect(url).await {
                for t in [table, archive.as_str()] {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql(t)))
                        .execute(&pool)
                        .await;
                }
                pool.close().await;
            }
        }
        #[cfg(feature = "mysql")]
        Db::MySql => {
            if let Ok(pool) = sqlx::MySqlPool::connect(url).await {
                for t in [table, archive.as_str()] {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql(t)))
                        .execute(&pool)
                        .await;
                }
                pool.close().await;
            }
        }
        _ => {}
    }
}

/// Options for a test table.
pub fn options(table: &str) -> SqlOptions {
    SqlOptions::default().table(table).max_connections(8)
}

/// The conformance factory: one fresh table per test, dropped when the test passes.
#[derive(Debug)]
pub struct Factory {
    db: Db,
    prefix: &'static str,
    delete_on_ack: bool,
    used: Mutex<Vec<(String, String)>>,
}

impl Factory {
    pub fn new(db: Db, prefix: &'static str) -> Self {
        Factory {
            db,
            prefix,
            delete_on_ack: false,
            used: Mutex::default(),
        }
    }

    /// A factory whose queues delete acknowledged rows (`SqlOptions::delete_on_ack`).
    pub fn deleting_acked(db: Db, prefix: &'static str) -> Self {
        Factory {
            db,
            prefix,
            delete_on_ack: true,
            used: Mutex::default(),
        }
    }

    fn options(&self, test: &str) -> SqlOptions {
        options(&table_name(self.prefix, test)).delete_on_ack(self.delete_on_ack)
    }
}

impl Drop for Factory {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the tables of a failed test for inspection.
            return;
        }
        let used: Vec<_> = self
            .used
            .lock()
            .map(|mut u| u.drain(..).collect())
            .unwrap_or_default();
        if used.is_empty() {
            return;
        }
        let db = self.db;
        // Drop runs inside the test's runtime: clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    for (url, table) in used {
                        drop_table(db, &url, &table).await;
                    }
                });
            }
        })
        .join();
    }
}

#[async_trait::async_trait]
impl QueueFactory for Factory {
    fn skip_reason(&self) -> Option<String> {
        url(self.db, "probe").err()
    }

    async fn create(&self, test: &str, common: CommonOptions) -> Arc<dyn MessageQueue> {
        // The SQLite file is named after the table, so suites of one binary that share test
        // names (with different prefixes) never share, or delete, each other's file.
        let table = table_name(self.prefix, test);
        let url = url(self.db, &table).unwrap_or_else(|e| panic!("{e}"));
        drop_table(self.db, &url, &table).await;
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((url.clone(), table.clone()));
        let opts = self.options(test);
        match self.db {
            #[cfg(feature = "postgres")]
            Db::Postgres => Arc::new(
                mq_sql::PgQueue::connect(&url, opts.common(common))
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e:?}")),
            ),
            #[cfg(feature = "mysql")]
            Db::MySql => Arc::new(
                mq_sql::MySqlQueue::connect(&url, opts.common(common))
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e:?}")),
            ),
            #[cfg(feature = "sqlite")]
            Db::Sqlite => Arc::new(
                mq_sql::SqliteQueue::connect(&url, opts.common(common))
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e:?}")),
            ),
            #[allow(unreachable_patterns)]
            other => panic!("{other:?} support is not compiled in: enable its feature"),
        }
    }

    async fn store(&self, test: &str) -> Option<Arc<dyn QueueStore>> {
        let url = url(self.db, &table_name(self.prefix, test)).ok()?;
        let opts = self.options(test);
        Some(match self.db {
            #[cfg(feature = "postgres")]
            Db::Postgres => Arc::new(
                SqlStore::<sqlx::Postgres>::connect(&url, opts)
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e:?}")),
            ),
            #[cfg(feature = "mysql")]
            Db::MySql => Arc::new(
                SqlStore::<sqlx::MySql>::connect(&url, opts)
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e:?}")),
            ),
            #[cfg(feature = "sqlite")]
            Db::Sqlite => Arc::new(
                SqlStore::<sqlx::Sqlite>::connect(&url, opts)
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e:?}")),
            ),
            #[allow(unreachable_patterns)]
            _ => return None,
        })
    }
}

/// The URL of `db` for `test`, or `None` after printing why the test skips.
pub fn require(db: Db, test: &str) -> Option<String> {
    match url(db, test) {
        Ok(u) => Some(u),
        Err(reason) => {
            eprintln!("skipping {test} on {db:?}: {reason}");
            None
        }
    }
}

/// A fresh queue on `table` (dropped first).
pub async fn fresh_queue(
    db: Db,
    url: &str,
    table: &str,
    common: CommonOptions,
) -> Arc<dyn MessageQueue> {
    drop_table(db, url, table).await;
    connect_queue(db, url, options(table), common).await
}

/// A queue on `table` with `opts`.
pub async fn connect_queue(
    db: Db,
    url: &str,
    opts: SqlOptions,
    common: CommonOptions,
) -> Arc<dyn MessageQueue> {
    match db {
        #[cfg(feature = "postgres")]
        Db::Postgres => Arc::new(
            mq_sql::PgQueue::connect(url, opts.common(common))
                .await
                .unwrap_or_else(|e| panic!("connect: {e:?}")),
        ),
        #[cfg(feature = "mysql")]
        Db::MySql => Arc::new(
            mq_sql::MySqlQueue::connect(url, opts.common(common))
                .await
                .unwrap_or_else(|e| panic!("connect: {e:?}")),
        ),
        #[cfg(feature = "sqlite")]
        Db::Sqlite => Arc::new(
            mq_sql::SqliteQueue::connect(url, opts.common(common))
                .await
                .unwrap_or_else(|e| panic!("connect: {e:?}")),
        ),
        #[allow(unreachable_patterns)]
        other => panic!("{other:?} support is not compiled in"),
    }
}

/// A raw store on `table`.
pub async fn connect_store(db: Db, url: &str, table: &str) -> Arc<dyn QueueStore> {
    connect_store_with(db, url, options(table)).await
}

/// A bare store with `opts`.
pub async fn connect_store_with(db: Db, url: &str, opts: SqlOptions) -> Arc<dyn QueueStore> {
    match db {
        #[cfg(feature = "postgres")]
        Db::Postgres => Arc::new(
            SqlStore::<sqlx::Postgres>::connect(url, opts)
                .await
                .unwrap_or_else(|e| panic!("connect: {e:?}")),
        ),
        #[cfg(feature = "mysql")]
        Db::MySql => Arc::new(
            SqlStore::<sqlx::MySql>::connect(url, opts)
                .await
                .unwrap_or_else(|e| panic!("connect: {e:?}")),
        ),
        #[cfg(feature = "sqlite")]
        Db::Sqlite => Arc::new(
            SqlStore::<sqlx::Sqlite>::connect(url, opts)
                .await
                .unwrap_or_else(|e| panic!("connect: {e:?}")),
        ),
        #[allow(unreachable_patterns)]
        other => panic!("{other:?} support is not compiled in"),
    }
}

/// Waits for `cond` to hold, polling every 20 ms, up to `timeout`.
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The number of rows in `table`.
pub async fn count_rows(db: Db, url: &str, table: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    match db {
        #[cfg(feature = "postgres")]
        Db::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("connect");
            let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .expect("count");
            pool.close().await;
            n
        }
        #[cfg(feature = "mysql")]
        Db::MySql => {
            let pool = sqlx::MySqlPool::connect(url).await.expect("connect");
            let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .expect("count");
            pool.close().await;
            n
        }
        #[cfg(feature = "sqlite")]
        Db::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
            let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .expect("count");
            pool.close().await;
            n
        }
        #[allow(unreachable_patterns)]
        other => panic!("{other:?} support is not compiled in"),
    }
}
