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
    for (features, example) in [
        ("sql-sqlite", "quickstart"),
        ("kinesis", "kinesis_quickstart"),
    ] {
        run(cargo().args([
            "run",
            "-q",
            "-p",
            "mq-rs",
            "--features",
            features,
            "--example",
            example,
        ]))?;
    }
    let mut package = cargo();
    package.args(["package", "--workspace", "--no-verify"]);
    for name in private_packages()? {
        package.args(["--exclude", &name]);
    }
    run(&mut package)?;
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

/// The workspace's packages marked `publish = false` (xtask, the integration tests, the
/// benches): `cargo package` has nothing to check in them, and their path dependencies carry no
/// version on purpose.
fn private_packages() -> Result<Vec<String>> {
    let mut out = Vec::new();
    for dir in ["crates", "benches"] {
        for entry in std::fs::read_dir(dir)? {
            out.extend(private_name(&entry?.path().join("Cargo.toml")));
        }
    }
    for manifest in ["xtask/Cargo.toml", "tests/Cargo.toml"] {
        out.extend(private_name(std::path::Path::new(manifest)));
    }
    Ok(out)
}

/// The package name in `manifest` when it says `publish = false`.
fn private_name(manifest: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let private = text.lines().any(|l| l.replace(' ', "") == "publish=false");
    let name = text.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        (key.trim() == "name").then(|| value.trim().trim_matches('"').to_owned())
    })?;
    private.then_some(name)
}
