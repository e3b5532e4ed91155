//! The Redis lease store (`fred`, Lua scripts, Redis Cluster safe).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Builder, Client, ClientLike, ReconnectPolicy, Value};
use fred::types::scripts::Script;

use crate::error::{Error, Result};
use crate::lease::{CheckpointOutcome, Lease, LeaseState, LeaseStore, operator_checkpoint, ttl_ms};

/// Server time in ms, and whether a lease is held, shared by every script. Scripts that read
/// `TIME` and then write replicate their effects, not themselves (the default from Redis 5 on;
/// Redis 3.2 and 4 need the explicit switch, which later versions accept as a no-op).
const NOW: &str = "
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function member_expiry(mkey, m)
  local e = redis.call('HGET', mkey, m)
  if e then return tonumber(e) end
  return 0
end
local function held(owner, exp, m, mkey)
  if not owner or owner == '' then return false end
  if m and m ~= '' then return member_expiry(mkey, m) > now end
  return tonumber(exp or '0') > now
end
";

/// KEYS[1] lease hash, KEYS[2] shard index set, KEYS[3] memberships hash, KEYS[4] version hash;
/// ARGV owner, ttl_ms,
/// shard, epoch floor, membership ('' for a lease with its own expiry) →
/// {1, epoch, expires, checkpoint} or {0}.
const ACQUIRE: &str = "
redis.call('SADD', KEYS[2], ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'expires', 'checkpoint', 'finished', 'membership')
if h[5] == '1' then return {0} end
if held(h[1], h[3], h[6], KEYS[3]) then return {0} end
local exp = now + tonumber(ARGV[2])
if ARGV[5] ~= '' then
  exp = member_expiry(KEYS[3], ARGV[5])
  if exp <= now then return {0} end
end
local epoch = math.max(tonumber(h[2] or '0'), tonumber(ARGV[4] or '0')) + 1
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', epoch, 'expires', exp, 'membership', ARGV[5])
redis.call('HINCRBY', KEYS[4], 'v', 1)
return {1, epoch, exp, h[4] or ''}";

/// The compare-and-set guard of every mutation: KEYS[1] lease hash, KEYS[2] memberships hash,
/// KEYS[3] version hash, ARGV[1] owner, ARGV[2] epoch.
const GUARD: &str = "
local h = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'checkpoint', 'membership')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then return -1 end
";

/// A lease tied to a membership is only confirmed; one with its own expiry is extended.
const RENEW: &str = "
if h[4] and h[4] ~= '' then
  if held(h[1], 0, h[4], KEYS[2]) then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'expires', now + tonumber(ARGV[3])) return 1";

const CHECKPOINT: &str = "
local new, cur = ARGV[3], h[3]
if cur and cur ~= '' and (#new < #cur or (#new == #cur and new <= cur)) then return 0 end
redis.call('HSET', KEYS[1], 'checkpoint', new) return 1";

/// KEYS[1] lease hash, KEYS[2] shard index set, KEYS[3] version hash; ARGV shard, and a
/// checkpoint or '' → new epoch.
const OVERRIDE: &str = "
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'v', 1)
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') + 1
redis.call('HSET', KEYS[1], 'owner', '', 'expires', 0, 'epoch', epoch, 'membership', '')
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'checkpoint', ARGV[2]) end
return epoch";

const RELEASE: &str = "
redis.call('HSET', KEYS[1], 'owner', '', 'expires', 0, 'membership', '')
redis.call('HINCRBY', KEYS[3], 'v', 1)
return 1";

const FINISH: &str =
    "redis.call('HSET', KEYS[1], 'finished', '1') redis.call('HINCRBY', KEYS[3], 'v', 1) return 1";

/// KEYS[1] lease hash, KEYS[2] shard index set, KEYS[3] failure counts; ARGV shard → 1 when
/// the shard was finished and is forgotten now.
const FORGET: &str = "
if redis.call('HGET', KEYS[1], 'finished') ~= '1' then return 0 end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
return 1";

/// KEYS[1] listing lead hash; ARGV holder, ttl_ms → 1 when the holder leads now.
const LEAD: &str = "
local h = redis.call('HMGET', KEYS[1], 'holder', 'expires')
if h[1] and h[1] ~= ARGV[1] and tonumber(h[2] or '0') > now then return 0 end
local exp = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'expires', exp)
redis.call('PEXPIREAT', KEYS[1], exp + 86400000)
return 1";

