//! `mqctl kinesis`: shard leases and checkpoints of a Kinesis stream.
//!
//! - `status`: shards with their lineage (ListShards) beside their leases, checkpoints,
//!   poison-pill counters and the live instances (the lease store). Read-only.
//! - `checkpoint set|advance`: move a shard's checkpoint (the owner of the time is fenced and the
//!   shard is acquired again, reading after the new checkpoint).
//! - `lease release --force`: take a shard's lease from its owner (fenced) so another instance
//!   can acquire it; the checkpoint is kept.
//!
//! Leases live in Redis; with `--checkpoint-url` the checkpoints and the epoch fence are read and
//! written through a durable checkpoint store ([`DurableLeaseStore`]) as the consumers do. With
//! `--lease-url` they live in a lease table on a SQL database or MongoDB ([`TableLeaseStore`]),
//! checkpoints included.
//!
//! `advance` compares with the checkpoint it read, then sets: should a running owner checkpoint
//! past the new value in between, the set moves the checkpoint back to it (records are read
//! again, none is skipped that the operator did not name).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use mq::backend::{
    CheckpointStore, LeaseTable, compare_sequence_numbers, normalize_sequence_number,
};
use mq::kinesis::{
    DurableLeaseStore, LeaseState, LeaseStore, RedisLeaseStore, ShardStatus, TableLeaseStore,
    stream_status,
};
use serde::Serialize;

use crate::Global;
use crate::dlq::{Scheme, connect_pool, redact, scheme};
use crate::output::{cut, json, table};

/// Where the leases and checkpoints are, and what to do with them.
#[derive(Debug, Args)]
pub(crate) struct KinesisArgs {
    /// The Redis lease store (required unless --lease-url names a lease table).
    #[arg(long, env = "REDIS_URL", global = true, help_heading = "Connection")]
    redis_url: Option<String>,
    /// A lease table instead of Redis, as the consumers' `TableLeaseStore` uses: a
    /// postgres://, mysql://, sqlite: or mongodb:// URL.
    #[arg(long, env = "MQ_LEASE_URL", global = true, help_heading = "Connection")]
    lease_url: Option<String>,
    /// The table (SQL) or collection (MongoDB) of the lease table.
    #[arg(long, default_value = mq::sql::DEFAULT_LEASE_TABLE, env = "MQ_LEASE_TABLE", global = true, help_heading = "Connection")]
    lease_table: String,
    /// The key prefix the consumers' lease store uses.
    #[arg(
        long,
        default_value = "mq",
        env = "MQ_LEASE_PREFIX",
        global = true,
        help_heading = "Connection"
    )]
    prefix: String,
    /// The number of Redis Cluster slot buckets the consumers' lease store spreads each
    /// stream's keys over (`RedisLeaseStore::slot_buckets`); it must match theirs.
    #[arg(
        long,
        default_value_t = 1,
        env = "MQ_LEASE_SLOT_BUCKETS",
        global = true,
        help_heading = "Connection"
    )]
    slot_buckets: u16,
    /// A durable checkpoint store beside the Redis leases: a postgres://, mysql://, sqlite: or
    /// mongodb:// URL [default: none, checkpoints in Redis].
    #[arg(
        long,
        env = "MQ_CHECKPOINT_URL",
        global = true,
        help_heading = "Connection"
    )]
    checkpoint_url: Option<String>,
    /// The table (SQL) or collection (MongoDB) of the durable checkpoints.
    #[arg(long, default_value = mq::sql::DEFAULT_CHECKPOINT_TABLE, global = true, help_heading = "Connection")]
    checkpoint_table: String,
    /// The MongoDB database of the durable checkpoints.
    #[arg(
        long,
        default_value = "mq",
        env = "MQ_MONGO_DATABASE",
        global = true,
        help_heading = "Connection"
    )]
    mongo_database: String,
    /// The Kinesis endpoint (an emulator, a VPC endpoint) [default: the AWS endpoint of the region].
    #[arg(
        long,
        env = "AWS_ENDPOINT_URL_KINESIS",
        global = true,
        help_heading = "Connection"
    )]
    endpoint_url: Option<String>,
    /// The AWS region [default: from the AWS configuration].
    #[arg(long, env = "AWS_REGION", global = true, help_heading = "Connection")]
    region: Option<String>,
    #[command(subcommand)]
    command: KinesisCommand,
}

