//! Installing and configuring the servers the tests need on a Debian or Ubuntu machine that has
//! none of them: packages from apt, a PostgreSQL cluster that trusts loopback with a `test`
//! database, MariaDB with a `test` database reachable as `root` over TCP. Elsewhere it prints
//! the steps instead.
//!
//! Every step checks before it changes anything, so running it on a machine that is already set
//! up does nothing.

use std::path::Path;
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What to do by hand where xtask cannot install servers itself.
pub(crate) const MANUAL_STEPS: &str = "\
install PostgreSQL (>= 13), MariaDB (>= 10.6) or MySQL (>= 8.0.1), Redis (>= 6.2) and Prometheus, then:
  PostgreSQL: a `test` database the user `postgres` reaches on 127.0.0.1:5432 without a password
              (pg_hba.conf: `host all all 127.0.0.1/32 trust`), or set MQ_TEST_POSTGRES_URL;
  MariaDB:    `CREATE DATABASE test`, root reachable on 127.0.0.1:3306 without a password, or set
              MQ_TEST_MYSQL_URL;
  Redis:      on 127.0.0.1:6379, or set REDIS_URL.";

/// True on Debian and its derivatives, where apt installs the servers.
pub(crate) fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists()
}

/// Installs `packages` with apt (after one `apt-get update` per run).
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_debian() {
        bail!(
            "cannot install {} on this system; {MANUAL_STEPS}",
            packages.join(", ")
        );
    }
    static UPDATE: Once = Once::new();
    UPDATE.call_once(|| {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    });
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed: {status}", packages.join(" "));
    }
    Ok(())
}

/// True when `program` is an executable file in a `PATH` directory.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Runs `cmd`; its standard output, or an error with its standard error.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The newest PostgreSQL major version installed (`/usr/lib/postgresql/<version>`).
pub(crate) fn postgres_version() -> Result<String> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql)")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
        .pop()
        .map(|v| v.to_string())
        .context("no PostgreSQL version under /usr/lib/postgresql")
}

/// A PostgreSQL cluster `name` on 127.0.0.1:`port` that trusts loopback connections, running,
/// with a `test` database. Installs PostgreSQL first when it is missing.
pub(crate) fn postgres_cluster(name: &str, port: u16) -> Result<()> {
    if !on_path("pg_createcluster") {
        apt_install(&["postgresql", "postgresql-client"])?;
    }
    let version = postgres_version()?;
    let port_text = port.to_string();
    if !Path::new(&format!("/etc/postgresql/{version}/{name}")).exists() {
        output(Command::new("pg_createcluster").args([
            &version,
            name,
            "-p",
            &port_text,
            "--",
            "--auth-local=trust",
            "--auth-host=trust",
        ]))?;
    }
    let running = Command::new("pg_ctlcluster")
        .args([&version, name, "status"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !running {
        output(Command::new("pg_ctlcluster").args([
            "--skip-systemctl-redirect",
            &version,
            name,
            "start",
        ]))?;
    }
    wait_for(&format!("127.0.0.1:{port}"))?;
    let psql = |sql: &str| {
        output(Command::new("psql").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port_text,
            "-U",
            "postgres",
            "-tAc",
            sql,
        ]))
    };
    if psql("SELECT 1 FROM pg_database WHERE datname = 'test'")?.trim() != "1" {
        psql("CREATE DATABASE test")?;
    }
    Ok(())
}

/// Stops and deletes the PostgreSQL cluster `name` (the tests of [`postgres_cluster`] clean up
/// with it).
#[cfg(test)]
pub(crate) fn drop_postgres_cluster(name: &str) -> Result<()> {
    let version = postgres_version()?;
    if Path::new(&format!("/etc/postgresql/{version}/{name}")).exists() {
        output(Command::new("pg_dropcluster").args(["--stop", &version, name]))?;
    }
    Ok(())
}

/// MariaDB installed and running, with a `test` database and `root` reachable over TCP without
/// a password (the machine's own socket login as root does the set-up).
pub(crate) fn mariadb() -> Result<()> {
    if !Path::new("/usr/sbin/mariadbd").exists() {
        apt_install(&["mariadb-server", "mariadb-client"])?;
    }
    if !answers("127.0.0.1:3306") {
        output(Command::new("start-stop-daemon").args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
        ]))?;
        wait_for("127.0.0.1:3306")?;
    }
    let tcp_root_works = Command::new("mariadb")
        .args(["-h", "127.0.0.1", "-P", "3306", "-uroot", "-e", "SELECT 1"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut setup = String::from("CREATE DATABASE IF NOT EXISTS test;");
    if !tcp_root_works {
        setup.push_str(
            "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');\
             CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';\
             GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;",
        );
    }
    output(Command::new("mariadb").args(["-uroot", "-e", &setup]))?;
    Ok(())
}

/// What a fresh machine lacks, installed and configured: PostgreSQL and MariaDB when they are
/// not installed at all (a machine that has them keeps its own set-up), Redis and Prometheus
/// when their programs are missing.
pub(crate) fn fresh_machine() -> Result<()> {
    if !on_path("pg_ctlcluster") && !answers("127.0.0.1:5432") {
        println!("PostgreSQL is not installed: installing it with a `main` cluster on 5432");
        postgres_cluster("main", 5432)?;
    }
    if !Path::new("/usr/sbin/mariadbd").exists() && !answers("127.0.0.1:3306") {
        println!("MariaDB is not installed: installing it");
        mariadb()?;
    }
    program("redis-server", "redis-server")?;
    program("prometheus", "prometheus")
}

/// Installs `package` when `program` is not on `PATH`.
pub(crate) fn program(program: &str, package: &str) -> Result<()> {
    if on_path(program) {
        return Ok(());
    }
    apt_install(&[package])
}

/// True when something accepts a TCP connection on `addr` within half a second.
pub(crate) fn answers(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>().ok().is_some_and(|a| {
        std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok()
    })
}

/// Waits up to 60 s for `addr` to answer.
pub(crate) fn wait_for(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers(addr) {
        if Instant::now() > deadline {
            bail!("nothing answers on {addr} after 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code path a fresh machine takes, run for real on a second cluster on a spare port:
    /// created from nothing, started, given its `test` database; a second run changes nothing.
    #[test]
    fn a_postgres_cluster_is_created_from_scratch() {
        if !is_debian() || !on_path("pg_createcluster") {
            let reason = "needs Debian's postgresql-common (pg_createcluster)";
            assert!(
                std::env::var("MQ_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "required: {reason}"
            );
            return eprintln!("skipping: {reason}");
        }
        let (name, port) = ("mq_xtask_check", 5439);
        drop_postgres_cluster(name).expect("clean start");
        postgres_cluster(name, port).expect("created");
        postgres_cluster(name, port).expect("second run is a no-op");
        let tables = output(Command::new("psql").args([
            "-h",
            "127.0.0.1",
            "-p",
            "5439",
            "-U",
            "postgres",
            "-d",
            "test",
            "-tAc",
            "SELECT current_database()",
        ]))
        .expect("connect to the new cluster's test database");
        assert_eq!(tables.trim(), "test");
        drop_postgres_cluster(name).expect("dropped");
        assert!(!answers("127.0.0.1:5439"), "the cluster still answers");
    }
}
