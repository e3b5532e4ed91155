//! The lease-store conformance suite on Redis over TLS (`rediss://` with the test CA), against
//! the TLS Redis `cargo xtask services up` starts; and a server the CA does not vouch for is
//! refused.

#[path = "common/redis_keys.rs"]
mod redis_keys;
#[path = "common/redis_store.rs"]
mod redis_store;

use std::sync::Arc;

use mq_core::testkit::service_url;
use mq_kinesis::testkit::LeaseStoreFactory;
use mq_kinesis::{LeaseStore, RedisLeaseStore};

/// The TLS Redis URL trusting the CA file in `ca_var`, with that file's path.
fn tls_url(ca_var: &str) -> Result<(String, String), String> {
    let url = service_url("MQ_TEST_REDIS_TLS_URL")?;
    let ca = service_url(ca_var)?;
    Ok((format!("{url}?ca_file={ca}"), ca))
}

struct RedisTls;

#[mq_core::async_trait]
impl LeaseStoreFactory for RedisTls {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseStore>> {
        let url = tls_url("MQ_TEST_TLS_CA").map(|(url, _)| url);
        redis_store::connect_or_skip(test, url, format!("mqtest-tls-{test}")).await
    }

    async fn cleanup(&self, test: &str) {
        if let (Ok(url), Ok((_, ca))) = (
            service_url("MQ_TEST_REDIS_TLS_URL"),
            tls_url("MQ_TEST_TLS_CA"),
        ) {
            redis_keys::delete_matching_on(
                &url,
                &["--tls", "--cacert", &ca],
                &format!("mqtest-tls-{test}:*"),
            );
        }
    }
}

mod redis_tls {
    mq_kinesis::lease_store_tests!(super::RedisTls);
}

#[tokio::test]
async fn a_server_the_ca_does_not_vouch_for_is_refused() {
    let (url, _) = match tls_url("MQ_TEST_TLS_WRONG_CA") {
        Ok(v) => v,
        Err(reason) => return eprintln!("skipping: {reason}"),
    };
    let e = RedisLeaseStore::connect(&url, "mqtest-tls-wrong-ca")
        .await
        .expect_err("a certificate from another CA must be refused");
    let text = format!("{} | {e:?}", mq_core::ErrorChain::from_error(&e)).to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls"),
        "says the certificate was refused: {text}"
    );
}