/// KEYS[1] listing hash; ARGV listing: stores it with the server's time.
const PUBLISH: &str = "
redis.call('HSET', KEYS[1], 'listing', ARGV[1], 'at', now)
redis.call('PEXPIREAT', KEYS[1], now + 86400000)
return 1";

/// KEYS[1] listing hash → {listing, age in ms} or {}.
const PUBLISHED: &str = "
local h = redis.call('HMGET', KEYS[1], 'listing', 'at')
if not h[1] then return {} end
return {h[1], math.max(0, now - tonumber(h[2] or '0'))}";

/// One state row: owner, epoch, expires, checkpoint, finished, live, membership.
const ROW: &str = "
local function row(h, mkey)
  local exp = tonumber(h[3] or '0')
  if h[1] and h[1] ~= '' and h[6] and h[6] ~= '' then exp = member_expiry(mkey, h[6]) end
  local live = 0
  if held(h[1], h[3], h[6], mkey) then live = 1 end
  return {h[1] or '', tonumber(h[2] or '0'), exp, h[4] or '', h[5] or '0', live, h[6] or ''}
end
";

/// KEYS[1] lease hash, KEYS[2] memberships hash → one state row.
const STATE: &str = "
return row(redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'expires', 'checkpoint', 'finished', 'membership'), KEYS[2])";

/// KEYS[1] shard index set, KEYS[2] memberships hash; ARGV lease key prefix → one state row per
/// shard, after its shard id.
const LIST: &str = "
local out = {}
for _, shard in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local r = row(redis.call('HMGET', ARGV[1] .. shard, 'owner', 'epoch', 'expires', 'checkpoint', 'finished', 'membership'), KEYS[2])
  table.insert(r, 1, shard)
  table.insert(out, r)
end
return out";

/// Lists ARGV[1] in the members sorted set KEYS[1] for ARGV[2] ms.
const LIST_MEMBER: &str = "
local function list_member(key, instance, ttl)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('ZADD', key, now + ttl, instance)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', key, math.floor(tonumber(last[2])) + 1000)
end
";

const HEARTBEAT: &str = "list_member(KEYS[1], ARGV[1], tonumber(ARGV[2])) return 1";

/// KEYS[1] memberships hash, KEYS[2] members set, KEYS[3] version hash; ARGV instance, ttl_ms,
/// membership, '1' to renew only a live one → 1, or 0 when it had expired.
const KEEP: &str = "
local ttl = tonumber(ARGV[2])
if ARGV[4] == '1' then
  if member_expiry(KEYS[1], ARGV[3]) <= now then return 0 end
else
  redis.call('HINCRBY', KEYS[3], 'v', 1)
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) <= now then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
redis.call('HSET', KEYS[1], ARGV[3], now + ttl)
redis.call('PEXPIREAT', KEYS[1], now + math.max(ttl, 86400000))
list_member(KEYS[2], ARGV[1], ttl)
return 1";

/// KEYS[1] memberships hash, KEYS[2] members set, KEYS[3] version hash; ARGV instance,
/// membership.
const LEAVE: &str = "
redis.call('HINCRBY', KEYS[3], 'v', 1)
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1";

const LIVE: &str = "
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], '(' .. now, '+inf', 'BYSCORE')";

/// Shard leases in Redis, for a fleet of instances.
///
/// Every mutation is one Lua script (so it is atomic), expiry uses the Redis server's clock
/// (`TIME`), and every key of a stream shares the hash tag `{<stream>}`, so all of a stream's
/// keys live in one slot and the scripts work on Redis Cluster:
///
/// - `<prefix>:{<stream>}:lease:<shard>`: hash of owner, epoch, expires (ms), checkpoint,
///   finished, and the membership the lease is tied to (empty for a lease with its own expiry);
/// - `<prefix>:{<stream>}:poison:<shard>`: hash of failure counts by checkpoint;
/// - `<prefix>:{<stream>}:shards`: set of the shards ever acquired;
/// - `<prefix>:{<stream>}:members`: sorted set of instances scored by heartbeat expiry;
/// - `<prefix>:{<stream>}:memberships`: hash of membership name to expiry (ms): one field an
///   instance, renewed by one call about every second whatever the instance owns;
/// - `<prefix>:{<stream>}:version`: hash whose field `v` counts the changes of hands and of
///   membership, so instances read every lease only after one;
/// - `<prefix>:{<stream>}:listing-lead`: hash of the membership of the instance that lists the
///   shards and when its lead ends (two discovery intervals after its last renewal), and `<prefix>:{<stream>}:listing`: hash of the
///   listing it published and when.
///
/// Redis 6.2 or later (the scripts use `ZRANGE … BYSCORE`). Every script that reads `TIME` and
/// then writes asks for effect replication first, so replicas apply the same writes even where
/// that is not the default.
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> mq_kinesis::Result<()> {
/// let store = mq_kinesis::RedisLeaseStore::connect("redis://127.0.0.1:6379", "mq").await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLeaseStore {
    client: Client,
    prefix: String,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    acquire: Script,
    override_: Script,
    renew: Script,
    checkpoint: Script,
    release: Script,
    finish: Script,
    forget: Script,
    lead: Script,
    publish: Script,
    published: Script,
    state: Script,
    list: Script,
    heartbeat: Script,
    live: Script,
    keep: Script,
    leave: Script,
}

