//! The store conformance suite on the in-memory store.

use std::sync::Arc;

use mq_core::DeadLetterStore;
use mq_core::testkit::dead_letter::DeadLetterStoreFactory as StoreFactory;
use mq_memory::MemoryDeadLetterStore;

struct Memory;

#[async_trait::async_trait]
impl StoreFactory for Memory {
    async fn create(&self, _test: &str) -> Arc<dyn DeadLetterStore> {
        Arc::new(MemoryDeadLetterStore::new())
    }
}

mq_core::dead_letter_store_tests!(Memory);
mq_dlq::replay_conformance_tests!(Memory);
