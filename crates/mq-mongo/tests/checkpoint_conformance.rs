//! The checkpoint-store conformance suite on `MongoCheckpointStore` (needs `MONGODB_URI`). Each
//! case gets its own database, dropped when the case starts.

use std::sync::Arc;

use mq_core::async_trait;
use mq_core::backend::CheckpointStore;
use mq_core::testkit::checkpoint::CheckpointStoreFactory;
use mq_core::testkit::service_url;
use mq_mongo::MongoCheckpointStore;

struct Mongo;

#[async_trait]
impl CheckpointStoreFactory for Mongo {
    async fn create(&self, test: &str) -> Option<Arc<dyn CheckpointStore>> {
        let url = match service_url("MONGODB_URI") {
            Ok(u) => u,
            Err(reason) => {
                eprintln!("skipping {test}: {reason}");
                return None;
            }
        };
        let client = mongodb::Client::with_uri_str(&url).await.unwrap();
        let mut name: String = format!("mqt_ck_{test}")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        name.truncate(60);
        let db = client.database(&name);
        db.drop().await.unwrap();
        Some(Arc::new(
            MongoCheckpointStore::new(db, "checkpoints").await.unwrap(),
        ))
    }
}

mq_core::checkpoint_store_tests!(Mongo);
