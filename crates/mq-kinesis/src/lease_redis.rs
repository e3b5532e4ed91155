//! The Redis lease store (`fred`, Lua scripts, Redis Cluster safe).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Builder, Client, ClientLike, ReconnectPolicy, Value};
use fred::types::scripts::Script;
use futures::future::try_join_all;

use crate::error::{Error, Result};
use crate::lease::{CheckpointOutcome, Lease, LeaseState, LeaseStore, operator_checkpoint, ttl_ms};

mod keys;
mod scripts;

use keys::{Keys, MAX_SLOT_BUCKETS, Tag};
use scripts::Scripts;

/// Shard leases in Redis, for a fleet of instances.
///
/// Every mutation is one Lua script (so it is atomic), expiry uses the Redis server's clock
/// (`TIME`), and every script touches keys of one hash tag only, so it works on Redis Cluster.
///
/// # Key layout with one slot bucket (the default)
///
/// Every key of a stream shares the hash tag `{<stream>}`, so all of a stream's keys live in one
/// Cluster slot:
///
/// - `<prefix>:{<stream>}:lease:<shard>`: hash of owner, epoch, expires (ms), checkpoint,
///   finished, the membership the lease is tied to (empty for a lease with its own expiry),
///   and the run id of the server that granted it (a lease granted under another run that
///   ended without a release is reported with [`LeaseState::expiry_unconfirmed`]: a restart or
///   failover since may have lost the renewals that kept it alive);
/// - `<prefix>:{<stream>}:poison:<shard>`: hash of failure counts by checkpoint;
/// - `<prefix>:{<stream>}:shards`: set of the shards ever acquired;
/// - `<prefix>:{<stream>}:members`: sorted set of instances scored by heartbeat expiry;
/// - `<prefix>:{<stream>}:memberships`: hash of membership name to expiry (ms): one field an
///   instance, renewed by one call about every second whatever the instance owns;
/// - `<prefix>:{<stream>}:version`: hash whose field `v` counts the changes of hands and of
///   membership, so instances read every lease only after one;
/// - `<prefix>:{<stream>}:listing-lead`: hash of the membership of the instance that lists the
///   shards and when its lead ends (two discovery intervals after its last renewal), and
///   `<prefix>:{<stream>}:listing`: hash of the listing it published and when;
/// - `<prefix>:{<stream>}:layout`: hash whose field `buckets` records the number of slot
///   buckets the stream's keys use (see below).
///
/// # Key layout with `n` slot buckets
///
/// On Redis Cluster a stream with many shards puts all of its lease traffic on one node. With
/// [`slot_buckets(n)`](Self::slot_buckets), `n > 1`, shard `s` belongs to bucket
/// `b = fnv1a_32(s) % n`, where `fnv1a_32` is the 32-bit FNV-1a hash of the shard id's bytes
/// (offset basis 2166136261, prime 16777619; fixed, so every version and platform agrees), and
/// its keys move to the hash tag `{<stream>#<b>}`:
///
/// - `<prefix>:{<stream>#<b>}:lease:<shard>` and `<prefix>:{<stream>#<b>}:poison:<shard>`, as
///   above;
/// - `<prefix>:{<stream>#<b>}:shards`: the shards of bucket `b` ever acquired;
/// - `<prefix>:{<stream>#<b>}:memberships`: bucket `b`'s copy of the memberships hash, which
///   the lease scripts of bucket `b` check;
/// - `<prefix>:{<stream>#<b>}:version`: bucket `b`'s change counter;
///   [`lease_version`](LeaseStore::lease_version) is the sum over the buckets.
///
/// The stream-wide keys (`members`, `listing-lead`, `listing`, `layout`) stay under
/// `{<stream>}`. Joining, renewing and leaving a membership write every bucket's copy (`n`
/// calls sent at once, plus one for the instance list), and a renewal counts only when every
/// copy was renewed; the shard consumers' local deadline runs from when the renewal was sent,
/// so an instance that fails to renew some copies stops before any of them expires. The cost,
/// per instance and whatever the number of shards: `n + 1` calls per membership renewal
/// (about one a second), and `n` reads of the change counters per
/// [`lease_version`](LeaseStore::lease_version) (every rebalance interval, 250 ms by default);
/// listing every lease takes `n` calls. `cargo xtask bench fleet` measured 35 Redis commands a
/// second per instance with one bucket and 210 with 16 (8 instances, 1,024 shards, counting the
/// commands the scripts run).
///
/// The number of buckets of a stream is recorded in its `layout` key on first use; a store
/// configured with another number refuses to touch the stream's leases
/// ([`Error::InvalidOption`] naming both numbers), since two layouts in one fleet would not
/// see each other's leases. A stream used before the layout was recorded counts as having one
/// bucket. Changing the number means a new key prefix (or deleting the stream's keys) with the
/// fleet stopped; nothing is migrated.
///
/// Redis 6.2 or later (the scripts use `ZRANGE … BYSCORE`). Every script that reads `TIME` and
/// then writes asks for effect replication first, so replicas apply the same writes even where
/// that is not the default. Stream names must not contain `#`, `{` or `}` (Kinesis stream
/// names never do).
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> mq_kinesis::Result<()> {
/// let store = mq_kinesis::RedisLeaseStore::connect("redis://127.0.0.1:6379", "mq").await?;
/// // on Redis Cluster, for streams with many shards:
/// let cluster = mq_kinesis::RedisLeaseStore::connect("redis-cluster://127.0.0.1:7000", "mq")
///     .await?
///     .slot_buckets(16)?;
/// # let _ = (store, cluster); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLeaseStore {
    client: Client,
    keys: Keys,
    scripts: Arc<Scripts>,
    /// The streams whose recorded layout matched this store's.
    checked: Arc<Mutex<HashSet<String>>>,
}