#[derive(Debug, Subcommand)]
enum KinesisCommand {
    /// Shards with parent/child lineage, lease owner, epoch, expiry, checkpoint, poison
    /// counters, and the live instances.
    Status {
        /// The stream.
        #[arg(long)]
        stream: String,
    },
    /// Move a shard's checkpoint (asks for confirmation unless --yes).
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Shard leases.
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CheckpointCommand {
    /// Set the checkpoint to any sequence number, forwards or backwards (re-reads or skips
    /// records). The owner is fenced; the shard is acquired again and read after the checkpoint.
    Set(MoveArgs),
    /// Move the checkpoint forwards only (skips records): refused when the sequence number is not
    /// after the current checkpoint, and on a finished shard.
    Advance(MoveArgs),
}

#[derive(Debug, Args)]
struct MoveArgs {
    /// The stream.
    #[arg(long)]
    stream: String,
    /// The shard id, as `mqctl kinesis status` lists it.
    #[arg(long)]
    shard: String,
    /// The new checkpoint: the sequence number of the last record to count as processed.
    #[arg(long)]
    sequence: String,
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// Take a shard's lease from its owner (needs --force; asks for confirmation unless --yes).
    /// The owner is fenced, the checkpoint kept, and any instance may acquire the shard.
    Release {
        /// The stream.
        #[arg(long)]
        stream: String,
        /// The shard id, as `mqctl kinesis status` lists it.
        #[arg(long)]
        shard: String,
        /// Take the lease even though its owner may be processing the shard right now.
        #[arg(long)]
        force: bool,
    },
}

/// The lease stores a command works on.
struct Stores {
    /// Redis alone, or Redis with the durable checkpoints.
    leases: Arc<dyn LeaseStore>,
    /// Where the checkpoints are read from, for the output.
    checkpoints: String,
}

impl KinesisArgs {
    async fn kinesis(&self) -> aws_sdk_kinesis::Client {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &self.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(u) = &self.endpoint_url {
            loader = loader.endpoint_url(u);
        }
        aws_sdk_kinesis::Client::new(&loader.load().await)
    }

    async fn stores(&self) -> anyhow::Result<Stores> {
        if let Some(url) = self.lease_url.as_deref().filter(|u| !u.is_empty()) {
            if self
                .checkpoint_url
                .as_deref()
                .is_some_and(|u| !u.is_empty())
            {
                anyhow::bail!(
                    "--lease-url and --checkpoint-url cannot be used together: a lease table keeps its checkpoints itself"
                );
            }
            let table = open_lease_table(url, &self.lease_table, &self.mongo_database).await?;
            return Ok(Stores {
                leases: Arc::new(TableLeaseStore::new(table)),
                checkpoints: format!("{} ({})", redact(url), self.lease_table),
            });
        }
        let Some(redis_url) = self.redis_url.as_deref().filter(|u| !u.is_empty()) else {
            anyhow::bail!(
                "no lease store: pass --redis-url (or set REDIS_URL), or --lease-url for a lease table"
            );
        };
        let redis = RedisLeaseStore::connect(redis_url, self.prefix.clone())
            .await
            .with_context(|| {
                format!(
                    "connecting to the Redis lease store at {}",
                    redact(redis_url)
                )
            })?
            .slot_buckets(self.slot_buckets)?;
        let Some(url) = self.checkpoint_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(Stores {
                leases: Arc::new(redis),
                checkpoints: "redis".to_owned(),
            });
        };
        let checkpoints =
            open_checkpoints(url, &self.checkpoint_table, &self.mongo_database).await?;
        Ok(Stores {
            leases: Arc::new(DurableLeaseStore::new(Arc::new(redis), checkpoints)),
            checkpoints: format!("{} ({})", redact(url), self.checkpoint_table),
        })
    }
}

