//! The store suite and the replay suite on the in-memory store.

use std::sync::Arc;

use mq_core::testkit::dead_letter::DeadLetterStoreFactory;
use mq_core::{DeadLetterStore, async_trait};
use mq_memory::MemoryDeadLetterStore;

struct Memory;

#[async_trait]
impl DeadLetterStoreFactory for Memory {
    async fn create(&self, _test: &str) -> Arc<dyn DeadLetterStore> {
        Arc::new(MemoryDeadLetterStore::new())
    }
}

mq_core::dead_letter_store_tests!(Memory);
mq_dlq::replay_conformance_tests!(Memory);
