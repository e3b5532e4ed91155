//! `mqctl kinesis status`: shards with their lineage (ListShards) beside their leases,
//! checkpoints, poison-pill counters and the live instances (the lease store). Read-only.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use fred::interfaces::HashesInterface;
use mq::kinesis::{LeaseState, LeaseStore, RedisLeaseStore};
use serde::Serialize;

use crate::Global;
use crate::output::{cut, json, table};

#[derive(Debug, Subcommand)]
pub(crate) enum KinesisCommand {
    /// Shards with parent/child lineage, lease owner, epoch, expiry, checkpoint, poison
    /// counters, and the live instances.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The stream.
    #[arg(long)]
    stream: String,
    /// The Redis lease store.
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// The key prefix the consumers' lease store uses.
    #[arg(long, default_value = "mq", env = "MQ_LEASE_PREFIX")]
    prefix: String,
    /// The Kinesis endpoint (an emulator, a VPC endpoint) [default: the AWS endpoint of the region].
    #[arg(long, env = "AWS_ENDPOINT_URL_KINESIS")]
    endpoint_url: Option<String>,
    /// The AWS region [default: from the AWS configuration].
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
}

/// One shard, as Kinesis lists it and as the lease store holds it.
#[derive(Debug, Default, Serialize)]
struct ShardStatus {
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
    lease_expires_at: Option<String>,
    lease_expires_at_ms: u64,
    checkpoint: Option<String>,
    /// Read to its end (a closed shard fully consumed).
    finished: bool,
    /// Failed batches counted per checkpoint (poison-pill detection).
    poison: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct Status {
    stream: String,
    live_instances: Vec<String>,
    shards: Vec<ShardStatus>,
}

pub(crate) async fn run(cmd: KinesisCommand, global: Global) -> anyhow::Result<ExitCode> {
    let KinesisCommand::Status(args) = cmd;
    let status = status(&args).await?;
    if global.json {
        json(&status)?;
    } else {
        print(&status);
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(args: &StatusArgs) -> anyhow::Result<Status> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = &args.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(u) = &args.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    let kinesis = aws_sdk_kinesis::Client::new(&loader.load().await);
    let mut listed = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let req = match &next {
            Some(token) => kinesis.list_shards().next_token(token),
            None => kinesis.list_shards().stream_name(&args.stream),
        };
        let out = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_kinesis::error::DisplayErrorContext(e)))
            .with_context(|| format!("listing the shards of stream {:?}", args.stream))?;
        listed.extend(out.shards.unwrap_or_default());
        next = out.next_token;
        if next.is_none() {
            break;
        }
    }
    let leases = RedisLeaseStore::connect(&args.redis_url, args.prefix.clone())
        .await
        .context("connecting to the Redis lease store")?;
    let states: HashMap<String, LeaseState> = leases
        .leases(&args.stream)
        .await
        .context("reading the leases")?
        .into_iter()
        .map(|s| (s.shard.clone(), s))
        .collect();
    let live_instances = leases
        .live_instances(&args.stream)
        .await
        .context("reading the live instances")?;

    let mut shards: BTreeMap<String, ShardStatus> = BTreeMap::new();
    for s in &listed {
        let id = s.shard_id().to_owned();
        shards.insert(
            id.clone(),
            ShardStatus {
                shard: id,
                listed: true,
                parent: s.parent_shard_id().map(str::to_owned),
                adjacent_parent: s.adjacent_parent_shard_id().map(str::to_owned),
                closed: s
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some(),
                ..ShardStatus::default()
            },
        );
    }
    for shard in states.keys() {
        shards.entry(shard.clone()).or_insert_with(|| ShardStatus {
            shard: shard.clone(),
            ..ShardStatus::default()
        });
    }
    let lineage: Vec<(String, String)> = shards
        .values()
        .flat_map(|s| {
            [&s.parent, &s.adjacent_parent]
                .into_iter()
                .flatten()
                .map(|p| (p.clone(), s.shard.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    for (parent, child) in lineage {
        if let Some(p) = shards.get_mut(&parent) {
            p.children.push(child);
        }
    }
    for s in shards.values_mut() {
        if let Some(l) = states.get(&s.shard) {
            s.owner = l.owner.clone().filter(|o| !o.is_empty());
            s.epoch = l.epoch;
            s.live = l.live;
            s.lease_expires_at_ms = l.expires_at_ms;
            s.lease_expires_at = (l.expires_at_ms > 0)
                .then(|| i64::try_from(l.expires_at_ms).ok())
                .flatten()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
            s.checkpoint = l.checkpoint.clone().filter(|c| !c.is_empty());
            s.finished = l.finished;
        }
        // The poison counters are a hash per shard (see RedisLeaseStore's key layout).
        let key = format!("{}:{{{}}}:poison:{}", args.prefix, args.stream, s.shard);
        let counts: HashMap<String, i64> = leases
            .client()
            .hgetall(key)
            .await
            .context("reading the poison-pill counters")?;
        s.poison = counts
            .into_iter()
            .map(|(k, v)| (k, u64::try_from(v).unwrap_or(0)))
            .collect();
    }
    Ok(Status {
        stream: args.stream.clone(),
        live_instances,
        shards: shards.into_values().collect(),
    })
}

fn print(status: &Status) {
    println!("stream          {}", status.stream);
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
                match (&s.owner, s.live) {
                    (Some(o), true) => o.clone(),
                    (Some(o), false) => format!("{o} (expired)"),
                    (None, _) => "-".into(),
                },
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
            "EPOCH",
            "LEASE EXPIRES",
            "CHECKPOINT",
            "POISON",
        ],
        &rows,
    );
}
