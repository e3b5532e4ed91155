//! The conformance suite on `MongoQueue` (needs `MONGODB_URI`); each case in its own database.

#[path = "common/mongo.rs"]
mod common;

use std::sync::{Arc, Mutex};

use mq_core::backend::QueueStore;
use mq_core::testkit::{QueueFactory, service_url};
use mq_core::{CommonOptions, MessageQueue, async_trait};
use mq_mongo::MongoQueue;

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

#[async_trait]
impl QueueFactory for MongoFactory {
    fn skip_reason(&self) -> Option<String> {
        self.url.as_ref().err().cloned()
    }

    async fn create(&self, test: &str, common: CommonOptions) -> Arc<dyn MessageQueue> {
        let url = self.url.as_ref().expect("skip_reason checked first");
        // MQ_MONGO_CHANGE_STREAM=0 runs the suite with polling only.
        let change_stream = std::env::var("MQ_MONGO_CHANGE_STREAM").as_deref() != Ok("0");
        let q =
            common::fresh_queue(url, test, |o| o.change_stream(change_stream).common(common)).await;
        *self.last.lock().unwrap() = Some(q.clone());
        Arc::new(q)
    }

    async fn store(&self, _test: &str) -> Option<Arc<dyn QueueStore>> {
        // The store of the queue the case just created.
        let store: Arc<dyn QueueStore> = self.last.lock().unwrap().as_ref()?.shared_store();
        Some(store)
    }
}

mq_core::conformance_tests!(MongoFactory::new());

/// Priorities, unique keys, cancel and pause.
mod control {
    use super::MongoFactory;

    mq_core::queue_control_tests!(MongoFactory::new());
}
