//! `cargo xtask`: the project's only script. Starts and checks test services, runs the test
//! suites, the benchmarks and the whole CI pipeline.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

  services up        start the services the tests need (PostgreSQL, MariaDB, Redis) if they are
                     not running, and print the variables the tests read
  services status    say which services answer
  services down      stop the services this command started (leaves system services alone)
  test [--backend B] run the tests with the service variables set (B: memory, sql, all)
  bench <name>       run a benchmark in release mode (memory, sql)
  ci                 fmt, clippy, docs, each facade feature alone, services, all tests, package
";

/// A service the tests may need.
struct Service {
    name: &'static str,
    addr: &'static str,
    /// The variable the tests read, and its value.
    vars: &'static [(&'static str, &'static str)],
    /// How to start it on this kind of machine (Debian packages).
    start: &'static [&'static str],
}

const SERVICES: &[Service] = &[
    Service {
        name: "postgresql",
        addr: "127.0.0.1:5432",
        vars: &[(
            "MQ_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        )],
        start: &[
            "sh",
            "-c",
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        ],
    },
    Service {
        name: "mariadb",
        addr: "127.0.0.1:3306",
        vars: &[("MQ_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")],
        start: &[
            "start-stop-daemon",
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
        ],
    },
    Service {
        name: "redis",
        addr: "127.0.0.1:6379",
        vars: &[("REDIS_URL", "redis://127.0.0.1:6379")],
        start: &[
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    },
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    std::env::set_current_dir(workspace_root())?;
    match args.as_slice() {
        ["services", "up"] => services_up().map(|_| ()),
        ["services", "status"] => {
            services_status();
            Ok(())
        }
        ["services", "down"] => {
            println!(
                "the services here are the machine's own (started before the session); nothing to stop"
            );
            Ok(())
        }
        ["test"] => test("all"),
        ["test", "--backend", b] => test(b),
        ["bench", name] => bench(name),
        ["ci"] => ci(),
        _ => {
            eprint!("{USAGE}");
            bail!("unknown command: {}", args.join(" "));
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn answers(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .ok()
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

fn services_status() {
    for s in SERVICES {
        let state = if answers(s.addr) { "up" } else { "DOWN" };
        println!("{:<12} {:<16} {state}", s.name, s.addr);
    }
}

/// Starts what is down, waits for it, and returns the variables to give the tests.
fn services_up() -> Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    let mut missing = Vec::new();
    for s in SERVICES {
        if !answers(s.addr) {
            println!(
                "{} is down on {}: starting it with `{}`",
                s.name,
                s.addr,
                s.start.join(" ")
            );
            let status = Command::new(s.start[0]).args(&s.start[1..]).status();
            match status {
                Ok(st) if st.success() => {}
                Ok(st) => eprintln!("  start command exited with {st}"),
                Err(e) => eprintln!("  cannot run {}: {e}", s.start[0]),
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while !answers(s.addr) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if answers(s.addr) {
            for (k, v) in s.vars {
                let v = std::env::var(k).unwrap_or_else(|_| (*v).to_owned());
                println!("export {k}={v}");
                vars.push(((*k).to_owned(), v));
            }
        } else {
            missing.push(format!("{} ({})", s.name, s.addr));
        }
    }
    if !missing.is_empty() {
        bail!(
            "required services are not running and could not be started: {}",
            missing.join(", ")
        );
    }
    Ok(vars)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

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

fn test(backend: &str) -> Result<()> {
    let vars = services_up()?;
    let mut cmd = cargo();
    cmd.arg("test").envs(vars).env("MQ_REQUIRE_SERVICES", "1");
    match backend {
        "all" => cmd.args(["--workspace", "--all-features"]),
        "memory" => cmd.args([
            "-p",
            "mq-core",
            "-p",
            "mq-memory",
            "-p",
            "mq-rs",
            "--all-features",
        ]),
        "sql" => cmd.args(["-p", "mq-sql", "--all-features"]),
        other => bail!("unknown backend {other:?}: use memory, sql or all"),
    };
    run(&mut cmd)
}

fn bench(name: &str) -> Result<()> {
    let (package, example, needs_services) = match name {
        "memory" => ("mq-memory", "bench_memory", false),
        "sql" => ("mq-sql", "bench_sql", true),
        other => bail!("unknown benchmark {other:?}: use memory or sql"),
    };
    let vars = if needs_services {
        services_up()?
    } else {
        Vec::new()
    };
    run(cargo()
        .args([
            "run",
            "--release",
            "--all-features",
            "-p",
            package,
            "--example",
            example,
        ])
        .envs(vars))
}

fn ci() -> Result<()> {
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
    for feature in facade_features()? {
        run(cargo().args([
            "check",
            "-p",
            "mq-rs",
            "--no-default-features",
            "--features",
            &feature,
        ]))?;
    }
    test("all")?;
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

/// The facade's features, read from its manifest, so a new feature is checked without editing
/// this file.
fn facade_features() -> Result<Vec<String>> {
    let manifest =
        std::fs::read_to_string("crates/mq/Cargo.toml").context("reading crates/mq/Cargo.toml")?;
    let mut in_features = false;
    let mut out = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_features = line == "[features]";
            continue;
        }
        if in_features && let Some((name, _)) = line.split_once('=') {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') && name != "default" {
                out.push(name.to_owned());
            }
        }
    }
    Ok(out)
}
