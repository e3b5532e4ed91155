//! The mq-core conformance suite on Postgres.

#[path = "support/factory.rs"]
mod support;

use support::{Db, Factory};

mq_core::conformance_tests!(Factory::new(Db::Postgres, "cp"));

/// The same suite with acknowledged rows deleted instead of kept.
mod delete_on_ack {
    use super::support::{Db, Factory};

    mq_core::conformance_tests!(Factory::deleting_acked(Db::Postgres, "cdp"));
}
