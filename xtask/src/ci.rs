//! `cargo xtask ci`: every check CI runs, in order, stopping at the first failure.

use anyhow::Result;

use crate::services::Tool;
use crate::{cargo, run, test};

/// Checks each crate's features one at a time (each feature alone, no features, the defaults).
const CARGO_HACK: Tool = Tool {
    program: "cargo-hack",
    install: &["cargo", "install", "cargo-hack", "--locked"],
};

/// fmt, clippy, docs, each feature alone, all tests, the README's quickstarts, packaging.
pub(crate) fn run_ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    each_feature(&[])?;
    test::run_tests("all")?;
    // The README's quickstarts must keep working as written.
    run(cargo().args([
        "run",
        "-q",
        "-p",
        "mq-rs",
        "--features",
        "sql-sqlite",
        "--example",
        "quickstart",
    ]))?;
    run(cargo().args([
        "run",
        "-q",
        "-p",
        "mq-rs",
        "--features",
        "kinesis",
        "--example",
        "kinesis_quickstart",
    ]))?;
    run(cargo().args([
        "package",
        "--workspace",
        "--no-verify",
        "--exclude",
        "xtask",
        "--exclude",
        "mq-integration-tests",
    ]))?;
    println!("ci: all checks passed");
    Ok(())
}

/// Builds every publishable crate (or only `packages`) alone with each of its features, and
/// without dev-dependencies: a feature that misses a forward or an optional dependency
/// compiles under `--all-features` and in the workspace, and breaks only the users who pick
/// it. The facade's backend features are checked this way too.
pub(crate) fn each_feature(packages: &[&str]) -> Result<()> {
    CARGO_HACK.ensure_installed();
    let mut cmd = cargo();
    cmd.args(["hack", "check", "--each-feature", "--no-dev-deps"]);
    if packages.is_empty() {
        cmd.args(["--workspace", "--ignore-private"]);
    } else {
        for p in packages {
            cmd.args(["-p", p]);
        }
    }
    run(&mut cmd)
}
