//! The checkpoint-store conformance suite on `MongoCheckpointStore` (needs `MONGODB_URI`). Each
//! case gets its own database, dropped when the case starts.

#[path = "common/mongo.rs"]
mod common;

use std::sync::Arc;

use mq_core::async_trait;
use mq_core::backend::CheckpointStore;
use mq_core::testkit::checkpoint::CheckpointStoreFactory;
use mq_mongo::MongoCheckpointStore;

struct Mongo;

#[async_trait]
impl CheckpointStoreFactory for Mongo {
    async fn create(&self, test: &str) -> Option<Arc<dyn CheckpointStore>> {
        let url = common::url(test)?;
        let (client, options) = common::fresh(&url, &format!("ck_{test}")).await;
        let store = MongoCheckpointStore::from_client(client, options)
            .await
            .expect("checkpoint store");
        Some(Arc::new(store))
    }
}

mq_core::checkpoint_store_tests!(Mongo);
