//! A throw-away `redis-server` without persistence on a spare loopback port, killed on drop, so a
//! test can FLUSHALL it without touching anyone else's data. It can also take a snapshot and be
//! restarted from it, losing every write made since, as a failover to a lagging replica does.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// where `SAVE` writes (`dump.rdb`) and a snapshot is kept (`snapshot.rdb`)
    dir: std::path::PathBuf,
}

fn spawn(port: u16, dir: &std::path::Path) -> Result<Child, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}"))
}

async fn wait_ready(port: u16) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if cli(port, &["PING"]).await? == "PONG" {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("redis-server on port {port} never answered"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl RedisServer {
    /// Starts the server, or returns why it cannot (no `redis-server` binary).
    pub async fn start() -> Result<Self, String> {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let dir = std::env::temp_dir().join(format!("mq-redis-{port}-{}", std::process::id()));
        let _ = std::fs::remove_file(dir.join("dump.rdb"));
        let child = spawn(port, &dir)?;
        wait_ready(port).await?;
        Ok(RedisServer {
            port,
            child: Some(child),
            dir,
        })
    }

    /// Starts the server; when it cannot, panics under `MQ_REQUIRE_SERVICES=1` and otherwise
    /// prints why `test` skips and returns `None`.
    pub async fn start_or_skip(test: &str) -> Option<Self> {
        match Self::start().await {
            Ok(s) => Some(s),
            Err(reason) => {
                if std::env::var("MQ_REQUIRE_SERVICES").as_deref() == Ok("1") {
                    panic!("{test}: {reason}");
                }
                eprintln!("skipping {test}: {reason}");
                None
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone: no persistence).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.expect("kill redis-server");
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        self.start_again().await;
    }

    async fn start_again(&mut self) {
        self.child = Some(spawn(self.port, &self.dir).expect("restart redis-server"));
        wait_ready(self.port)
            .await
            .expect("restarted redis-server answers");
    }

    /// Saves everything it holds now (`SAVE`), for [`restore_snapshot`](Self::restore_snapshot).
    pub async fn snapshot(&self) {
        assert_eq!(cli(self.port, &["SAVE"]).await.unwrap(), "OK");
        std::fs::rename(self.dir.join("dump.rdb"), self.dir.join("snapshot.rdb"))
            .expect("keep the snapshot");
    }

    /// Kills the server and starts it again from the last [`snapshot`](Self::snapshot): every
    /// write since is lost, as when a replica that lags behind is promoted.
    pub async fn restore_snapshot(&mut self) {
        self.stop().await;
        std::fs::copy(self.dir.join("snapshot.rdb"), self.dir.join("dump.rdb"))
            .expect("copy the snapshot");
        self.start_again().await;
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
    }

    /// Runs one command with `redis-cli` and returns its output.
    pub async fn command(&self, args: &[&str]) -> String {
        cli(self.port, args).await.expect("redis-cli")
    }

    /// Forgets everything, as a restarted Redis without persistence does.
    pub async fn flushall(&self) {
        assert_eq!(cli(self.port, &["FLUSHALL"]).await.unwrap(), "OK");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
