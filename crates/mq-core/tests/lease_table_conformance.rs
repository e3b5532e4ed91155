//! The lease-table conformance suite on `MemoryLeaseTable`.

use std::sync::Arc;

use mq_core::async_trait;
use mq_core::backend::{LeaseTable, MemoryLeaseTable};
use mq_core::testkit::lease_table::LeaseTableFactory;

struct Memory;

#[async_trait]
impl LeaseTableFactory for Memory {
    async fn create(&self, _test: &str) -> Option<Arc<dyn LeaseTable>> {
        Some(Arc::new(MemoryLeaseTable::new()))
    }
}

mq_core::lease_table_tests!(Memory);
