//! A Redis lease store for one conformance case, or a printed skip.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use mq_kinesis::{LeaseStore, RedisLeaseStore};

/// The store at `url` under `prefix`; with no URL (`Err(reason)`), prints why `test` skips.
pub async fn connect_or_skip(
    test: &str,
    url: Result<String, String>,
    prefix: String,
) -> Option<Arc<dyn LeaseStore>> {
    match url {
        Ok(url) => Some(Arc::new(
            RedisLeaseStore::connect(&url, prefix)
                .await
                .unwrap_or_else(|e| panic!("{test}: connect to the lease store: {e:?}")),
        )),
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            None
        }
    }
}
