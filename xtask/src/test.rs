//! `cargo xtask test [--backend B]`: the tests, with the service variables set and
//! `MQ_REQUIRE_SERVICES=1`, so a missing service fails instead of skipping.

use anyhow::{Result, bail};

use crate::{cargo, run, services};

/// The `cargo test` arguments that select `backend`'s crates.
fn packages(backend: &str) -> Result<&'static [&'static str]> {
    Ok(match backend {
        "all" => &["--workspace"],
        "memory" => &["-p", "mq-core", "-p", "mq-memory", "-p", "mq-rs"],
        "sql" => &["-p", "mq-sql"],
        "mongo" => &["-p", "mq-mongo"],
        "kinesis" => &["-p", "mq-kinesis"],
        "dlq" => &["-p", "mq-dlq", "-p", "mqctl"],
        other => bail!("unknown backend {other:?}: use memory, sql, mongo, kinesis, dlq or all"),
    })
}

/// Starts the services and runs the tests of `backend` (`all`: the workspace).
pub(crate) fn run_tests(backend: &str) -> Result<()> {
    let packages = packages(backend)?;
    let vars = services::up()?;
    run(cargo()
        .arg("test")
        .args(packages)
        .arg("--all-features")
        .envs(vars)
        .env("MQ_REQUIRE_SERVICES", "1"))
}
