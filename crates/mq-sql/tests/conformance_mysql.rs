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

/// Priorities, unique keys, cancel and pause.
mod control {
    use super::support::{Db, Factory};

    mq_core::queue_control_tests!(Factory::new(Db::MySql, "ccm"));

    /// The same with acknowledged rows deleted (a key's window keeps its row).
    mod delete_on_ack {
        use super::super::support::{Db, Factory};

        mq_core::queue_control_tests!(Factory::deleting_acked(Db::MySql, "ccdm"));
    }
}
