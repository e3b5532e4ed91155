//! PostgreSQL over TLS (`sslmode=verify-full`) against the TLS server `cargo xtask services up`
//! starts, which refuses plain TCP: the conformance suite's delivery case passes with the test
//! CA, and a server the wrong CA cannot vouch for is refused with an error that says so.

#[path = "support/dropped.rs"]
mod dropped;
#[path = "support/factory.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use dropped::DroppedTables;
use mq_core::backend::QueueStore;
use mq_core::testkit::{QueueFactory, cases, service_url};
use mq_core::{CommonOptions, ErrorChain, MessageQueue};
use mq_sql::PgQueue;
use support::{Db, drop_table, options, table_name};

/// The TLS server's URL, checked against the CA in `ca_var`; `Err` (or a panic under
/// `MQ_REQUIRE_SERVICES=1`) when the server's variables are not set.
fn tls_url(ca_var: &str) -> Result<String, String> {
    let url = service_url("MQ_TEST_PG_TLS_URL")?;
    let ca = service_url(ca_var)?;
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}sslrootcert={ca}"))
}

/// Queues on the TLS server, one table per case, dropped after a passing case.
#[derive(Default)]
struct TlsFactory {
    used: DroppedTables,
}

#[async_trait::async_trait]
impl QueueFactory for TlsFactory {
    fn skip_reason(&self) -> Option<String> {
        tls_url("MQ_TEST_TLS_CA").err()
    }

    async fn create(&self, test: &str, common: CommonOptions) -> Arc<dyn MessageQueue> {
        let url = tls_url("MQ_TEST_TLS_CA").unwrap_or_else(|e| panic!("{e}"));
        let table = table_name("tls", test);
        drop_table(Db::Postgres, &url, &table).await;
        self.used.add(&url, &table);
        Arc::new(
            PgQueue::connect(&url, options(&table).common(common))
                .await
                .unwrap_or_else(|e| panic!("connect over TLS: {}", ErrorChain::from_error(&e))),
        )
    }

    async fn store(&self, _test: &str) -> Option<Arc<dyn QueueStore>> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_test_ca_delivers() {
    cases::delivers_ready_messages(&TlsFactory::default(), "tls_delivers").await;
}

#[tokio::test]
async fn a_server_the_ca_does_not_vouch_for_is_refused() {
    let url = match tls_url("MQ_TEST_TLS_WRONG_CA") {
        Ok(url) => url,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let opts = options("mqt_tls_wrong_ca").connect_timeout(Duration::from_secs(5));
    let e = PgQueue::connect(&url, opts)
        .await
        .expect_err("a certificate from another CA must be refused");
    let text = ErrorChain::from_error(&e).to_string();
    eprintln!("refused as it should be: {text}");
    assert!(
        text.contains("127.0.0.1:5441") || text.contains("postgres"),
        "names the server: {text}"
    );
    let lower = text.to_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("tls"),
        "says the certificate was refused: {text}"
    );
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
