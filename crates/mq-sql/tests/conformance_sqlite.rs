//! The mq-core conformance suite on Sqlite.

#[path = "support/factory.rs"]
mod support;

use support::{Db, Factory};

mq_core::conformance_tests!(Factory::new(Db::Sqlite, "cs"));