async fn open_lease_table(
    url: &str,
    table: &str,
    mongo_db: &str,
) -> anyhow::Result<Arc<dyn LeaseTable>> {
    let where_ = || format!("connecting to the lease table at {}", redact(url));
    macro_rules! sql_table {
        ($table:ty) => {{
            let pool = connect_pool(url).await.with_context(where_)?;
            Arc::new(
                <$table>::from_pool(pool, table)
                    .await
                    .with_context(where_)?,
            )
        }};
    }
    Ok(match scheme(url).context("--lease-url")? {
        Scheme::Postgres => sql_table!(mq::sql::PgLeaseTable),
        Scheme::MySql => sql_table!(mq::sql::MySqlLeaseTable),
        Scheme::Sqlite => sql_table!(mq::sql::SqliteLeaseTable),
        Scheme::Mongo => {
            let options = mq::MongoOptions::default()
                .database(mongo_db)
                .lease_collection(table);
            Arc::new(
                mq::mongo::MongoLeaseTable::connect(url, options)
                    .await
                    .with_context(where_)?,
            )
        }
    })
}

async fn open_checkpoints(
    url: &str,
    table: &str,
    mongo_db: &str,
) -> anyhow::Result<Arc<dyn CheckpointStore>> {
    let where_ = || format!("connecting to the checkpoint store at {}", redact(url));
    // One arm per SQL database: the store type differs, the steps do not. The pool fails fast
    // with the driver's reason when the server does not answer.
    macro_rules! sql_checkpoints {
        ($store:ty) => {{
            let pool = connect_pool(url).await.with_context(where_)?;
            Arc::new(
                <$store>::from_pool(pool, table)
                    .await
                    .with_context(where_)?,
            )
        }};
    }
    Ok(match scheme(url).context("--checkpoint-url")? {
        Scheme::Postgres => sql_checkpoints!(mq::sql::PgCheckpointStore),
        Scheme::MySql => sql_checkpoints!(mq::sql::MySqlCheckpointStore),
        Scheme::Sqlite => sql_checkpoints!(mq::sql::SqliteCheckpointStore),
        Scheme::Mongo => {
            let options = mq::MongoOptions::default()
                .database(mongo_db)
                .checkpoint_collection(table);
            Arc::new(
                mq::mongo::MongoCheckpointStore::connect(url, options)
                    .await
                    .with_context(where_)?,
            )
        }
    })
}

