//! What the TLS servers of `services up` need before they start: certificates made with the
//! `openssl` command (a test CA, a server certificate it signed for `localhost` and 127.0.0.1,
//! and a second, unrelated CA for the "wrong CA" tests) and PostgreSQL and MariaDB data
//! directories of their own, all in one state directory under the temp dir.
//!
//! Each step checks before it changes anything: a second `services up` reuses what is there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

/// The placeholder in a service's variables that stands for [`state_dir`].
pub(crate) const STATE_DIR_VAR: &str = "{tls_dir}";

/// Where the certificates and the TLS PostgreSQL cluster live.
pub(crate) fn state_dir() -> PathBuf {
    std::env::temp_dir().join("mq-tls")
}

/// `value` with [`STATE_DIR_VAR`] replaced by the state directory.
pub(crate) fn expand(value: &str) -> String {
    value.replace(STATE_DIR_VAR, &state_dir().display().to_string())
}

/// The certificates, and the data directories of the TLS PostgreSQL and MariaDB.
pub(crate) fn prepare() -> Result<()> {
    let dir = state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    certificates(&dir)?;
    postgres_data(&dir)?;
    mariadb_data(&dir)
}

/// Runs `cmd`, failing with its standard error when it fails.
fn run_quiet(cmd: &mut Command) -> Result<()> {
    crate::provision::output(cmd).map(drop)
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    run_quiet(Command::new("openssl").current_dir(dir).args(args))
}

/// A self-signed CA `name`.pem / `name`.key.
fn ca(dir: &Path, name: &str, subject: &str) -> Result<()> {
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", subject,
            "-keyout", &key, "-out", &cert,
        ],
    )
}

fn certificates(dir: &Path) -> Result<()> {
    if dir.join("server.pem").exists() && dir.join("wrong-ca.pem").exists() {
        return Ok(());
    }
    crate::provision::program("openssl", "openssl")?;
    ca(dir, "ca", "/CN=mq test CA")?;
    ca(dir, "wrong-ca", "/CN=mq unrelated CA")?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         basicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    )
}

/// True when this process runs as root: PostgreSQL and MariaDB refuse to, so their commands then
/// run as their own users.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` of the newest installed PostgreSQL, run as `postgres` when this process is root.
fn postgres_command(program: &str) -> Result<Command> {
    let bin = format!(
        "/usr/lib/postgresql/{}/bin/{program}",
        crate::provision::postgres_version()?
    );
    Ok(if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
            &bin,
        ]);
        cmd
    } else {
        Command::new(bin)
    })
}

/// Port of the TLS PostgreSQL cluster (the plain one is on 5432).
pub(crate) const POSTGRES_TLS_PORT: u16 = 5441;

/// A data directory that only accepts TLS connections on 127.0.0.1:[`POSTGRES_TLS_PORT`], with
/// the server certificate, owned by `postgres` when run as root.
fn postgres_data(dir: &Path) -> Result<()> {
    let data = dir.join("pg");
    if data.join("PG_VERSION").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&data)?;
    if is_root() {
        run_quiet(Command::new("chown").arg("postgres:postgres").arg(&data))?;
    }
    run_quiet(postgres_command("initdb")?.args([
        "-D",
        &data.display().to_string(),
        "-U",
        "postgres",
        "--auth=trust",
    ]))?;
    for file in ["server.pem", "server.key"] {
        std::fs::copy(dir.join(file), data.join(file))?;
    }
    // Plain TCP is refused: a test that connects must have negotiated TLS.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
    )?;
    let conf = format!(
        "\nport = {POSTGRES_TLS_PORT}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
         ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n\
         fsync = off\nmax_connections = 50\n",
        data.display()
    );
    let mut text = std::fs::read_to_string(data.join("postgresql.conf"))?;
    text.push_str(&conf);
    std::fs::write(data.join("postgresql.conf"), text)?;
    std::fs::set_permissions(
        data.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    if is_root() {
        run_quiet(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data),
        )?;
    }
    Ok(())
}

/// A MariaDB data directory with the server certificate and an init file run at each start
/// (the `test` database, `root` over TCP without a password: a test server on loopback),
/// owned by `mysql` when run as root. The server itself is started with
/// `--require-secure-transport`, so plain TCP is refused.
fn mariadb_data(dir: &Path) -> Result<()> {
    let data = dir.join("mariadb");
    if data.join("mysql").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&data)?;
    for file in ["server.pem", "server.key"] {
        std::fs::copy(dir.join(file), data.join(file))?;
    }
    std::fs::write(
        data.join("init.sql"),
        "CREATE DATABASE IF NOT EXISTS test;\n\
         CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';\n\
         GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n",
    )?;
    let mut install = Command::new("mariadb-install-db");
    install.args([
        "--no-defaults",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
    ]);
    install.arg(format!("--datadir={}", data.display()));
    if is_root() {
        install.arg("--user=mysql");
        run_quiet(Command::new("chown").args(["-R", "mysql:mysql"]).arg(&data))?;
    }
    run_quiet(&mut install)?;
    if is_root() {
        run_quiet(Command::new("chown").args(["-R", "mysql:mysql"]).arg(&data))?;
    }
    Ok(())
}
