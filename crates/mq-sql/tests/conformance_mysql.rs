//! The mq-core conformance suite on MySql.

#[path = "support/factory.rs"]
mod support;

use support::{Db, Factory};

mq_core::conformance_tests!(Factory::new(Db::MySql, "cm"));

/// The same suite with acknowledged rows deleted instead of kept.
mod delete_on_ack {
    use super::support::{Db, Factory};

    mq_core::conformance_tests!(Factory::deleting_acked(Db::MySql, "cdm"));
}
