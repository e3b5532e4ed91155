//! The store conformance suite on MongoDB (or a compatible server), one collection per case.

use std::sync::Arc;

use mq_core::DeadLetterStore;
use mq_core::testkit::dead_letter::{DeadLetterStoreFactory as StoreFactory, table_name};
use mq_core::testkit::service_url;
use mq_dlq::MongoDeadLetterStore;

struct Mongo;

#[async_trait::async_trait]
impl StoreFactory for Mongo {
    fn skip_reason(&self) -> Option<String> {
        service_url("MONGODB_URI").err()
    }
    async fn create(&self, test: &str) -> Arc<dyn DeadLetterStore> {
        let uri = service_url("MONGODB_URI").expect("checked by skip_reason");
        let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
        let collection = table_name(test);
        let store = MongoDeadLetterStore::new(&client, "mq_dlq_test", &collection).expect("store");
        store.collection().drop().await.expect("drop");
        store.migrate().await.expect("migrate");
        Arc::new(store)
    }
}

mq_core::dead_letter_store_tests!(Mongo);
mq_dlq::replay_conformance_tests!(Mongo);
