//! The 3-node Redis Cluster of the lease-store tests: three `redis-server --cluster-enabled yes`
//! on fixed loopback ports, joined with `redis-cli --cluster create`, their data and node files
//! in a directory of their own under the temp dir, their pids recorded for `services down`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::provision::{answers, wait_for};

/// The nodes' ports (their cluster bus is 10,000 above each).
const PORTS: [u16; 3] = [7101, 7102, 7103];

/// The variable the tests read.
pub(crate) const VAR: &str = "MQ_TEST_REDIS_CLUSTER_URL";

const NAME: &str = "redis-cluster";

/// The URL of the cluster: the first node, with the others as seed nodes.
fn url() -> String {
    let mut url = format!("redis-cluster://127.0.0.1:{}", PORTS[0]);
    for (i, p) in PORTS[1..].iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&format!("node=127.0.0.1:{p}"));
    }
    url
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Where the nodes keep their node files and logs.
fn dir() -> PathBuf {
    std::env::temp_dir().join("mq-redis-cluster")
}

/// Where xtask records the pid of the node on `port`.
pub(crate) fn pid_file(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("mq-xtask-{NAME}-{port}.pid"))
}

/// True when the node on `port` reports the cluster as healthy.
fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok"))
}

/// `services status`: one line for the cluster.
pub(crate) fn status() {
    let up = PORTS.iter().all(|p| answers(&addr(*p)));
    let state = match (up, up && PORTS.iter().all(|p| cluster_ok(*p))) {
        (true, true) => "up",
        (true, false) => "DOWN (nodes answer, cluster not ok)",
        _ => "DOWN",
    };
    println!(
        "{NAME:<12} {:<16} {state}",
        format!("127.0.0.1:{}-{}", PORTS[0], PORTS[2])
    );
}

/// `services up`: starts the nodes that are down and forms the cluster when it is not formed;
/// returns the variable to give the tests.
pub(crate) fn up() -> Result<(String, String)> {
    if !PORTS.iter().all(|p| answers(&addr(*p)) && cluster_ok(*p)) {
        start()?;
    }
    Ok((VAR.to_owned(), url()))
}

fn start() -> Result<()> {
    let down: Vec<u16> = PORTS
        .iter()
        .copied()
        .filter(|p| !answers(&addr(*p)))
        .collect();
    if down.len() < PORTS.len() && !down.is_empty() {
        bail!(
            "{NAME}: nodes {down:?} are down and the others run; `cargo xtask services down` and `up` again to start a fresh cluster"
        );
    }
    let dir = dir();
    if !down.is_empty() {
        // a fresh cluster: node files of an earlier one would make the nodes wait for peers
        // that are gone
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        println!(
            "{NAME} is down: starting 3 nodes on ports {PORTS:?} in {}",
            dir.display()
        );
        for port in &down {
            spawn_node(*port, &dir)?;
        }
        for port in &down {
            wait_for(&addr(*port))?;
        }
    }
    if !PORTS.iter().all(|p| cluster_ok(*p)) {
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        create.args(PORTS.iter().map(|p| addr(*p)));
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = create
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "{NAME}: redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !PORTS.iter().all(|p| cluster_ok(*p)) {
        if Instant::now() > deadline {
            bail!(
                "{NAME}: the cluster is not ok 30 s after it was formed (logs in {})",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("  {NAME} is ok: {}", url());
    Ok(())
}

fn spawn_node(port: u16, dir: &std::path::Path) -> Result<()> {
    let log = dir.join(format!("node-{port}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .context("running redis-server")?;
    let pids = pid_file(port);
    std::fs::write(&pids, child.id().to_string())
        .with_context(|| format!("writing {}", pids.display()))?;
    println!(
        "  node {port}: pid {} (in {}), log in {}",
        child.id(),
        pids.display(),
        log.display()
    );
    Ok(())
}

/// `services down`: stops the nodes xtask started, by their recorded pids.
pub(crate) fn down() -> Result<()> {
    for port in PORTS {
        crate::services::stop_recorded(
            &format!("{NAME} node {port}"),
            &pid_file(port),
            "redis-server",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_every_node() {
        assert_eq!(
            url(),
            "redis-cluster://127.0.0.1:7101?node=127.0.0.1:7102&node=127.0.0.1:7103"
        );
    }
}
