//! `cargo xtask services up|status|down`: the servers the tests need.
//!
//! `up` starts what is down; a server it starts itself (not one of the machine's) has its pid
//! written to a file in the temp dir, and `down` stops exactly that process, after checking the
//! pid still belongs to that program.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::provision::{answers, on_path, wait_for};

/// A service the tests may need.
struct Service {
    name: &'static str,
    addr: &'static str,
    /// The variable the tests read, and its value.
    vars: &'static [(&'static str, &'static str)],
    /// How to start it on this kind of machine (Debian packages).
    start: &'static [&'static str],
    /// The program xtask runs, and how to install it when it is missing (empty: the machine
    /// provides it).
    tool: Tool,
    /// True when the start command stays in the foreground: xtask then leaves it running
    /// detached, records its pid, and `services down` stops it.
    foreground: bool,
}

/// A program xtask needs, and the command that installs it when it is not on `PATH`.
pub(crate) struct Tool {
    pub(crate) program: &'static str,
    pub(crate) install: &'static [&'static str],
}

impl Tool {
    /// Installs the program with its install command when it is not on `PATH`. Failure is
    /// printed, not returned: the caller finds out when the program does not start.
    pub(crate) fn ensure_installed(&self) {
        if self.install.is_empty() || on_path(self.program) {
            return;
        }
        println!(
            "{} is not installed: `{}`",
            self.program,
            self.install.join(" ")
        );
        match Command::new(self.install[0])
            .args(&self.install[1..])
            .status()
        {
            Ok(st) if st.success() => {}
            Ok(st) => eprintln!("  install command exited with {st}"),
            Err(e) => eprintln!("  cannot run {}: {e}", self.install[0]),
        }
    }
}

const MACHINE: Tool = Tool {
    program: "",
    install: &[],
};

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
        tool: MACHINE,
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
        tool: MACHINE,
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
        tool: MACHINE,
        foreground: false,
    },
    // The TLS servers of the secure-connection tests: certificates and the data directory come
    // from `services_tls::prepare`; plain TCP is refused by this PostgreSQL. PostgreSQL refuses
    // to run as root, hence `setpriv`; `exec`, so the pid xtask records is the server's own.
    Service {
        name: "postgresql-tls",
        addr: "127.0.0.1:5441",
        vars: &[(
            "MQ_TEST_PG_TLS_URL",
            "postgres://postgres@127.0.0.1:5441/postgres?sslmode=verify-full",
        )],
        start: &[
            "sh",
            "-c",
            "d=\"${TMPDIR:-/tmp}/mq-tls/pg\"; bin=/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -n | tail -1)/bin/postgres; \
             if [ \"$(id -u)\" = 0 ]; then exec setpriv --reuid=postgres --regid=postgres --init-groups -- \"$bin\" -D \"$d\"; else exec \"$bin\" -D \"$d\"; fi",
        ],
        tool: Tool {
            program: "postgres",
            install: &[],
        },
        foreground: true,
    },
    Service {
        name: "mariadb-tls",
        addr: "127.0.0.1:3317",
        vars: &[(
            "MQ_TEST_MYSQL_TLS_URL",
            "mysql://root@127.0.0.1:3317/test?ssl-mode=VERIFY_IDENTITY",
        )],
        start: &[
            "sh",
            "-c",
            "d=\"${TMPDIR:-/tmp}/mq-tls/mariadb\"; user=; [ \"$(id -u)\" = 0 ] && user=--user=mysql; \
             exec /usr/sbin/mariadbd --no-defaults $user --datadir=\"$d\" --socket=\"$d/mariadbd.sock\" \
             --pid-file=\"$d/mariadbd.pid\" --port=3317 --bind-address=127.0.0.1 --skip-log-bin \
             --ssl-cert=\"$d/server.pem\" --ssl-key=\"$d/server.key\" --require-secure-transport=ON \
             --init-file=\"$d/init.sql\"",
        ],
        tool: Tool {
            program: "mariadbd",
            install: &[],
        },
        foreground: true,
    },
    Service {
        name: "redis-tls",
        addr: "127.0.0.1:6390",
        vars: &[
            ("MQ_TEST_REDIS_TLS_URL", "rediss://127.0.0.1:6390"),
            ("MQ_TEST_TLS_CA", "{tls_dir}/ca.pem"),
            ("MQ_TEST_TLS_WRONG_CA", "{tls_dir}/wrong-ca.pem"),
        ],
        start: &[
            "sh",
            "-c",
            "d=\"${TMPDIR:-/tmp}/mq-tls\"; exec redis-server --bind 127.0.0.1 --port 0 --tls-port 6390 \
             --tls-cert-file \"$d/server.pem\" --tls-key-file \"$d/server.key\" --tls-ca-cert-file \"$d/ca.pem\" \
             --tls-auth-clients no --save '' --appendonly no",
        ],
        tool: Tool {
            program: "redis-server",
            install: &[],
        },
        foreground: true,
    },
    // SecantusDB: a MongoDB-compatible server on WiredTiger (GPL: a test tool only, never a
    // dependency), the Rust build: the Python build is too slow for the 10,000-message cases.
    // A one-node replica set, so change streams work. `exec`, so the pid xtask records is the
    // server's own.
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
        tool: Tool {
            program: "secantusd-rs",
            install: &[
                "sh",
                "-c",
                "command -v cmake >/dev/null || (apt-get update -qq && apt-get install -y -qq cmake) && cargo install secantus-mdb --version 0.5.3-beta.196 --locked --ignore-rust-version",
            ],
        },
        foreground: true,
    },
];

