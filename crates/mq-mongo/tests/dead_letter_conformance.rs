//! The dead-letter store suite and the replay suite on `MongoDeadLetterStore` (needs
//! `MONGODB_URI`); each case in its own collection.

use std::sync::Arc;

use mq_core::testkit::dead_letter::{DeadLetterStoreFactory, table_name};
use mq_core::testkit::service_url;
use mq_core::{DeadLetterStore, async_trait};
use mq_mongo::mongodb::Client;
use mq_mongo::{MongoDeadLetterStore, MongoOptions};

struct Mongo;

#[async_trait]
impl DeadLetterStoreFactory for Mongo {
    fn skip_reason(&self) -> Option<String> {
        service_url("MONGODB_URI").err()
    }

    async fn create(&self, test: &str) -> Arc<dyn DeadLetterStore> {
        let uri = service_url("MONGODB_URI").expect("checked by skip_reason");
        let client = Client::with_uri_str(&uri).await.expect("client");
        let options = MongoOptions::default()
            .database("mqt_dead_letters")
            .dead_letter_collection(table_name(test));
        let coll = client
            .database(options.get_database())
            .collection::<mq_mongo::mongodb::bson::Document>(options.get_dead_letter_collection());
        coll.drop().await.expect("drop");
        let store = MongoDeadLetterStore::from_client(client, options)
            .await
            .expect("store");
        Arc::new(store)
    }
}

mq_core::dead_letter_store_tests!(Mongo);
mq_dlq::replay_conformance_tests!(Mongo);
