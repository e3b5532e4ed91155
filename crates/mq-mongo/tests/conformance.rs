//! The conformance suite on `MongoQueue` (needs `MONGODB_URI`).

use std::sync::{Arc, Mutex};

use mq_core::backend::QueueStore;
use mq_core::testkit::{QueueFactory, service_url};
use mq_core::{CommonOptions, MessageQueue, async_trait};
use mq_mongo::{MongoOptions, MongoQueue};

/// Each case gets its own database, named after the case and dropped when the case starts (a
/// failed case leaves its data for inspection until it runs again).
struct MongoFactory {
    url: Result<String, String>,
    last: Mutex<Option<MongoQueue>>,
}

impl MongoFactory {
    fn new() -> Self {
        MongoFactory {
            url: service_url("MONGODB_URI"),
            last: Mutex::new(None),
        }
    }
}

fn database_for(test: &str) -> String {
    let cleaned: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(58)
        .collect();
    format!("mqt_{cleaned}")
}

#[async_trait]
impl QueueFactory for MongoFactory {
    fn skip_reason(&self) -> Option<String> {
        self.url.as_ref().err().cloned()
    }

    async fn create(&self, test: &str, common: CommonOptions) -> Arc<dyn MessageQueue> {
        let url = self.url.as_ref().expect("skip_reason checked first");
        let db = database_for(test);
        // MQ_MONGO_CHANGE_STREAM=0 runs the suite with polling only.
        let change_stream = std::env::var("MQ_MONGO_CHANGE_STREAM").as_deref() != Ok("0");
        let options = MongoOptions::default()
            .database(&db)
            .change_stream(change_stream);
        let q = MongoQueue::connect(url, options, common)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connect to MONGODB_URI: {e}: {:?}",
                    std::error::Error::source(&e)
                )
            });
        q.store()
            .client()
            .database(&db)
            .drop()
            .await
            .expect("drop the case's database");
        *self.last.lock().unwrap() = Some(q.clone());
        Arc::new(q)
    }

    async fn store(&self, _test: &str) -> Option<Arc<dyn QueueStore>> {
        let last = self.last.lock().unwrap();
        last.as_ref()
            .map(|q| q.shared_store() as Arc<dyn QueueStore>)
    }
}

mq_core::conformance_tests!(MongoFactory::new());
