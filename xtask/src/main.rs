//! `cargo xtask`: the project's only script. Starts and checks test services, runs the test
//! suites, the benchmarks and the whole CI pipeline.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

  services up        start the services the tests need (PostgreSQL, MariaDB, Redis, and a
                     MongoDB-compatible server, built with cargo install if missing) when they
                     are not running, and print the variables the tests read
  services status    say which services answer
  services down      stop the servers xtask started itself (the machine's services stay)
  test [--backend B] run the tests with the service variables set
                     (B: memory, sql, mongo, kinesis, all)
  bench <name>       run a benchmark in release mode (memory, sql, mongo, kinesis)
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
    /// The program that must be on PATH, and how to install it when it is missing (empty: the
    /// machine provides it).
    program: &'static str,
    install: &'static [&'static str],
    /// True when the start command stays in the foreground (it is then left running detached).
    foreground: bool,
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
        program: "",
        install: &[],
        foreground: false,
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
        program: "",
        install: &[],
        foreground: false,
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
        program: "",
        install: &[],
        foreground: false,
    },
    // SecantusDB: a MongoDB-compatible server on WiredTiger (GPL: a test tool only, never a
    // dependency), the Rust build: the Python build is too slow for the 10,000-message cases.
    // A one-node replica set, so change streams work.
    Service {
        name: "mongodb",
        addr: "127.0.0.1:27019",
        vars: &[(
            "MONGODB_URI",
            "mongodb://127.0.0.1:27019/?directConnection=true",
        )],
        start: &[
            "sh",
            "-c",
            "exec secantusd-rs --host 127.0.0.1 --port 27019 --storage-path \"${TMPDIR:-/tmp}/mq-secantus\" --log-level WARNING --cache-size 1G",
        ],
        program: "secantusd-rs",
        install: &[
            "sh",
            "-c",
            "command -v cmake >/dev/null || (apt-get update -qq && apt-get install -y -qq cmake) && cargo install secantus-mdb --version 0.5.3-beta.196 --locked --ignore-rust-version",
        ],
        foreground: true,
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
            // Only what xtask itself starts in the foreground; the machine's own services stay.
            for s in SERVICES.iter().filter(|s| s.foreground) {
                let port = s.addr.rsplit(':').next().unwrap_or_default();
                let pattern = format!("{} .*--port {port}", s.program);
                let _ = Command::new("pkill").args(["-f", &pattern]).status();
                println!("stopped {} (if it ran)", s.name);
            }
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

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
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
            if !s.install.is_empty() && !on_path(s.program) {
                println!("{} is not installed: `{}`", s.name, s.install.join(" "));
                match Command::new(s.install[0]).args(&s.install[1..]).status() {
                    Ok(st) if st.success() => {}
                    Ok(st) => eprintln!("  install command exited with {st}"),
                    Err(e) => eprintln!("  cannot run {}: {e}", s.install[0]),
                }
            }
            println!(
                "{} is down on {}: starting it with `{}`",
                s.name,
                s.addr,
                s.start.join(" ")
            );
            let mut cmd = Command::new(s.start[0]);
            cmd.args(&s.start[1..]);
            if s.foreground {
                // Left running after xtask exits; its log goes to a file in the temp dir.
                let log = std::env::temp_dir().join(format!("mq-{}.log", s.name));
                match std::fs::File::create(&log) {
                    Ok(f) => {
                        cmd.stdout(Stdio::null()).stderr(f).stdin(Stdio::null());
                        if let Err(e) = cmd.spawn() {
                            eprintln!("  cannot run {}: {e}", s.start[0]);
                        }
                    }
                    Err(e) => eprintln!("  cannot create {}: {e}", log.display()),
                }
            } else {
                match cmd.status() {
                    Ok(st) if st.success() => {}
                    Ok(st) => eprintln!("  start command exited with {st}"),
                    Err(e) => eprintln!("  cannot run {}: {e}", s.start[0]),
                }
            }
            let deadline = Instant::now() + Duration::from_secs(60);
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
        "mongo" => cmd.args(["-p", "mq-mongo", "--all-features"]),
        "kinesis" => cmd.args(["-p", "mq-kinesis", "--all-features"]),
        "dlq" => cmd.args(["-p", "mq-dlq", "-p", "mqctl", "--all-features"]),
        other => bail!("unknown backend {other:?}: use memory, sql, mongo, kinesis, dlq or all"),
    };
    run(&mut cmd)
}

fn bench(name: &str) -> Result<()> {
    // (package, example; None = the package's binary, services needed)
    let (package, example, needs_services) = match name {
        "memory" => ("mq-memory", Some("bench_memory"), false),
        "sql" => ("mq-bench-sql", None, true),
        "mongo" => ("mq-mongo", Some("bench_mongo"), true),
        "kinesis" => ("mq-kinesis", Some("bench_kinesis"), true),
        other => bail!("unknown benchmark {other:?}: use memory, sql, mongo or kinesis"),
    };
    let vars = if needs_services {
        services_up()?
    } else {
        Vec::new()
    };
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-p", package]);
    if let Some(example) = example {
        cmd.args(["--all-features", "--example", example]);
    }
    run(cmd.envs(vars))
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