impl fmt::Debug for RedisLeaseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLeaseStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn script(body: &str) -> Script {
    Script::from_lua(format!("{NOW}{body}"))
}

fn guarded(body: &str) -> Script {
    Script::from_lua(format!("{NOW}{GUARD}{body}"))
}

fn with_rows(body: &str) -> Script {
    Script::from_lua(format!("{NOW}{ROW}{body}"))
}

fn with_members(body: &str) -> Script {
    Script::from_lua(format!("{NOW}{LIST_MEMBER}{body}"))
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

    /// Uses an initialised `fred` client (plain, sentinel or cluster).
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        RedisLeaseStore {
            client,
            prefix: prefix.into(),
            scripts: std::sync::Arc::new(Scripts {
                acquire: script(ACQUIRE),
                override_: script(OVERRIDE),
                renew: guarded(RENEW),
                checkpoint: guarded(CHECKPOINT),
                release: guarded(RELEASE),
                finish: guarded(FINISH),
                forget: Script::from_lua(FORGET),
                lead: script(LEAD),
                publish: script(PUBLISH),
                published: script(PUBLISHED),
                state: with_rows(STATE),
                list: with_rows(LIST),
                heartbeat: with_members(HEARTBEAT),
                live: script(LIVE),
                keep: with_members(KEEP),
                leave: script(LEAVE),
            }),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn key(&self, stream: &str, kind: &str, shard: &str) -> String {
        format!("{}:{{{stream}}}:{kind}:{shard}", self.prefix)
    }

    fn shards_key(&self, stream: &str) -> String {
        format!("{}:{{{stream}}}:shards", self.prefix)
    }

    fn members_key(&self, stream: &str) -> String {
        format!("{}:{{{stream}}}:members", self.prefix)
    }

    fn memberships_key(&self, stream: &str) -> String {
        format!("{}:{{{stream}}}:memberships", self.prefix)
    }

    fn version_key(&self, stream: &str) -> String {
        format!("{}:{{{stream}}}:version", self.prefix)
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
        let v = self
            .run(
                "acquire",
                &self.scripts.acquire,
                vec![
                    self.key(stream, "lease", shard),
                    self.shards_key(stream),
                    self.memberships_key(stream),
                    self.version_key(stream),
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

    /// [`LeaseStore::join`] (`renew` false) or [`LeaseStore::renew_membership`].
    async fn keep(
        &self,
        operation: &'static str,
        stream: &str,
        instance: &str,
        membership: &str,
        ttl: Duration,
        renew: bool,
    ) -> Result<bool> {
        let v = self
            .run(
                operation,
                &self.scripts.keep,
                vec![
                    self.memberships_key(stream),
                    self.members_key(stream),
                    self.version_key(stream),
                ],
                vec![
                    Value::from(instance),
                    Value::from(ttl_ms(ttl).to_string()),
                    Value::from(membership),
                    Value::from(if renew { "1" } else { "0" }),
                ],
            )
            .await?;
        Ok(v.as_i64() == Some(1))
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
        self.run(
            operation,
            &self.scripts.override_,
            vec![
                self.key(stream, "lease", shard),
                self.shards_key(stream),
                self.version_key(stream),
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
        let v = self
            .run(
                operation,
                script,
                vec![
                    self.key(&lease.stream, "lease", &lease.shard),
                    self.memberships_key(&lease.stream),
                    self.version_key(&lease.stream),
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
/// expiry, checkpoint, finished, live, membership. `None` when the reply is too short.
fn parse_state(shard: String, items: &[Value]) -> Option<LeaseState> {
    let [
        owner,
        epoch,
        expires,
        checkpoint,
        finished,
        live,
        membership,
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
                vec![format!("{}:{{{stream}}}:listing-lead", self.prefix)],
                vec![Value::from(holder), Value::from(ttl_ms(ttl).to_string())],
            )
            .await?;
        Ok(v.as_i64() == Some(1))
    }

    async fn publish_listing(&self, stream: &str, listing: &str) -> Result<()> {
        self.run(
            "publish_listing",
            &self.scripts.publish,
            vec![format!("{}:{{{stream}}}:listing", self.prefix)],
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
                vec![format!("{}:{{{stream}}}:listing", self.prefix)],
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
        let v = self
            .run(
                "forget_finished",
                &self.scripts.forget,
                vec![
                    self.key(stream, "lease", shard),
                    self.shards_key(stream),
                    self.key(stream, "poison", shard),
                ],
                vec![Value::from(shard)],
            )
            .await?;
        Ok(v.as_i64() == Some(1))
    }

    async fn state(&self, stream: &str, shard: &str) -> Result<LeaseState> {
        let v = self
            .run(
                "state",
                &self.scripts.state,
                vec![
                    self.key(stream, "lease", shard),
                    self.memberships_key(stream),
                ],
                vec![],
            )
            .await?;
        parse_state(shard.to_owned(), &v.into_array())
            .ok_or_else(|| Error::lease("state", "unexpected reply from the state script"))
    }

    async fn leases(&self, stream: &str) -> Result<Vec<LeaseState>> {
        let v = self
            .run(
                "leases",
                &self.scripts.list,
                vec![self.shards_key(stream), self.memberships_key(stream)],
                vec![Value::from(self.key(stream, "lease", ""))],
            )
            .await?;
        let mut out = Vec::new();
        for row in v.into_array() {
            let items = row.into_array();
            let state = items
                .split_first()
                .and_then(|(shard, rest)| parse_state(shard.as_string().unwrap_or_default(), rest));
            out.push(
                state.ok_or_else(|| {
                    Error::lease("leases", "unexpected reply from the list script")
                })?,
            );
        }
        out.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(out)
    }

    async fn record_failure(&self, stream: &str, shard: &str, checkpoint: &str) -> Result<u32> {
        use fred::interfaces::HashesInterface;
        let n: i64 = self
            .client
            .hincrby(self.key(stream, "poison", shard), checkpoint, 1)
            .await
            .map_err(|e| Error::lease("record_failure", e))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn failure_counts(&self, stream: &str, shard: &str) -> Result<BTreeMap<String, u32>> {
        use fred::interfaces::HashesInterface;
        let counts: HashMap<String, i64> = self
            .client
            .hgetall(self.key(stream, "poison", shard))
            .await
            .map_err(|e| Error::lease("failure_counts", e))?;
        Ok(counts
            .into_iter()
            .map(|(k, v)| (k, u32::try_from(v).unwrap_or(0)))
            .collect())
    }

    async fn clear_failures(&self, stream: &str, shard: &str) -> Result<()> {
        use fred::interfaces::KeysInterface;
        let _: i64 = self
            .client
            .del(self.key(stream, "poison", shard))
            .await
            .map_err(|e| Error::lease("clear_failures", e))?;
        Ok(())
    }

    async fn heartbeat(&self, stream: &str, instance: &str, ttl: Duration) -> Result<()> {
        self.run(
            "heartbeat",
            &self.scripts.heartbeat,
            self.members_key(stream),
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

    async fn lease_version(&self, stream: &str) -> Result<Option<u64>> {
        use fred::interfaces::HashesInterface;
        let v: Option<u64> = self
            .client
            .hget(self.version_key(stream), "v")
            .await
            .map_err(|e| Error::lease("lease_version", e))?;
        Ok(Some(v.unwrap_or_default()))
    }

    async fn leave(&self, stream: &str, instance: &str, membership: &str) -> Result<()> {
        self.run(
            "leave",
            &self.scripts.leave,
            vec![
                self.memberships_key(stream),
                self.members_key(stream),
                self.version_key(stream),
            ],
            vec![Value::from(instance), Value::from(membership)],
        )
        .await?;
        Ok(())
    }

    async fn live_instances(&self, stream: &str) -> Result<Vec<String>> {
        let v = self
            .run(
                "live_instances",
                &self.scripts.live,
                self.members_key(stream),
                vec![],
            )
            .await?;
        let mut out: Vec<String> = v.into_array().iter().filter_map(Value::as_string).collect();
        out.sort();
        Ok(out)
    }
}
