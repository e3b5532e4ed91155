//! `cargo xtask`: the project's only script. Starts and checks test services, runs the test
//! suites, the benchmarks and the whole CI pipeline.
//!
//! One module per command: [`services`], [`test`](mod@test), [`bench`](mod@bench), [`ci`]; this file dispatches and
//! holds the helpers they share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod bench;
mod ci;
mod provision;
mod services;
mod services_cluster;
mod services_tls;
mod test;

const USAGE: &str = "\
usage: cargo xtask <command>

  services up        start the services the tests need (PostgreSQL, MariaDB, Redis, and a
                     MongoDB-compatible server, built with cargo install if missing; a TLS
                     PostgreSQL, MariaDB and Redis with certificates made by openssl; a 3-node
                     Redis Cluster on ports 7101-7103; on a Debian
                     machine without them, PostgreSQL, MariaDB, Redis and Prometheus are
                     installed with apt and configured for the tests first) when they
                     are not running, and print the variables the tests read
  services status    say which services answer
  services down      stop the servers xtask started itself (by the pid it recorded; the
                     machine's services stay)
  test [--backend B] run the tests with the service variables set
                     (B: memory, sql, mongo, kinesis, dlq, all)
  bench <name>       run a benchmark in release mode (memory, sql, mongo, kinesis); each prints
                     its targets as `target <what>: <measured> <unit> (goal <= or >= <limit>)
                     met|NOT met`
  features [P...]    build every publishable crate (or packages P) alone with each of its
                     features, without dev-dependencies (the step of ci, with cargo-hack)
  ci                 fmt, clippy, docs, features, services, all tests, package
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    std::env::set_current_dir(workspace_root())?;
    match args.as_slice() {
        ["services", "up"] => services::up().map(|_| ()),
        ["services", "status"] => {
            services::status();
            Ok(())
        }
        ["services", "down"] => services::down(),
        ["test"] => test::run_tests("all"),
        ["test", "--backend", b] => test::run_tests(b),
        ["bench", name] => bench::run_bench(name),
        ["features", packages @ ..] => ci::each_feature(packages),
        ["ci"] => ci::run_ci(),
        _ => {
            eprint!("{USAGE}");
            bail!("unknown command: {}", args.join(" "));
        }
    }
}

fn workspace_root() -> PathBuf {
    // From the working directory, not from where this binary was compiled: with a target
    // directory shared between clones, the xtask binary may have been built from another one.
    let start = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|manifest| manifest.contains("[workspace]"))
        })
        .map(Path::to_path_buf)
        .unwrap_or(start)
}

/// `cargo`, the one that runs xtask.
fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs `cmd`, printing it and how long it took; fails when it fails.
fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {cmd:?}");
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    println!("  ({:.1?})", started.elapsed());
    if !status.success() {
        bail!("command failed with {status}: {cmd:?}");
    }
    Ok(())
}
