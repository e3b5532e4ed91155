//! The mq-core conformance suite on Postgres.

#[path = "support/factory.rs"]
mod support;

use support::{Db, Factory};

mq_core::conformance_tests!(Factory::new(Db::Postgres, "cp"));
