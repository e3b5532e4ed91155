//! Test support shared by the mq-sql test binaries: per-test tables, service URLs, cleanup.

#![allow(
    dead_code,
    unreachable_pub,
    unused_variables,
    unused_imports,
    unused_macros
)]

use std::sync::Arc;
use std::sync::Mutex;

use mq_core::backend::QueueStore;
pub use mq_core::testkit::publish_all;
use mq_core::testkit::{QueueFactory, service_url};
use mq_core::{CommonOptions, MessageQueue, NewMessage, QueueName};
use mq_sql::{SqlOptions, SqlQueue, SqlStore};

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
    mq_core::testkit::identifier(&format!("mqt_{prefix}_"), test, 50)
}

/// Evaluates `$body` with the type `$t` naming the sqlx database of `$db` (a [`Db`]); panics
/// for a database whose feature is off. Lets one piece of test code serve every database.
macro_rules! for_db {
    ($db:expr, |$t:ident| $body:expr) => {
        match $db {
            #[cfg(feature = "postgres")]
            $crate::support::Db::Postgres => {
                type $t = sqlx::Postgres;
                $body
            }
            #[cfg(feature = "mysql")]
            $crate::support::Db::MySql => {
                type $t = sqlx::MySql;
                $body
            }
            #[cfg(feature = "sqlite")]
            $crate::support::Db::Sqlite => {
                type $t = sqlx::Sqlite;
                $body
            }
            #[allow(unreachable_patterns)]
            other => panic!("{other:?} support is not compiled in: enable its feature"),
        }
    };
}
pub(crate) use for_db;

/// One `#[tokio::test]` per database in a module `$name`, each awaiting `$run(db, test)`
/// where `test` is `$name` as a string (it names the tables and SQLite files).
macro_rules! test_on_each_db {
    ($name:ident, $run:expr) => {
        $crate::support::test_on_each_db!(
            @each $name, $run, [postgres Postgres] [mysql MySql] [sqlite Sqlite]
        );
    };
    (@each $name:ident, $run:expr, $([$test:ident $db:ident])*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    ($run)($crate::support::Db::$db, stringify!($name)).await;
                }
            )*
        }
    };
}
pub(crate) use test_on_each_db;

/// Drops `table` and its archive (SQLite: deletes the database file).
pub async fn drop_table(db: Db, url: &str, table: &str) {
    if db == Db::Sqlite {
        let path = url.trim_start_matches("sqlite://");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
        return;
    }
    for_db!(db, |DB| {
        if let Ok(pool) = sqlx::Pool::<DB>::connect(url).await {
            let derived = ["archive", "versions", "ids", "paused"].map(|s| format!("{table}_{s}"));
            for t in std::iter::once(table.to_owned()).chain(derived) {
                let sql = format!("DROP TABLE IF EXISTS {t}");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
            }
            pool.close().await;
        }
    })
}

/// The URL of `db` and the table `prefix`+`test`, dropped; `None` after printing why the test
/// skips.
pub async fn fresh_table(db: Db, prefix: &str, test: &str) -> Option<(String, String)> {
    let url = require(db, test)?;
    let table = table_name(prefix, test);
    drop_table(db, &url, &table).await;
    Some((url, table))
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
        connect_queue(self.db, &url, self.options(test), common).await
    }

    async fn store(&self, test: &str) -> Option<Arc<dyn QueueStore>> {
        let url = url(self.db, &table_name(self.prefix, test)).ok()?;
        Some(connect_store_with(self.db, &url, self.options(test)).await)
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
    try_connect_queue(db, url, opts.common(common))
        .await
        .unwrap_or_else(|e| panic!("connect: {e:?}"))
}

/// A queue with `opts`, or the error connecting returned.
pub async fn try_connect_queue(
    db: Db,
    url: &str,
    opts: SqlOptions,
) -> mq_core::Result<Arc<dyn MessageQueue>> {
    for_db!(db, |DB| Ok(Arc::new(
        SqlQueue::<DB>::connect(url, opts).await?
    )))
}

/// A raw store on `table`.
pub async fn connect_store(db: Db, url: &str, table: &str) -> Arc<dyn QueueStore> {
    connect_store_with(db, url, options(table)).await
}

/// A bare store with `opts`.
pub async fn connect_store_with(db: Db, url: &str, opts: SqlOptions) -> Arc<dyn QueueStore> {
    for_db!(db, |DB| Arc::new(
        SqlStore::<DB>::connect(url, opts)
            .await
            .unwrap_or_else(|e| panic!("connect: {e:?}"))
    ))
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
    for_db!(db, |DB| {
        let pool = sqlx::Pool::<DB>::connect(url).await.expect("connect");
        let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    })
}

/// What a [`recording_handler`] saw: the payload field of each message it handled, in order.
pub type Seen = Arc<Mutex<Vec<u64>>>;

/// A handler that records the integer payload field `field` of every message it handles.
pub fn recording_handler(field: &'static str) -> (Seen, Arc<dyn mq_core::Handler>) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = mq_core::handler_fn(move |b: mq_core::Batch, _c: mq_core::HandlerContext| {
        let s = s.clone();
        async move {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            s.extend(b.iter().filter_map(|m| m.payload[field].as_u64()));
        }
    });
    (seen, Arc::new(handler))
}
