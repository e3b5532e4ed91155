//! The conformance suite on `InMemoryQueue`.

use std::sync::{Arc, Mutex};

use mq_core::backend::QueueStore;
use mq_core::testkit::QueueFactory;
use mq_core::{CommonOptions, MessageQueue, async_trait};
use mq_memory::{InMemoryOptions, InMemoryQueue};

/// Every queue has its own store, so each case is isolated by construction.
#[derive(Default)]
struct MemoryFactory {
    last: Mutex<Option<InMemoryQueue>>,
}

#[async_trait]
impl QueueFactory for MemoryFactory {
    async fn create(&self, _test: &str, common: CommonOptions) -> Arc<dyn MessageQueue> {
        let q = InMemoryQueue::new(InMemoryOptions::default().common(common));
        *self.last.lock().unwrap() = Some(q.clone());
        Arc::new(q)
    }

    async fn store(&self, _test: &str) -> Option<Arc<dyn QueueStore>> {
        let last = self.last.lock().unwrap();
        last.as_ref()
            .map(|q| q.shared_store() as Arc<dyn QueueStore>)
    }
}

mq_core::conformance_tests!(MemoryFactory::default());

/// Priorities, unique keys, cancel and pause.
mod control {
    use super::MemoryFactory;

    mq_core::queue_control_tests!(MemoryFactory::default());
}
