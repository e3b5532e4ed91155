//! The file lease store (one machine, several processes).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lease::{
    CheckpointOutcome, Lease, LeaseRecord, LeaseState, LeaseStore, heartbeat_member, live_members,
    now_ms, operator_checkpoint,
};

/// A lock file older than this is left over from a crashed process and is broken.
const STALE_LOCK: Duration = Duration::from_secs(10);
/// How long an operation waits for the stream's lock file.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Leases in JSON files under one directory, for several processes on one machine.
///
/// Each stream has a folder; every read-modify-write holds the stream's lock file (created with
/// `O_EXCL`), and every file is replaced atomically (write to a temporary file, then rename), so
/// two processes never both win a lease. Expiry uses this machine's clock, which all processes
/// share. Not for network file systems.
///
/// # Examples
///
/// ```
/// let dir = std::env::temp_dir().join("mq-kinesis-leases-doc");
/// let store = mq_kinesis::FileLeaseStore::new(&dir)?;
/// assert_eq!(store.dir(), dir.as_path());
/// # Ok::<(), mq_kinesis::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileLeaseStore {
    dir: PathBuf,
}

impl FileLeaseStore {
    /// A store under `dir`, created if missing.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::lease("create directory", e))?;
        Ok(FileLeaseStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn locked<T: Send + 'static>(
        &self,
        stream: &str,
        operation: &'static str,
        f: impl FnOnce(&Path) -> io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let dir = self.dir.join(format!("s-{}", encode(stream)));
        tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&dir)?;
            let _guard = LockGuard::take(dir.join(".lock"))?;
            f(&dir)
        })
        .await
        .map_err(|e| Error::lease(operation, e))?
        .map_err(|e| Error::lease(operation, e))
    }

    /// Runs `f` on the record of `shard` under the stream's lock, and writes the record back
    /// when `f` changed it.
    async fn update<T: Send + 'static>(
        &self,
        stream: &str,
        shard: &str,
        operation: &'static str,
        f: impl FnOnce(&mut LeaseRecord) -> T + Send + 'static,
    ) -> Result<T> {
        let shard = shard.to_owned();
        self.locked(stream, operation, move |dir| {
            let path = lease_path(dir, &shard);
            let mut record = read_record(&path, &shard)?;
            let before = record.clone();
            let out = f(&mut record);
            if record != before {
                write_json(&path, &record)?;
            }
            Ok(out)
        })
        .await
    }

    /// [`LeaseStore::force_release`], or [`LeaseStore::set_checkpoint`] with a `checkpoint`.
    async fn override_lease(
        &self,
        operation: &'static str,
        stream: &str,
        shard: &str,
        checkpoint: Option<String>,
    ) -> Result<LeaseState> {
        self.update(stream, shard, operation, |l| l.override_owner(checkpoint))
            .await?;
        self.state(stream, shard).await
    }
}

struct LockGuard(PathBuf);