impl fmt::Debug for RedisLeaseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLeaseStore")
            .field("prefix", &self.keys.prefix)
            .field("slot_buckets", &self.keys.buckets)
            .finish_non_exhaustive()
    }
}

/// The timeout of a call to Redis made by [`RedisLeaseStore::connect`]'s client.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisLeaseStore {
    /// Connects to `url` (`redis://host:port`, or `redis-cluster://host:port?node=host:port` for a
    /// cluster) and keys everything under `prefix`. Calls time out after 2 s and the client
    /// reconnects on its own after an outage; for other settings build the client yourself and
    /// use [`new`](Self::new).
    ///
    /// TLS (feature `tls`): `rediss://host:port` (or `rediss-cluster://`) checks the server's
    /// certificate and name against the system's root certificates, or, with
    /// `?ca_file=/path/to/ca.pem`, against the CA certificates in that PEM file only.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a prefix that is not 1 to 128 ASCII letters, digits or
    /// `- _ . : /` (checked before connecting), or a lease-store error when the URL is invalid
    /// or Redis cannot be reached.
    pub async fn connect(url: &str, prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        crate::redis_connect::check_prefix(&prefix)?;
        let config = crate::redis_connect::config_from_url(url)?;
        // A Redis that goes away must neither hang a renewal nor leave the client dead: calls
        // fail after a timeout (consumers then pause their shards) and the client reconnects
        // for as long as it takes.
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| Error::lease("connect", e))?;
        client
            .init()
            .await
            .map_err(|e| Error::lease("connect", e))?;
        Ok(Self::new(client, prefix))
    }

    /// Uses an initialised `fred` client (plain, sentinel or cluster), with one slot bucket.
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        RedisLeaseStore {
            client,
            keys: Keys {
                prefix: prefix.into(),
                buckets: 1,
            },
            scripts: Arc::new(Scripts::new()),
            checked: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Spreads each stream's per-shard keys over `n` hash tags, and so over up to `n` Redis
    /// Cluster slots (and the nodes that serve them), instead of one; see the key layout above.
    /// Worth it on Redis Cluster for streams with hundreds of shards. It costs, per instance
    /// and whatever the number of shards, `n + 1` calls per membership renewal (about one a
    /// second) and `n` reads per lease-version check (four a second by default), so keep `n`
    /// near a few times the number of Cluster nodes (16 suits most clusters). 1, the default,
    /// keeps every key of a stream in one slot.
    ///
    /// Every instance of a fleet must use the same `n`: the first use of a stream records it,
    /// and a store with another `n` refuses that stream's leases.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for `slot_buckets` when `n` is 0 or above 1024.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> mq_kinesis::Result<()> {
    /// let store = mq_kinesis::RedisLeaseStore::connect("redis-cluster://127.0.0.1:7000", "mq")
    ///     .await?
    ///     .slot_buckets(16)?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub fn slot_buckets(mut self, n: u16) -> Result<Self> {
        if n == 0 || n > MAX_SLOT_BUCKETS {
            return Err(Error::InvalidOption {
                field: "slot_buckets",
                reason: format!("{n} slot buckets; use 1 to {MAX_SLOT_BUCKETS}"),
            });
        }
        self.keys.buckets = n;
        // another layout: the streams must be checked against it
        self.checked = Arc::new(Mutex::new(HashSet::new()));
        Ok(self)
    }

    /// The number of slot buckets each stream's keys are spread over (1 unless set with
    /// [`slot_buckets`](Self::slot_buckets)).
    pub fn get_slot_buckets(&self) -> u16 {
        self.keys.buckets
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Checks, once per stream (again on every join), that the stream's recorded layout is this
    /// store's, recording it on first use.
    async fn check_layout(&self, stream: &str, again: bool) -> Result<()> {
        if !again && self.is_checked(stream) {
            return Ok(());
        }
        let v = self
            .run(
                "check_layout",
                &self.scripts.layout,
                vec![
                    self.keys.layout(stream),
                    self.keys.version(stream, Tag::Stream),
                ],
                vec![Value::from(self.keys.buckets.to_string())],
            )
            .await?;
        let recorded = v
            .as_u64()
            .ok_or_else(|| Error::lease("check_layout", format!("unexpected reply {v:?}")))?;
        if recorded != u64::from(self.keys.buckets) {
            return Err(Error::InvalidOption {
                field: "slot_buckets",
                reason: format!(
                    "stream {stream:?} under prefix {:?} keeps its leases in {recorded} slot bucket(s), \
                     this store is set to {}; set {recorded} on every instance and tool \
                     (`RedisLeaseStore::slot_buckets`, `mqctl kinesis --slot-buckets`), or stop \
                     the fleet and start the stream over under a new prefix",
                    self.keys.prefix, self.keys.buckets
                ),
            });
        }
        if let Ok(mut checked) = self.checked.lock() {
            checked.insert(stream.to_owned());
        }
        Ok(())
    }

    fn is_checked(&self, stream: &str) -> bool {
        self.checked
            .lock()
            .map(|c| c.contains(stream))
            .unwrap_or(false)
    }

    async fn acquire_with(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        membership: Option<&str>,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        self.check_layout(stream, false).await?;
        let tag = self.keys.shard_tag(shard);
        let v = self
            .run(
                "acquire",
                &self.scripts.acquire,
                vec![
                    self.keys.lease(stream, shard),
                    self.keys.shards(stream, tag),
                    self.keys.memberships(stream, tag),
                    self.keys.version(stream, tag),
                ],
                vec![
                    Value::from(owner),
                    Value::from(ttl_ms(ttl).to_string()),
                    Value::from(shard),
                    Value::from(epoch_floor.to_string()),
                    Value::from(membership.unwrap_or_default()),
                ],
            )
            .await?;
        let items = v.into_array();
        if items.first().and_then(Value::as_i64) != Some(1) || items.len() < 4 {
            return Ok(None);
        }
        Ok(Some(Lease {
            stream: stream.to_owned(),
            shard: shard.to_owned(),
            owner: owner.to_owned(),
            epoch: as_u64(&items[1]),
            expires_at_ms: as_u64(&items[2]),
            checkpoint: as_opt_string(&items[3]),
            membership: membership.map(str::to_owned),
        }))
    }

    /// [`LeaseStore::join`] (`renew` false) or [`LeaseStore::renew_membership`]: true when
    /// every bucket's copy of the membership was kept, false when one had expired.
    async fn keep(
        &self,
        operation: &'static str,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
        renew: bool,
    ) -> Result<bool> {
        self.check_layout(stream, !renew).await?;
        let args = vec![
            Value::from(instance),
            Value::from(ttl_ms(ttl).to_string()),
            Value::from(membership),
            Value::from(if renew { "1" } else { "0" }),
        ];
        if self.keys.buckets <= 1 {
            let v = self
                .run(
                    operation,
                    &self.scripts.keep,
                    vec![
                        self.keys.memberships(stream, Tag::Stream),
                        self.keys.members(stream),
                        self.keys.version(stream, Tag::Stream),
                    ],
                    args,
                )
                .await?;
            return Ok(v.as_i64() == Some(1));
        }
        // every copy at once; the instance is listed only once all of them are kept
        let copies = self.keys.tags().into_iter().map(|tag| {
            self.run(
                operation,
                &self.scripts.keep_copy,
                vec![
                    self.keys.memberships(stream, tag),
                    self.keys.version(stream, tag),
                ],
                args.clone(),
            )
        });
        let kept = try_join_all(copies).await?;
        if !kept.iter().all(|v| v.as_i64() == Some(1)) {
            return Ok(false);
        }
        self.run(
            operation,
            &self.scripts.heartbeat,
            self.keys.members(stream),
            vec![Value::from(instance), Value::from(ttl_ms(ttl).to_string())],
        )
        .await?;
        Ok(true)
    }

    async fn run(
        &self,
        operation: &'static str,
        script: &Script,
        keys: impl Into<fred::types::MultipleKeys> + Send,
        args: Vec<Value>,
    ) -> Result<Value> {
        script
            .evalsha_with_reload::<Value, _, _>(&self.client, keys, args)
            .await
            .map_err(|e| Error::lease(operation, e))
    }

    /// [`LeaseStore::force_release`], or [`LeaseStore::set_checkpoint`] with a `checkpoint`.
    async fn override_lease(
        &self,
        operation: &'static str,
        stream: &str,
        shard: &str,
        checkpoint: Option<String>,
    ) -> Result<LeaseState> {
        self.check_layout(stream, false).await?;
        let tag = self.keys.shard_tag(shard);
        self.run(
            operation,
            &self.scripts.override_,
            vec![
                self.keys.lease(stream, shard),
                self.keys.shards(stream, tag),
                self.keys.version(stream, tag),
            ],
            vec![
                Value::from(shard),
                Value::from(checkpoint.unwrap_or_default()),
            ],
        )
        .await?;
        self.state(stream, shard).await
    }

    async fn guarded(
        &self,
        operation: &'static str,
        script: &Script,
        lease: &Lease,
        extra: Option<Value>,
    ) -> Result<i64> {
        let mut args = vec![
            Value::from(lease.owner.as_str()),
            Value::from(lease.epoch.to_string()),
        ];
        args.extend(extra);
        self.check_layout(&lease.stream, false).await?;
        let tag = self.keys.shard_tag(&lease.shard);
        let v = self
            .run(
                operation,
                script,
                vec![
                    self.keys.lease(&lease.stream, &lease.shard),
                    self.keys.memberships(&lease.stream, tag),
                    self.keys.version(&lease.stream, tag),
                ],
                args,
            )
            .await?;
        v.as_i64()
            .ok_or_else(|| Error::lease(operation, format!("unexpected reply {v:?}")))
    }
}