/// `value` as one shell word: the URLs hold `&` and `?`, which `eval` would otherwise act on.
fn shell_quoted(value: &str) -> String {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/:@.,_-=+".contains(c))
    {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

/// Where xtask records the pid of a service it started.
fn pid_file(s: &Service) -> PathBuf {
    std::env::temp_dir().join(format!("mq-xtask-{}.pid", s.name))
}

/// True when process `pid` is running `program` (its first argument names it).
fn runs_program(pid: u32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let argv0 = String::from_utf8_lossy(argv0);
        argv0.rsplit('/').next() == Some(program)
    })
}

/// `services status`: which services answer.
pub(crate) fn status() {
    for s in SERVICES {
        let state = if answers(s.addr) { "up" } else { "DOWN" };
        println!("{:<12} {:<16} {state}", s.name, s.addr);
    }
    crate::services_cluster::status();
}

/// `services up`: starts what is down, waits for it, and returns the variables to give the
/// tests (also printed as `export` lines).
pub(crate) fn up() -> Result<Vec<(String, String)>> {
    crate::provision::fresh_machine()?;
    crate::services_tls::prepare()?;
    let mut vars = Vec::new();
    let mut missing = Vec::new();
    for s in SERVICES {
        if !answers(s.addr) {
            start(s);
            // a server that does not come up is reported below with the others
            let _ = wait_for(s.addr);
        }
        if answers(s.addr) {
            for (k, v) in s.vars {
                let v = std::env::var(k).unwrap_or_else(|_| crate::services_tls::expand(v));
                println!("export {k}={}", shell_quoted(&v));
                vars.push(((*k).to_owned(), v));
            }
        } else {
            missing.push(format!("{} ({})", s.name, s.addr));
        }
    }
    match crate::services_cluster::up() {
        Ok((k, v)) => {
            println!("export {k}={}", shell_quoted(&v));
            vars.push((k, v));
        }
        Err(e) => missing.push(format!("redis-cluster ({e:#})")),
    }
    if !missing.is_empty() {
        bail!(
            "required services are not running and could not be started: {}",
            missing.join(", ")
        );
    }
    Ok(vars)
}