pub(crate) async fn run(args: KinesisArgs, global: Global) -> anyhow::Result<ExitCode> {
    match &args.command {
        KinesisCommand::Status { stream } => {
            let status = status(&args, stream).await?;
            if global.json {
                json(&status)?;
            } else {
                print(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        KinesisCommand::Checkpoint { command } => {
            let (m, advance) = match command {
                CheckpointCommand::Set(m) => (m, false),
                CheckpointCommand::Advance(m) => (m, true),
            };
            move_checkpoint(&args, m, advance, global).await
        }
        KinesisCommand::Lease {
            command:
                LeaseCommand::Release {
                    stream,
                    shard,
                    force,
                },
        } => release(&args, stream, shard, *force, global).await,
    }
}

/// The shard `shard` of `stream`, or a clear refusal naming the shards there are.
async fn find_shard(
    args: &KinesisArgs,
    stores: &Stores,
    stream: &str,
    shard: &str,
) -> anyhow::Result<ShardStatus> {
    let status = stream_status(&args.kinesis().await, stores.leases.as_ref(), stream)
        .await
        .with_context(|| format!("listing the shards of stream {stream:?}"))?;
    let listed: Vec<ShardStatus> = status.shards.into_iter().filter(|s| s.listed).collect();
    if let Some(s) = listed.iter().find(|s| s.shard == shard) {
        return Ok(s.clone());
    }
    let mut ids: Vec<&str> = listed.iter().map(|s| s.shard.as_str()).take(10).collect();
    if listed.len() > ids.len() {
        ids.push("…");
    }
    anyhow::bail!(
        "--shard {shard:?}: stream {stream:?} has no such shard (it has {}); `mqctl kinesis status --stream {stream}` lists them",
        if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.join(", ")
        }
    )
}

/// A lease as the operator commands show it before and after.
#[derive(Debug, Serialize)]
struct LeaseView {
    owner: Option<String>,
    epoch: u64,
    live: bool,
    /// Expired without a release before the lease store's server restarted or failed over:
    /// its owner may still be reading, so a durable store hands it out after its recovery wait.
    expiry_unconfirmed: bool,
    lease_expires_at: Option<String>,
    checkpoint: Option<String>,
    finished: bool,
}

impl From<&LeaseState> for LeaseView {
    fn from(l: &LeaseState) -> Self {
        LeaseView {
            owner: l.owner.clone().filter(|o| !o.is_empty()),
            epoch: l.epoch,
            live: l.live,
            expiry_unconfirmed: l.expiry_unconfirmed,
            lease_expires_at: expiry(l.expires_at_ms),
            checkpoint: l.checkpoint.clone().filter(|c| !c.is_empty()),
            finished: l.finished,
        }
    }
}

/// What an operator command changed.
#[derive(Debug, Serialize)]
struct Change {
    action: &'static str,
    stream: String,
    shard: String,
    checkpoints: String,
    before: LeaseView,
    after: LeaseView,
}

fn expiry(ms: u64) -> Option<String> {
    (ms > 0)
        .then(|| i64::try_from(ms).ok())
        .flatten()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn owner_text(l: &LeaseState) -> String {
    match l.owner.as_ref().filter(|o| !o.is_empty()) {
        Some(o) => format!(
            "{}, epoch {}",
            owner_cell(Some(o), l.live, l.expiry_unconfirmed),
            l.epoch
        ),
        None => format!("no owner, epoch {}", l.epoch),
    }
}

/// The owner as the tables show it: `-` when nobody holds the lease, and whether it expired
/// (and whether the lease store can vouch for that).
fn owner_cell(owner: Option<&String>, live: bool, unconfirmed: bool) -> String {
    match owner {
        Some(o) if live => o.clone(),
        Some(o) if unconfirmed => format!("{o} (expired before a lease-store restart)"),
        Some(o) => format!("{o} (expired)"),
        None => "-".into(),
    }
}

fn report(change: &Change, global: Global) -> anyhow::Result<ExitCode> {
    if global.json {
        json(change)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}  stream {}  shard {}",
        change.action, change.stream, change.shard
    );
    println!("checkpoints  {}", change.checkpoints);
    let row = |name: &str, v: &LeaseView| {
        vec![
            name.to_owned(),
            owner_cell(v.owner.as_ref(), v.live, v.expiry_unconfirmed),
            v.epoch.to_string(),
            v.lease_expires_at.clone().unwrap_or_else(|| "-".into()),
            v.checkpoint.clone().unwrap_or_else(|| "-".into()),
            if v.finished { "yes" } else { "no" }.to_owned(),
        ]
    };
    table(
        &[
            "",
            "OWNER",
            "EPOCH",
            "LEASE EXPIRES",
            "CHECKPOINT",
            "FINISHED",
        ],
        &[row("before", &change.before), row("after", &change.after)],
    );
    Ok(ExitCode::SUCCESS)
}

async fn move_checkpoint(
    args: &KinesisArgs,
    m: &MoveArgs,
    advance: bool,
    global: Global,
) -> anyhow::Result<ExitCode> {
    let action = if advance {
        "checkpoint advance"
    } else {
        "checkpoint set"
    };
    let seq =
        normalize_sequence_number(&m.sequence).map_err(|e| anyhow::anyhow!("--sequence: {e}"))?;
    let stores = args.stores().await?;
    let shard = find_shard(args, &stores, &m.stream, &m.shard).await?;
    if let Some(end) = shard.ending_sequence_number.as_deref()
        && compare_sequence_numbers(&seq, end) == Ordering::Greater
    {
        anyhow::bail!(
            "--sequence {seq}: shard {:?} is closed and its last sequence number is {end}; a checkpoint after it names no record",
            m.shard
        );
    }
    let before = stores
        .leases
        .state(&m.stream, &m.shard)
        .await
        .context("reading the lease")?;
    let current = before.checkpoint.clone().filter(|c| !c.is_empty());
    // a finished shard's record is forgotten once its children started: the status knows it
    // from the lineage
    let finished = before.finished || shard.lease.finished;
    if advance {
        if finished {
            anyhow::bail!(
                "shard {:?} of stream {:?} is finished (read to its end; it is never read again): there is nothing to advance",
                m.shard,
                m.stream
            );
        }
        if let Some(cur) = &current
            && compare_sequence_numbers(&seq, cur) != Ordering::Greater
        {
            anyhow::bail!(
                "--sequence {seq} is not after the current checkpoint {cur} of shard {:?}: advance only moves forwards; use `mqctl kinesis checkpoint set` to move it back",
                m.shard
            );
        }
    } else if finished {
        eprintln!(
            "note: shard {} is finished (read to its end); the new checkpoint will not make it read again",
            m.shard
        );
    }
    let question = format!(
        "move the checkpoint of shard {} of stream {} from {} to {seq} (lease: {}; the owner is fenced and the shard read again after {seq})?",
        m.shard,
        m.stream,
        current.as_deref().unwrap_or("none"),
        owner_text(&before),
    );
    if !global.confirm(&question)? {
        eprintln!("nothing changed");
        return Ok(ExitCode::from(1));
    }
    let after = stores
        .leases
        .set_checkpoint(&m.stream, &m.shard, &seq)
        .await
        .context("setting the checkpoint")?;
    report(
        &Change {
            action,
            stream: m.stream.clone(),
            shard: m.shard.clone(),
            checkpoints: stores.checkpoints,
            before: (&before).into(),
            after: (&after).into(),
        },
        global,
    )
}

async fn release(
    args: &KinesisArgs,
    stream: &str,
    shard: &str,
    force: bool,
    global: Global,
) -> anyhow::Result<ExitCode> {
    if !force {
        anyhow::bail!(
            "refusing to release the lease of shard {shard:?} without --force: its owner may be processing the shard right now. \
             --force fences the owner (the epoch goes up, so its renewals and checkpoints are refused and it stops after its current batch) \
             and frees the shard for any instance; the checkpoint is kept, so records handled since it are delivered again"
        );
    }
    let stores = args.stores().await?;
    find_shard(args, &stores, stream, shard).await?;
    let before = stores
        .leases
        .state(stream, shard)
        .await
        .context("reading the lease")?;
    let question = format!(
        "release the lease of shard {shard} of stream {stream} ({}), fencing its owner?",
        owner_text(&before)
    );
    if !global.confirm(&question)? {
        eprintln!("nothing changed");
        return Ok(ExitCode::from(1));
    }
    let after = stores
        .leases
        .force_release(stream, shard)
        .await
        .context("releasing the lease")?;
    report(
        &Change {
            action: "lease release",
            stream: stream.to_owned(),
            shard: shard.to_owned(),
            checkpoints: stores.checkpoints,
            before: (&before).into(),
            after: (&after).into(),
        },
        global,
    )
}

/// One shard, as Kinesis lists it and as the lease store holds it.
#[derive(Debug, Serialize)]
struct ShardView {
    shard: String,
    /// False for a shard the lease store knows but ListShards no longer returns (expired).
    listed: bool,
    parent: Option<String>,
    adjacent_parent: Option<String>,
    children: Vec<String>,
    /// The shard was split or merged: it gets no new records.
    closed: bool,
    owner: Option<String>,
    epoch: u64,
    live: bool,
    /// Expired without a release before the lease store's server restarted or failed over.
    expiry_unconfirmed: bool,
    lease_expires_at: Option<String>,
    lease_expires_at_ms: u64,
    checkpoint: Option<String>,
    /// Read to its end (a closed shard fully consumed).
    finished: bool,
    /// Failed batches counted per checkpoint (poison-pill detection).
    poison: BTreeMap<String, u64>,
    /// Not finished, but a parent is not finished yet either: not read until it is.
    waiting_for_parents: bool,
    /// The live instance the balanced assignment gives this shard (what the fleet converges to).
    assigned_to: Option<String>,
}

#[derive(Debug, Serialize)]
struct Status {
    stream: String,
    /// Where the checkpoints come from: `redis`, or the durable store.
    checkpoints: String,
    live_instances: Vec<String>,
    shards: Vec<ShardView>,
}

async fn status(args: &KinesisArgs, stream: &str) -> anyhow::Result<Status> {
    let kinesis = args.kinesis().await;
    let stores = args.stores().await?;
    let status = stream_status(&kinesis, stores.leases.as_ref(), stream)
        .await
        .with_context(|| format!("reading the status of stream {stream:?}"))?;
    let shards = status
        .shards
        .into_iter()
        .map(|s| ShardView {
            owner: s.lease.owner.clone().filter(|o| !o.is_empty()),
            epoch: s.lease.epoch,
            live: s.lease.live,
            expiry_unconfirmed: s.lease.expiry_unconfirmed,
            lease_expires_at: expiry(s.lease.expires_at_ms),
            lease_expires_at_ms: s.lease.expires_at_ms,
            checkpoint: s.lease.checkpoint.clone().filter(|c| !c.is_empty()),
            finished: s.lease.finished,
            poison: s
                .failures
                .into_iter()
                .map(|(k, v)| (k, u64::from(v)))
                .collect(),
            shard: s.shard,
            listed: s.listed,
            parent: s.parent,
            adjacent_parent: s.adjacent_parent,
            children: s.children,
            closed: s.closed,
            waiting_for_parents: s.waiting_for_parents,
            assigned_to: s.assigned_to,
        })
        .collect();
    Ok(Status {
        stream: status.stream,
        checkpoints: stores.checkpoints,
        live_instances: status.live_instances,
        shards,
    })
}

fn print(status: &Status) {
    println!("stream          {}", status.stream);
    println!("checkpoints     {}", status.checkpoints);
    println!(
        "live instances  {}",
        if status.live_instances.is_empty() {
            "(none)".to_owned()
        } else {
            status.live_instances.join(", ")
        }
    );
    let rows: Vec<Vec<String>> = status
        .shards
        .iter()
        .map(|s| {
            let parents: Vec<&str> = [&s.parent, &s.adjacent_parent]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            let state = match (s.listed, s.finished, s.closed) {
                (false, _, _) => "expired",
                (_, true, _) => "finished",
                _ if s.waiting_for_parents => "waiting",
                (_, _, true) => "closed",
                _ => "open",
            };
            vec![
                s.shard.clone(),
                state.to_owned(),
                if parents.is_empty() {
                    "-".into()
                } else {
                    parents.join("+")
                },
                if s.children.is_empty() {
                    "-".into()
                } else {
                    s.children.join(",")
                },
                owner_cell(s.owner.as_ref(), s.live, s.expiry_unconfirmed),
                s.assigned_to.clone().unwrap_or_else(|| "-".into()),
                s.epoch.to_string(),
                s.lease_expires_at.clone().unwrap_or_else(|| "-".into()),
                s.checkpoint.as_deref().map_or("-".into(), |c| cut(c, 40)),
                if s.poison.is_empty() {
                    "-".into()
                } else {
                    s.poison.values().sum::<u64>().to_string()
                },
            ]
        })
        .collect();
    table(
        &[
            "SHARD",
            "STATE",
            "PARENTS",
            "CHILDREN",
            "OWNER",
            "ASSIGNED",
            "EPOCH",
            "LEASE EXPIRES",
            "CHECKPOINT",
            "POISON",
        ],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::owner_cell;

    #[test]
    fn the_owner_cell_says_whether_an_expiry_can_be_trusted() {
        let a = "a".to_owned();
        assert_eq!(owner_cell(Some(&a), true, false), "a");
        assert_eq!(owner_cell(Some(&a), false, false), "a (expired)");
        assert_eq!(
            owner_cell(Some(&a), false, true),
            "a (expired before a lease-store restart)"
        );
        assert_eq!(owner_cell(None, false, false), "-");
    }
}
