//! The checkpoint-store conformance suite on `MemoryCheckpointStore`.

use std::sync::Arc;

use mq_core::async_trait;
use mq_core::backend::{CheckpointStore, MemoryCheckpointStore};
use mq_core::testkit::checkpoint::CheckpointStoreFactory;

struct Memory;

#[async_trait]
impl CheckpointStoreFactory for Memory {
    async fn create(&self, _test: &str) -> Option<Arc<dyn CheckpointStore>> {
        Some(Arc::new(MemoryCheckpointStore::new()))
    }
}

mq_core::checkpoint_store_tests!(Memory);
