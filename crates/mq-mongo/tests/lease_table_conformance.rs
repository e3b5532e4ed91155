//! The lease-table conformance suite on `MongoLeaseTable` (needs `MONGODB_URI`). Each case gets
//! its own database, dropped when the case starts.

#[path = "common/mongo.rs"]
mod common;

use std::sync::Arc;

use mq_core::async_trait;
use mq_core::backend::LeaseTable;
use mq_core::testkit::lease_table::LeaseTableFactory;
use mq_mongo::MongoLeaseTable;

struct Mongo;

#[async_trait]
impl LeaseTableFactory for Mongo {
    async fn create(&self, test: &str) -> Option<Arc<dyn LeaseTable>> {
        let url = common::url(test)?;
        let (client, options) = common::fresh(&url, &format!("lt_{test}")).await;
        let table = MongoLeaseTable::from_client(client, options)
            .await
            .expect("lease table");
        Some(Arc::new(table))
    }
}

mq_core::lease_table_tests!(Mongo);
