//! A stream's shards: their lineage from `ListShards`, and [`stream_status`], what the fleet
//! holds of each (lease, checkpoint, failure counts, assignment).

use std::collections::{BTreeMap, HashSet};

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::Shard;
use backon::{ExponentialBuilder, Retryable};

use crate::assignment::{ShardLineage, balanced_assignment, eligible_shards, finished_shards};
use crate::error::{Error, Result, error_text};
use crate::lease::{LeaseState, LeaseStore};

/// Every shard of `stream` as `ListShards` returns it, in API order (closed shards included),
/// over every page. A failed page is retried with backoff (from 100 ms, with jitter, four times)
/// unless the error can never succeed (no such stream, no permission, a bad argument).
async fn list_shards(client: &Client, stream: &str) -> Result<Vec<Shard>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let page = (|| req.clone().send())
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(4)
                    .with_jitter(),
            )
            .when(|e| {
                !matches!(
                    e.code(),
                    Some(
                        "ResourceNotFoundException"
                            | "InvalidArgumentException"
                            | "AccessDeniedException"
                            | "ValidationException"
                            | "ExpiredNextTokenException"
                    )
                )
            })
            .notify(|e, after| {
                tracing::warn!(stream, error = %error_text(e), ?after, "mq-kinesis: ListShards failed, retrying");
            })
            .await
            .map_err(|e| Error::kinesis("ListShards", error_text(&e)))?;
        let empty = page.shards().is_empty();
        let next = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        out.extend(page.shards.unwrap_or_default());
        match next {
            Some(t) if !empty => token = Some(t),
            _ => return Ok(out),
        }
    }
}

fn ending_sequence_number(s: &Shard) -> Option<&str> {
    s.sequence_number_range()
        .and_then(|r| r.ending_sequence_number())
}

fn lineage_of(s: &Shard) -> ShardLineage {
    [s.parent_shard_id(), s.adjacent_parent_shard_id()]
        .into_iter()
        .flatten()
        .fold(
            ShardLineage::new(s.shard_id()).closed(ending_sequence_number(s).is_some()),
            ShardLineage::parent,
        )
}

/// Every shard of `stream` with its lineage, in API order (closed shards included), over every
/// page of ListShards.
pub(crate) async fn list_shard_lineage(client: &Client, stream: &str) -> Result<Vec<ShardLineage>> {
    Ok(list_shards(client, stream)
        .await?
        .iter()
        .map(lineage_of)
        .collect())
}

/// One shard of a stream, as Kinesis lists it and as the lease store holds it; part of a
/// [`StreamStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShardStatus {
    /// The shard id.
    pub shard: String,
    /// False for a shard the lease store knows but `ListShards` no longer returns (past the
    /// stream's retention).
    pub listed: bool,
    /// The shard this one was split from, or the first of the two it was merged from.
    pub parent: Option<String>,
    /// The second shard of a merge.
    pub adjacent_parent: Option<String>,
    /// The shards split or merged from this one, in shard-id order.
    pub children: Vec<String>,
    /// The shard was split or merged: it gets no new records.
    pub closed: bool,
    /// The last sequence number of a closed shard.
    pub ending_sequence_number: Option<String>,
    /// The lease: owner, epoch, expiry, whether it is live, the checkpoint (from the durable
    /// checkpoint store when the lease store is a [`DurableLeaseStore`](crate::DurableLeaseStore))
    /// and whether the shard was read to its end. The default state for a shard never acquired.
    ///
    /// `finished` is also set for a shard whose child has a lease record: its children are read
    /// only once it was finished, and the store forgets a finished shard's record once they
    /// started (see [`LeaseStore::forget_finished`]), so such a shard shows as finished without
    /// an owner, epoch or checkpoint.
    pub lease: LeaseState,
    /// Failed batch starts by the checkpoint they started after (poison-pill detection).
    pub failures: BTreeMap<String, u32>,
    /// Not finished, but a parent is not finished yet either: not read until it is.
    pub waiting_for_parents: bool,
    /// The live instance the balanced assignment gives this shard: what the fleet converges to.
    pub assigned_to: Option<String>,
}

/// A stream's shards with their leases, checkpoints and assignment, and the live instances: what
/// an operator needs to see who reads what. Built by [`stream_status`] or
/// [`KinesisQueue::stream_status`](crate::KinesisQueue::stream_status).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StreamStatus {
    /// The stream.
    pub stream: String,
    /// The instances whose membership heartbeat has not expired, sorted.
    pub live_instances: Vec<String>,
    /// Every shard `ListShards` returns and every shard the lease store knows, by shard id.
    pub shards: Vec<ShardStatus>,
}

