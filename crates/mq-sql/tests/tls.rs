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

/// The TLS server of a database, as `cargo xtask services up` starts it.
struct Server {
    /// The variable holding its URL.
    url_var: &'static str,
    /// The URL parameter naming the CA file.
    ca_param: &'static str,
    /// The URL's verifying TLS mode, and the mode that turns TLS off.
    verify: &'static str,
    plain: &'static str,
    /// Where it listens, as connect errors name it.
    addr: &'static str,
    /// What the server says when a client does not use TLS, if it says so.
    plain_refusal: Option<&'static str>,
}

fn server(db: Db) -> Server {
    match db {
        Db::Postgres => Server {
            url_var: "MQ_TEST_PG_TLS_URL",
            ca_param: "sslrootcert",
            verify: "sslmode=verify-full",
            plain: "sslmode=disable",
            addr: "127.0.0.1:5441",
            plain_refusal: Some("no encryption"),
        },
        Db::MySql => Server {
            url_var: "MQ_TEST_MYSQL_TLS_URL",
            ca_param: "ssl-ca",
            verify: "ssl-mode=VERIFY_IDENTITY",
            plain: "ssl-mode=DISABLED",
            addr: "127.0.0.1:3317",
            plain_refusal: None,
        },
        Db::Sqlite => unreachable!("SQLite is a file"),
    }
}

/// The TLS server's URL, checked against the CA in `ca_var`; `Err` (or a panic under
/// `MQ_REQUIRE_SERVICES=1`) when the server's variables are not set.
fn tls_url(db: Db, ca_var: &str) -> Result<String, String> {
    let server = server(db);
    let url = service_url(server.url_var)?;
    let ca = service_url(ca_var)?;
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}{}={ca}", server.ca_param))
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
async fn wrong_ca_is_refused(db: Db) {
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
    assert!(text.contains(server(db).addr), "names the server: {text}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("tls"),
        "says the certificate was refused: {text}"
    );
}

/// Connecting without TLS fails: the server only speaks TLS.
async fn plain_tcp_is_refused(db: Db) {
    let server = server(db);
    let url = match service_url(server.url_var) {
        Ok(url) => url.replace(server.verify, server.plain),
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let opts = options("mqt_tls_plain").connect_timeout(Duration::from_secs(5));
    let Err(e) = connect(db, &url, opts).await else {
        panic!("the server only accepts TLS");
    };
    let text = ErrorChain::from_error(&e).to_string();
    if let Some(refusal) = server.plain_refusal {
        assert!(text.contains(refusal), "{text}");
    }
}

/// The three checks on one database's TLS server.
macro_rules! tls_tests {
    ($module:ident, $db:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn verified_with_the_test_ca_delivers() {
                let case = concat!("tls_", stringify!($module), "_delivers");
                cases::delivers_ready_messages(&TlsFactory::new($db), case).await;
            }

            #[tokio::test]
            async fn a_server_the_ca_does_not_vouch_for_is_refused() {
                wrong_ca_is_refused($db).await;
            }

            #[tokio::test]
            async fn plain_tcp_is_refused_by_the_tls_server() {
                plain_tcp_is_refused($db).await;
            }
        }
    };
}

tls_tests!(postgres, Db::Postgres);
tls_tests!(mysql, Db::MySql);
