//! `cargo xtask bench <name>`: one convention for every benchmark.
//!
//! Each runs in release mode and prints its targets one a line, as
//! `target <what>: <measured> <unit> (goal <= or >= <limit>) met|NOT met`.

use anyhow::{Result, bail};

use crate::{cargo, run, services};

/// A benchmark: the `cargo run` arguments that select it, and whether it needs the services.
struct Bench {
    name: &'static str,
    args: &'static [&'static str],
    needs_services: bool,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "memory",
        args: &["-p", "mq-bench-memory"],
        needs_services: false,
    },
    Bench {
        name: "sql",
        args: &["-p", "mq-bench-sql"],
        needs_services: true,
    },
    Bench {
        name: "mongo",
        args: &["-p", "mq-bench-mongo"],
        needs_services: true,
    },
    // On an emulator started inside the bench process, so no service; an example of the crate,
    // as it drives the crate's internals.
    Bench {
        name: "kinesis",
        args: &[
            "-p",
            "mq-kinesis",
            "--all-features",
            "--example",
            "bench_kinesis",
        ],
        needs_services: false,
    },
    // A simulated fleet on a fake Kinesis, with its leases in a redis-server of its own started
    // by the bench, then in a PostgreSQL lease table.
    Bench {
        name: "fleet",
        args: &[
            "-p",
            "mq-kinesis",
            "--all-features",
            "--example",
            "bench_fleet",
        ],
        needs_services: true,
    },
];

/// Runs the benchmark called `name`.
pub(crate) fn run_bench(name: &str) -> Result<()> {
    let Some(bench) = BENCHES.iter().find(|b| b.name == name) else {
        let names: Vec<&str> = BENCHES.iter().map(|b| b.name).collect();
        bail!("unknown benchmark {name:?}: use {}", names.join(", "));
    };
    let vars = if bench.needs_services {
        services::up()?
    } else {
        Vec::new()
    };
    run(cargo()
        .args(["run", "--release"])
        .args(bench.args)
        .envs(vars))
}