/// Reads the status of `stream`: its shards (`ListShards` through `client`) beside their
/// leases, checkpoints and failure counts (through `store`, the same store the consumers use,
/// so a [`DurableLeaseStore`](crate::DurableLeaseStore) reports its durable checkpoints), the
/// live instances, and the balanced assignment every consumer computes from them. Read-only.
///
/// # Errors
///
/// [`Error::Kinesis`] when `ListShards` fails, [`Error::LeaseStore`] when the store does.
///
/// # Examples
///
/// ```no_run
/// use mq_kinesis::{InMemoryLeaseStore, stream_status};
///
/// # async fn f(client: aws_sdk_kinesis::Client) -> mq_kinesis::Result<()> {
/// let store = InMemoryLeaseStore::new();
/// let status = stream_status(&client, &store, "orders").await?;
/// for s in &status.shards {
///     println!(
///         "{} owner {:?} epoch {} checkpoint {:?} assigned to {:?}",
///         s.shard, s.lease.owner, s.lease.epoch, s.lease.checkpoint, s.assigned_to
///     );
/// }
/// # Ok(()) }
/// ```
pub async fn stream_status(
    client: &Client,
    store: &dyn LeaseStore,
    stream: &str,
) -> Result<StreamStatus> {
    let listed = list_shards(client, stream).await?;
    let leases = store.leases(stream).await?;
    let live_instances = store.live_instances(stream).await?;

    let mut shards: BTreeMap<String, ShardStatus> = BTreeMap::new();
    for s in &listed {
        shards.insert(
            s.shard_id().to_owned(),
            ShardStatus {
                shard: s.shard_id().to_owned(),
                listed: true,
                parent: s.parent_shard_id().map(str::to_owned),
                adjacent_parent: s.adjacent_parent_shard_id().map(str::to_owned),
                closed: ending_sequence_number(s).is_some(),
                ending_sequence_number: ending_sequence_number(s).map(str::to_owned),
                ..ShardStatus::default()
            },
        );
    }
    let known: HashSet<String> = leases.iter().map(|l| l.shard.clone()).collect();
    for lease in leases {
        let entry = shards
            .entry(lease.shard.clone())
            .or_insert_with(|| ShardStatus {
                shard: lease.shard.clone(),
                ..ShardStatus::default()
            });
        entry.lease = lease;
    }
    let links: Vec<(String, String)> = shards
        .values()
        .flat_map(|s| {
            [&s.parent, &s.adjacent_parent]
                .into_iter()
                .flatten()
                .map(|p| (p.clone(), s.shard.clone()))
        })
        .collect();
    for (parent, child) in links {
        if let Some(p) = shards.get_mut(&parent) {
            p.children.push(child);
        }
    }
    for s in shards.values_mut() {
        if s.lease.shard.is_empty() {
            s.lease.shard = s.shard.clone();
        }
        s.failures = store.failure_counts(stream, &s.shard).await?;
    }
    // what the consumers compute: which shards are finished (marked so, or the parent of a
    // shard that was started: a finished shard's record is forgotten once its children
    // started), which may be read, and who should read them
    let lineage: Vec<ShardLineage> = listed.iter().map(lineage_of).collect();
    let finished = finished_shards(
        &lineage,
        shards
            .values()
            .filter(|s| s.lease.finished)
            .map(|s| s.shard.clone()),
        &known,
    );
    for shard in &finished {
        if let Some(s) = shards.get_mut(shard) {
            s.lease.finished = true;
        }
    }
    let eligible = eligible_shards(&lineage, &finished);
    let current: BTreeMap<String, String> = shards
        .values()
        .filter(|s| s.lease.live)
        .filter_map(|s| {
            let owner = s.lease.owner.clone().filter(|o| !o.is_empty())?;
            Some((s.shard.clone(), owner))
        })
        .collect();
    for (instance, assigned) in balanced_assignment(&live_instances, &eligible, &current) {
        for shard in assigned {
            if let Some(s) = shards.get_mut(&shard) {
                s.assigned_to = Some(instance.clone());
            }
        }
    }
    for s in shards.values_mut() {
        s.waiting_for_parents =
            s.listed && !s.lease.finished && eligible.binary_search(&s.shard).is_err();
    }
    Ok(StreamStatus {
        stream: stream.to_owned(),
        live_instances,
        shards: shards.into_values().collect(),
    })
}
