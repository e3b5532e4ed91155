//! The store conformance suite on the in-memory store.

use std::sync::Arc;

use mq_core::DeadLetterStore;
use mq_dlq::testkit::StoreFactory;
use mq_memory::MemoryDeadLetterStore;

struct Memory;

#[async_trait::async_trait]
impl StoreFactory for Memory {
    async fn create(&self, _test: &str) -> Arc<dyn DeadLetterStore> {
        Arc::new(MemoryDeadLetterStore::new())
    }
}

mq_dlq::store_conformance_tests!(Memory);