impl LockGuard {
    fn take(path: PathBuf) -> io::Result<Self> {
        let start = std::time::Instant::now();
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(LockGuard(path));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > STALE_LOCK);
                    if stale {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    if start.elapsed() > LOCK_WAIT {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("lock file {} is held for too long", path.display()),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> io::Result<T> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

fn lease_path(dir: &Path, shard: &str) -> PathBuf {
    dir.join(format!("lease-{}.json", encode(shard)))
}

/// The record of `shard`; files written before records named their shard get the name here.
fn read_record(path: &Path, shard: &str) -> io::Result<LeaseRecord> {
    let mut record: LeaseRecord = read_json(path)?;
    shard.clone_into(&mut record.shard);
    Ok(record)
}

fn poison_path(dir: &Path, shard: &str) -> PathBuf {
    dir.join(format!("poison-{}.json", encode(shard)))
}

#[async_trait]
impl LeaseStore for FileLeaseStore {
    async fn acquire_above(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        let (stream_s, owner) = (stream.to_owned(), owner.to_owned());
        self.update(stream, shard, "acquire", move |l| {
            l.acquire(&stream_s, &owner, ttl, epoch_floor)
        })
        .await
    }

    async fn force_release(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        self.override_lease("force_release", stream, shard, None)
            .await
    }

    async fn set_checkpoint(
        &self,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> Result<LeaseState> {
        let checkpoint = Some(operator_checkpoint(sequence_number)?);
        self.override_lease("set_checkpoint", stream, shard, checkpoint)
            .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let held = lease.clone();
        self.update(&lease.stream, &lease.shard, "renew", move |l| {
            l.renew(&held, ttl)
        })
        .await
    }

    async fn checkpoint(&self, lease: &Lease, sequence_number: &str) -> Result<CheckpointOutcome> {
        let (held, seq) = (lease.clone(), sequence_number.to_owned());
        self.update(&lease.stream, &lease.shard, "checkpoint", move |l| {
            l.checkpoint(&held, &seq)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let held = lease.clone();
        self.update(&lease.stream, &lease.shard, "release", move |l| {
            l.release(&held)
        })
        .await
    }

    async fn finish(&self, lease: &Lease) -> Result<bool> {
        let held = lease.clone();
        self.update(&lease.stream, &lease.shard, "finish", move |l| {
            l.finish(&held)
        })
        .await
    }

    async fn state(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        let shard = shard.to_owned();
        self.locked(stream, "state", move |dir| {
            Ok(read_record(&lease_path(dir, &shard), &shard)?.state(now_ms()))
        })
        .await
    }

    async fn leases(&self, stream: &str) -> Result<Vec<LeaseState>> {
        self.locked(stream, "leases", move |dir| {
            let now = now_ms();
            let mut out = Vec::new();
            for entry in fs::read_dir(dir)? {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                if !(name.starts_with("lease-") && name.ends_with(".json")) {
                    continue;
                }
                let l: LeaseRecord = read_json(&dir.join(name.as_ref()))?;
                out.push(l.state(now));
            }
            out.sort_by(|a, b| a.shard.cmp(&b.shard));
            Ok(out)
        })
        .await
    }

    async fn record_failure(&self, stream: &str, shard: &str, checkpoint: &str) -> Result<u32> {
        let (shard, checkpoint) = (shard.to_owned(), checkpoint.to_owned());
        self.locked(stream, "record_failure", move |dir| {
            let path = poison_path(dir, &shard);
            let mut counts: BTreeMap<String, u32> = read_json(&path)?;
            let n = counts.entry(checkpoint).or_default();
            *n += 1;
            let n = *n;
            write_json(&path, &counts)?;
            Ok(n)
        })
        .await
    }

    async fn failure_counts(&self, stream: &str, shard: &str) -> Result<BTreeMap<String, u32>> {
        let shard = shard.to_owned();
        self.locked(stream, "failure_counts", move |dir| {
            read_json(&poison_path(dir, &shard))
        })
        .await
    }

    async fn clear_failures(&self, stream: &str, shard: &str) -> Result<()> {
        let shard = shard.to_owned();
        self.locked(stream, "clear_failures", move |dir| {
            match fs::remove_file(poison_path(dir, &shard)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn heartbeat(&self, stream: &str, instance: &str, ttl: Duration) -> Result<()> {
        let instance = instance.to_owned();
        self.locked(stream, "heartbeat", move |dir| {
            let path = dir.join("members.json");
            let mut m: BTreeMap<String, u64> = read_json(&path)?;
            heartbeat_member(&mut m, &instance, ttl);
            write_json(&path, &m)
        })
        .await
    }

    async fn live_instances(&self, stream: &str) -> Result<Vec<String>> {
        self.locked(stream, "live_instances", move |dir| {
            let m: BTreeMap<String, u64> = read_json(&dir.join("members.json"))?;
            Ok(live_members(&m))
        })
        .await
    }
}