fn as_u64(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn as_opt_string(v: &Value) -> Option<String> {
    v.as_string().filter(|s| !s.is_empty())
}

/// A shard's state from the STATE script's reply (a LIST row after its shard): owner, epoch,
/// expiry, checkpoint, finished, live, membership, expiry unconfirmed. `None` when the reply is
/// too short.
fn parse_state(shard: String, items: &[Value]) -> Option<LeaseState> {
    let [
        owner,
        epoch,
        expires,
        checkpoint,
        finished,
        live,
        membership,
        unconfirmed,
        ..,
    ] = items
    else {
        return None;
    };
    Some(LeaseState {
        shard,
        owner: as_opt_string(owner),
        epoch: as_u64(epoch),
        expires_at_ms: as_u64(expires),
        checkpoint: as_opt_string(checkpoint),
        finished: finished.as_string().as_deref() == Some("1"),
        live: live.as_i64() == Some(1),
        membership: as_opt_string(membership),
        expiry_unconfirmed: unconfirmed.as_i64() == Some(1),
    })
}

#[async_trait]
impl LeaseStore for RedisLeaseStore {
    async fn acquire_above(
        &self,
        stream: &str,
        shard: &str,
        owner: &str,
        ttl: Duration,
        epoch_floor: u64,
    ) -> Result<Option<Lease>> {
        self.acquire_with(stream, shard, owner, None, ttl, epoch_floor)
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
        self.acquire_with(stream, shard, owner, Some(membership), ttl, epoch_floor)
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
        let r = self
            .guarded(
                "renew",
                &self.scripts.renew,
                lease,
                Some(Value::from(ttl_ms(ttl).to_string())),
            )
            .await?;
        Ok(r == 1)
    }

    async fn checkpoint(&self, lease: &Lease, sequence_number: &str) -> Result<CheckpointOutcome> {
        let seq = sequence_number.trim_start_matches('0');
        let r = self
            .guarded(
                "checkpoint",
                &self.scripts.checkpoint,
                lease,
                Some(Value::from(if seq.is_empty() { "0" } else { seq })),
            )
            .await?;
        Ok(match r {
            1 => CheckpointOutcome::Advanced,
            0 => CheckpointOutcome::NotForward,
            _ => CheckpointOutcome::Fenced,
        })
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        Ok(self
            .guarded("release", &self.scripts.release, lease, None)
            .await?
            == 1)
    }

    async fn finish(&self, lease: &Lease) -> Result<bool> {
        Ok(self
            .guarded("finish", &self.scripts.finish, lease, None)
            .await?
            == 1)
    }

    async fn lead_listing(&self, stream: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let v = self
            .run(
                "lead_listing",
                &self.scripts.lead,
                vec![self.keys.listing_lead(stream)],
                vec![Value::from(holder), Value::from(ttl_ms(ttl).to_string())],
            )
            .await?;
        Ok(v.as_i64() == Some(1))
    }

    async fn publish_listing(&self, stream: &str, listing: &str) -> Result<()> {
        self.run(
            "publish_listing",
            &self.scripts.publish,
            vec![self.keys.listing(stream)],
            vec![Value::from(listing)],
        )
        .await?;
        Ok(())
    }

    async fn published_listing(&self, stream: &str) -> Result<Option<(String, Duration)>> {
        let v = self
            .run(
                "published_listing",
                &self.scripts.published,
                vec![self.keys.listing(stream)],
                vec![],
            )
            .await?;
        let items = v.into_array();
        Ok(match items.as_slice() {
            [listing, age] => listing
                .as_string()
                .map(|l| (l, Duration::from_millis(as_u64(age)))),
            _ => None,
        })
    }

    async fn forget_finished(&self, stream: &str, shard: &str) -> Result<bool> {
        self.check_layout(stream, false).await?;
        let v = self
            .run(
                "forget_finished",
                &self.scripts.forget,
                vec![
                    self.keys.lease(stream, shard),
                    self.keys.shards(stream, self.keys.shard_tag(shard)),
                    self.keys.poison(stream, shard),
                ],
                vec![Value::from(shard)],
            )
            .await?;
        Ok(v.as_i64() == Some(1))
    }

    async fn state(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        self.check_layout(stream, false).await?;
        let v = self
            .run(
                "state",
                &self.scripts.state,
                vec![
                    self.keys.lease(stream, shard),
                    self.keys.memberships(stream, self.keys.shard_tag(shard)),
                ],
                vec![],
            )
            .await?;
        parse_state(shard.to_owned(), &v.into_array())
            .ok_or_else(|| Error::lease("state", "unexpected reply from the state script"))
    }

    async fn leases(&self, stream: &str) -> Result<Vec<LeaseState>> {
        self.check_layout(stream, false).await?;
        let buckets = self.keys.tags().into_iter().map(|tag| {
            self.run(
                "leases",
                &self.scripts.list,
                vec![
                    self.keys.shards(stream, tag),
                    self.keys.memberships(stream, tag),
                ],
                vec![Value::from(self.keys.lease_prefix(stream, tag))],
            )
        });
        let mut out = Vec::new();
        for v in try_join_all(buckets).await? {
            for row in v.into_array() {
                let items = row.into_array();
                let state = items.split_first().and_then(|(shard, rest)| {
                    parse_state(shard.as_string().unwrap_or_default(), rest)
                });
                out.push(state.ok_or_else(|| {
                    Error::lease("leases", "unexpected reply from the list script")
                })?);
            }
        }
        out.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(out)
    }

    async fn record_failure(&self, stream: &str, shard: &str, checkpoint: &str) -> Result<u32> {
        use fred::interfaces::HashesInterface;
        self.check_layout(stream, false).await?;
        let n: i64 = self
            .client
            .hincrby(self.keys.poison(stream, shard), checkpoint, 1)
            .await
            .map_err(|e| Error::lease("record_failure", e))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn failure_counts(&self, stream: &str, shard: &str) -> Result<BTreeMap<String, u32>> {
        use fred::interfaces::HashesInterface;
        self.check_layout(stream, false).await?;
        let counts: HashMap<String, i64> = self
            .client
            .hgetall(self.keys.poison(stream, shard))
            .await
            .map_err(|e| Error::lease("failure_counts", e))?;
        Ok(counts
            .into_iter()
            .map(|(k, v)| (k, u32::try_from(v).unwrap_or(0)))
            .collect())
    }

    async fn clear_failures(&self, stream: &str, shard: &str) -> Result<()> {
        use fred::interfaces::KeysInterface;
        self.check_layout(stream, false).await?;
        let _: i64 = self
            .client
            .del(self.keys.poison(stream, shard))
            .await
            .map_err(|e| Error::lease("clear_failures", e))?;
        Ok(())
    }

    async fn heartbeat(&self, stream: &str, instance: &str, ttl: Duration) -> Result<()> {
        self.run(
            "heartbeat",
            &self.scripts.heartbeat,
            self.keys.members(stream),
            vec![Value::from(instance), Value::from(ttl_ms(ttl).to_string())],
        )
        .await?;
        Ok(())
    }

    async fn join(
        &self,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.keep("join", stream, instance, membership, ttl, false)
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
        self.keep("renew_membership", stream, instance, membership, ttl, true)
            .await
    }

    async fn check_stream(&self, stream: &str) -> Result<()> {
        self.check_layout(stream, true).await
    }

    async fn lease_version(&self, stream: &str) -> Result<Option<u64>> {
        use fred::interfaces::HashesInterface;
        self.check_layout(stream, false).await?;
        let reads = self.keys.tags().into_iter().map(|tag| {
            let client = &self.client;
            let key = self.keys.version(stream, tag);
            async move {
                let v: Option<u64> = client
                    .hget(key, "v")
                    .await
                    .map_err(|e| Error::lease("lease_version", e))?;
                Ok::<_, Error>(v.unwrap_or_default())
            }
        });
        // each bucket's counter only grows, so their sum moves whenever one does
        let versions = try_join_all(reads).await?;
        Ok(Some(
            versions
                .into_iter()
                .fold(0u64, |sum, v| sum.wrapping_add(v)),
        ))
    }

    async fn leave(&self, stream: &str, instance: &str, membership: &str) -> Result<()> {
        self.check_layout(stream, false).await?;
        if self.keys.buckets <= 1 {
            self.run(
                "leave",
                &self.scripts.leave,
                vec![
                    self.keys.memberships(stream, Tag::Stream),
                    self.keys.members(stream),
                    self.keys.version(stream, Tag::Stream),
                ],
                vec![Value::from(instance), Value::from(membership)],
            )
            .await?;
            return Ok(());
        }
        let copies = self.keys.tags().into_iter().map(|tag| {
            self.run(
                "leave",
                &self.scripts.leave_copy,
                vec![
                    self.keys.memberships(stream, tag),
                    self.keys.version(stream, tag),
                ],
                vec![Value::from(membership)],
            )
        });
        let unlisted = self.run(
            "leave",
            &self.scripts.unlist,
            self.keys.members(stream),
            vec![Value::from(instance)],
        );
        futures::future::try_join(try_join_all(copies), unlisted).await?;
        Ok(())
    }

    async fn live_instances(&self, stream: &str) -> Result<Vec<String>> {
        let v = self
            .run(
                "live_instances",
                &self.scripts.live,
                self.keys.members(stream),
                vec![],
            )
            .await?;
        let mut out: Vec<String> = v.into_array().iter().filter_map(Value::as_string).collect();
        out.sort();
        Ok(out)
    }
}
