//! The file lease store (one machine, several processes).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lease::{
    CheckpointOutcome, Lease, LeaseRecord, LeaseState, LeaseStore, Memberships, end_membership,
    heartbeat_member, keep_membership, live_members, now_ms, operator_checkpoint,
};

/// How long an operation waits for the stream's lock.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Leases in JSON files under one directory, for several processes on one machine.
///
/// Each stream has a folder; every read-modify-write holds an exclusive lock on the stream's
/// lock file (an advisory file lock, which the operating system drops when its process dies, so
/// a crashed process never leaves it held), and every file is replaced atomically (write to a
/// temporary file, then rename), so two processes never both win a lease. Expiry uses this
/// machine's clock, which all processes share. Not for network file systems; every process
/// sharing a directory must run the same version of this crate.
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

    /// Runs `f` on the record of `shard` and the stream's memberships under the stream's lock,
    /// and writes the record back
    /// when `f` changed it.
    async fn update<T: Send + 'static>(
        &self,
        stream: &str,
        shard: &str,
        operation: &'static str,
        f: impl FnOnce(&mut LeaseRecord, &Memberships) -> T + Send + 'static,
    ) -> Result<T> {
        let shard = shard.to_owned();
        self.locked(stream, operation, move |dir| {
            let path = lease_path(dir, &shard);
            let mut record = read_record(&path, &shard)?;
            let memberships = read_memberships(dir)?;
            let before = record.clone();
            let out = f(&mut record, &memberships);
            if record.changed_hands(&before) {
                bump_version(dir)?;
            }
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
        self.update(stream, shard, operation, |l, _| {
            l.override_owner(checkpoint)
        })
        .await?;
        self.state(stream, shard).await
    }
}

impl FileLeaseStore {
    /// [`LeaseStore::join`] or [`LeaseStore::renew_membership`] with `Some((ttl, renew))`,
    /// [`LeaseStore::leave`] with `None`.
    async fn keep(
        &self,
        stream: &str,
        operation: &'static str,
        instance: &str,
        membership: &str,
        keep: Option<(Duration, bool)>,
    ) -> Result<bool> {
        let (instance, membership) = (instance.to_owned(), membership.to_owned());
        self.locked(stream, operation, move |dir| {
            let mut memberships = read_memberships(dir)?;
            let mut members: BTreeMap<String, u64> = read_json(&members_path(dir))?;
            if !matches!(keep, Some((_, true))) {
                bump_version(dir)?;
            }
            let kept = match keep {
                Some((ttl, renew)) => keep_membership(
                    &mut memberships,
                    &mut members,
                    &instance,
                    &membership,
                    ttl,
                    renew,
                ),
                None => {
                    end_membership(&mut memberships, &mut members, &instance, &membership);
                    true
                }
            };
            write_json(&memberships_path(dir), &memberships)?;
            write_json(&members_path(dir), &members)?;
            Ok(kept)
        })
        .await
    }
}

/// The stream's lock, held until dropped (closing the file releases it).
struct LockGuard(#[allow(dead_code)] fs::File);

impl LockGuard {
    /// Locks `path` (created if missing; never removed, so every process locks the same file).
    fn take(path: PathBuf) -> io::Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let start = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(LockGuard(file)),
                Err(fs::TryLockError::WouldBlock) => {
                    if start.elapsed() > LOCK_WAIT {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "lock file {} is held for too long by another process",
                                path.display()
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
        }
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

fn memberships_path(dir: &Path) -> PathBuf {
    dir.join("memberships.json")
}

fn members_path(dir: &Path) -> PathBuf {
    dir.join("members.json")
}

fn version_path(dir: &Path) -> PathBuf {
    dir.join("version.json")
}

/// Raises the stream's [`LeaseStore::lease_version`]; under the stream's lock.
fn bump_version(dir: &Path) -> io::Result<()> {
    let path = version_path(dir);
    let v: u64 = read_json(&path)?;
    write_json(&path, &(v + 1))
}

fn read_memberships(dir: &Path) -> io::Result<Memberships> {
    read_json(&memberships_path(dir))
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
        self.update(stream, shard, "acquire", move |l, m| {
            l.acquire(&stream_s, &owner, None, ttl, epoch_floor, m, now_ms())
        })
        .await
    }

    async fn acquire_as_member(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        membership: &str,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        let (stream_s, owner, membership) =
            (stream.to_owned(), owner.to_owned(), membership.to_owned());
        self.update(stream, shard, "acquire", move |l, m| {
            l.acquire(
                &stream_s,
                &owner,
                Some(&membership),
                ttl,
                epoch_floor,
                m,
                now_ms(),
            )
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
        self.update(&lease.stream, &lease.shard, "renew", move |l, m| {
            l.renew(&held, ttl, m, now_ms())
        })
        .await
    }

    async fn checkpoint(&self, lease: &Lease, sequence_number: &str) -> Result<CheckpointOutcome> {
        let (held, seq) = (lease.clone(), sequence_number.to_owned());
        self.update(&lease.stream, &lease.shard, "checkpoint", move |l, _| {
            l.checkpoint(&held, &seq)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let held = lease.clone();
        self.update(&lease.stream, &lease.shard, "release", move |l, _| {
            l.release(&held)
        })
        .await
    }

    async fn finish(&self, lease: &Lease) -> Result<bool> {
        let held = lease.clone();
        self.update(&lease.stream, &lease.shard, "finish", move |l, _| {
            l.finish(&held)
        })
        .await
    }

    async fn forget_finished(&self, stream: &str, shard: &str) -> Result<bool> {
        let shard = shard.to_owned();
        self.locked(stream, "forget_finished", move |dir| {
            let path = lease_path(dir, &shard);
            if !read_record(&path, &shard)?.finished {
                return Ok(false);
            }
            for p in [path, poison_path(dir, &shard)] {
                match fs::remove_file(p) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(true)
        })
        .await
    }

    async fn state(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        let shard = shard.to_owned();
        self.locked(stream, "state", move |dir| {
            let memberships = read_memberships(dir)?;
            Ok(read_record(&lease_path(dir, &shard), &shard)?.state(now_ms(), &memberships))
        })
        .await
    }

    async fn leases(&self, stream: &str) -> Result<Vec<LeaseState>> {
        self.locked(stream, "leases", move |dir| {
            let now = now_ms();
            let memberships = read_memberships(dir)?;
            let mut out = Vec::new();
            for entry in fs::read_dir(dir)? {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                if !(name.starts_with("lease-") && name.ends_with(".json")) {
                    continue;
                }
                let l: LeaseRecord = read_json(&dir.join(name.as_ref()))?;
                out.push(l.state(now, &memberships));
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
            let path = members_path(dir);
            let mut m: BTreeMap<String, u64> = read_json(&path)?;
            heartbeat_member(&mut m, &instance, ttl);
            write_json(&path, &m)
        })
        .await
    }

    async fn live_instances(&self, stream: &str) -> Result<Vec<String>> {
        self.locked(stream, "live_instances", move |dir| {
            let m: BTreeMap<String, u64> = read_json(&members_path(dir))?;
            Ok(live_members(&m))
        })
        .await
    }

    async fn lease_version(&self, stream: &str) -> Result<Option<u64>> {
        self.locked(stream, "lease_version", move |dir| {
            read_json::<u64>(&version_path(dir)).map(Some)
        })
        .await
    }

    async fn join(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.keep(stream, "join", instance, membership, Some((ttl, false)))
            .await
            .map(|_| ())
    }

    async fn renew_membership(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.keep(
            stream,
            "renew_membership",
            instance,
            membership,
            Some((ttl, true)),
        )
        .await
    }

    async fn leave(&self, stream: &str, instance: &str, membership: &str) -> Result<()> {
        self.keep(stream, "leave", instance, membership, None)
            .await
            .map(|_| ())
    }
}
