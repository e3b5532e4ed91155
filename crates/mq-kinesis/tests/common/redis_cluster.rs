//! A throw-away 3-node Redis Cluster for the lease-store conformance test.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

fn free_port_pair() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl RedisCluster {
    /// Starts the cluster, or returns why it cannot (no `redis-server` binary).
    pub async fn start() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("mq-kinesis-cluster-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut children = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let port = free_port_pair();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    dir.to_str().unwrap(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start redis-server: {e}"))?;
            children.push(child);
            ports.push(port);
        }
        let cluster = RedisCluster {
            ports,
            children,
            dir,
        };
        for p in &cluster.ports {
            wait_for_port(*p).await;
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.push("--cluster-yes".into());
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .await
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        // wait until every node reports the cluster as ok
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        for p in &cluster.ports {
            loop {
                let out = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .await
                    .map_err(|e| e.to_string())?;
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cluster never became ok"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(cluster)
    }

    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.ports[0]);
        for (i, p) in self.ports[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{p}"));
        }
        url
    }

    pub async fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis on {port} never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
