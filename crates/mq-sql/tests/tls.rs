//! PostgreSQL (`sslmode=verify-full`) and MariaDB (`ssl-mode=VERIFY_IDENTITY`) over TLS, against
//! the TLS-only servers `cargo xtask services up` starts: the conformance suite's delivery case
//! passes with the test CA, a server the wrong CA cannot vouch for is refused with an error that
//! says so, and plain TCP is refused.

#[path = "support/dropped.rs"]
mod dropped;
#[path = "support/factory.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use mq_core::backend::QueueStore;
use mq_core::testkit::{QueueFactory, cases, service_url};
use mq_core::{CommonOptions, ErrorChain, MessageQueue};
use mq_sql::{MySqlQueue, PgQueue, SqlOptions};

use dropped::DroppedTables;
use support::{Db, drop_table, options, table_name};

/// The TLS server of `db`: its URL variable and the URL parameter naming the CA file.
fn server(db: Db) -> (&'static str, &'static str) {
    match db {
        Db::Postgres => ("MQ_TEST_PG_TLS_URL", "sslrootcert"),
        Db::MySql => ("MQ_TEST_MYSQL_TLS_URL", "ssl-ca"),
        Db::Sqlite => unreachable!("SQLite is a file"),
    }
}

/// The TLS server's URL, checked against the CA in `ca_var`; `Err` (or a panic under
/// `MQ_REQUIRE_SERVICES=1`) when the server's variables are not set.
fn tls_url(db: Db, ca_var: &str) -> Result<String, String> {
    let (url_var, ca_param) = server(db);
    let url = service_url(url_var)?;
    let ca = service_url(ca_var)?;
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}{ca_param}={ca}"))
}

async fn connect(db: Db, url: &str, opts: SqlOptions) -> mq_core::Result<Arc<dyn MessageQueue>> {
    Ok(match db {
        Db::Postgres => Arc::new(PgQueue::connect(url, opts).await?),
        _ => Arc::new(MySqlQueue::connect(url, opts).await?),
    })
}

/// Queues on the TLS server of `db`, one table per case, dropped after a passing case.
struct TlsFactory {
    db: Db,
    used: DroppedTables,
}

impl TlsFactory {
    fn new(db: Db) -> Self {
        TlsFactory {
            db,
            used: DroppedTables::default(),
        }
    }
}

#[async_trait::async_trait]
impl QueueFactory for TlsFactory {
    fn skip_reason(&self) -> Option<String> {
        tls_url(self.db, "MQ_TEST_TLS_CA").err()
    }

    async fn create(&self, test: &str, common: CommonOptions) -> Arc<dyn MessageQueue> {
        let url = tls_url(self.db, "MQ_TEST_TLS_CA").unwrap_or_else(|e| panic!("{e}"));
        let table = table_name("tls", test);
        drop_table(self.db, &url, &table).await;
        self.used.add(self.db, &url, &table);
        connect(self.db, &url, options(&table).common(common))
            .await
            .unwrap_or_else(|e| panic!("connect over TLS: {}", ErrorChain::from_error(&e)))
    }

    async fn store(&self, _test: &str) -> Option<Arc<dyn QueueStore>> {
        None
    }
}

/// Connecting with the wrong CA fails, naming the server and the certificate problem.
async fn wrong_ca_is_refused(db: Db, server_addr: &str) {
    let url = match tls_url(db, "MQ_TEST_TLS_WRONG_CA") {
        Ok(url) => url,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let opts = options("mqt_tls_wrong_ca").connect_timeout(Duration::from_secs(5));
    let Err(e) = connect(db, &url, opts).await else {
        panic!("a certificate from another CA must be refused");
    };
    let text = ErrorChain::from_error(&e).to_string();
    eprintln!("refused as it should be: {text}");
    assert!(text.contains(server_addr), "names the server: {text}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("tls"),
        "says the certificate was refused: {text}"
    );
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_full_with_the_test_ca_delivers() {
        cases::delivers_ready_messages(&TlsFactory::new(Db::Postgres), "tls_pg_delivers").await;
    }

    #[tokio::test]
    async fn a_server_the_ca_does_not_vouch_for_is_refused() {
        wrong_ca_is_refused(Db::Postgres, "127.0.0.1:5441").await;
    }

    #[tokio::test]
    async fn plain_tcp_is_refused_by_the_tls_server() {
        let url = match service_url("MQ_TEST_PG_TLS_URL") {
            Ok(url) => url.replace("sslmode=verify-full", "sslmode=disable"),
            Err(reason) => return eprintln!("skipping: {reason}"),
        };
        let opts = options("mqt_tls_plain").connect_timeout(Duration::from_secs(5));
        let e = PgQueue::connect(&url, opts)
            .await
            .expect_err("the server only accepts TLS");
        let text = ErrorChain::from_error(&e).to_string();
        assert!(
            text.contains("no encryption") || text.contains("pg_hba"),
            "{text}"
        );
    }
}

mod mysql {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_identity_with_the_test_ca_delivers() {
        cases::delivers_ready_messages(&TlsFactory::new(Db::MySql), "tls_my_delivers").await;
    }

    #[tokio::test]
    async fn a_server_the_ca_does_not_vouch_for_is_refused() {
        wrong_ca_is_refused(Db::MySql, "127.0.0.1:3317").await;
    }

    #[tokio::test]
    async fn plain_tcp_is_refused_by_the_tls_server() {
        let url = match service_url("MQ_TEST_MYSQL_TLS_URL") {
            Ok(url) => url.replace("ssl-mode=VERIFY_IDENTITY", "ssl-mode=DISABLED"),
            Err(reason) => return eprintln!("skipping: {reason}"),
        };
        let opts = options("mqt_tls_plain").connect_timeout(Duration::from_secs(5));
        MySqlQueue::connect(&url, opts)
            .await
            .expect_err("the server only accepts TLS");
    }
}