/// Starts one service; failures are printed, `up` then reports it as missing.
fn start(s: &Service) {
    s.tool.ensure_installed();
    println!(
        "{} is down on {}: starting it with `{}`",
        s.name,
        s.addr,
        s.start.join(" ")
    );
    let mut cmd = Command::new(s.start[0]);
    cmd.args(&s.start[1..]);
    if !s.foreground {
        match cmd.status() {
            Ok(st) if st.success() => {}
            Ok(st) => eprintln!("  start command exited with {st}"),
            Err(e) => eprintln!("  cannot run {}: {e}", s.start[0]),
        }
        return;
    }
    // Left running after xtask exits; its log goes to a file in the temp dir, its pid to
    // another, for `services down`.
    if let Err(e) = spawn_detached(s, &mut cmd) {
        eprintln!("  cannot start {}: {e:#}", s.name);
    }
}

fn spawn_detached(s: &Service, cmd: &mut Command) -> Result<()> {
    let log = std::env::temp_dir().join(format!("mq-{}.log", s.name));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = cmd
        .stdout(Stdio::null())
        .stderr(log_file)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", s.start[0]))?;
    let pids = pid_file(s);
    std::fs::write(&pids, child.id().to_string())
        .with_context(|| format!("writing {}", pids.display()))?;
    println!(
        "  pid {} (in {}), log in {}",
        child.id(),
        pids.display(),
        log.display()
    );
    Ok(())
}

/// `services down`: stops each service xtask started, by the pid it recorded.
pub(crate) fn down() -> Result<()> {
    for s in SERVICES.iter().filter(|s| s.foreground) {
        stop_recorded(s.name, &pid_file(s), s.tool.program)?;
    }
    crate::services_cluster::down()
}

/// Stops the process whose pid `file` holds, if it still runs `program`, and removes the file.
/// Without the file, nothing was started: nothing is stopped.
pub(crate) fn stop_recorded(name: &str, file: &Path, program: &str) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(file) else {
        println!("{name}: not started by xtask, left alone");
        return Ok(());
    };
    let pid: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} holds {text:?}, not a pid", file.display()))?;
    if runs_program(pid, program) {
        let st = Command::new("kill")
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !st.success() {
            bail!("kill {pid} ({name}) exited with {st}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs_program(pid, program) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if runs_program(pid, program) {
            bail!("{name} (pid {pid}) still runs 10 s after SIGTERM");
        }
        println!("stopped {name} (pid {pid})");
    } else {
        println!("{name}: pid {pid} is no longer {program}, nothing to stop");
    }
    std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> (std::process::Child, PathBuf) {
        let child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        // Until the child has exec'd, its command line is still this test's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !runs_program(child.id(), "sleep") {
            assert!(Instant::now() < deadline, "sleep never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let file = std::env::temp_dir().join(format!("mq-xtask-test-{}.pid", child.id()));
        std::fs::write(&file, child.id().to_string()).expect("write pid file");
        (child, file)
    }

    #[test]
    fn stops_the_recorded_process_when_it_runs_the_program() {
        let (mut child, file) = sleeper();
        // A reaper thread, as the parent of a real service is gone: a zombie is not running.
        let pid = child.id();
        let reaper = std::thread::spawn(move || child.wait());
        stop_recorded("sleeper", &file, "sleep").expect("stop");
        reaper.join().expect("reaper").expect("wait");
        assert!(!runs_program(pid, "sleep"));
        assert!(!file.exists(), "the pid file is removed");
    }

    #[test]
    fn leaves_a_pid_that_runs_another_program() {
        let (mut child, file) = sleeper();
        stop_recorded("other", &file, "secantusd-rs").expect("stop");
        assert!(
            runs_program(child.id(), "sleep"),
            "another program was stopped"
        );
        assert!(!file.exists(), "the stale pid file is removed");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    #[test]
    fn without_a_pid_file_nothing_is_stopped() {
        let file = std::env::temp_dir().join("mq-xtask-test-missing.pid");
        stop_recorded("missing", &file, "sleep").expect("nothing to do");
    }
}
