//! The Lua scripts of the Redis lease store. Each touches the keys of one hash tag only, so it
//! runs on Redis Cluster.

use fred::types::scripts::Script;

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
-- the server's run id, which changes when it restarts or a replica takes over: a lease
-- acquired under another one may have lost the renewals that came after ('' when an ACL rule
-- refuses INFO: no lease is then told apart)
local run_id_seen
local function run_id()
  if run_id_seen == nil then
    local info = redis.pcall('INFO', 'server')
    run_id_seen = type(info) == 'string' and string.match(info, 'run_id:(%x+)') or ''
  end
  return run_id_seen
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
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', epoch, 'expires', exp, 'membership', ARGV[5], 'run', run_id())
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

/// One state row: owner, epoch, expires, checkpoint, finished, live, membership, and 1 when the
/// lease, acquired under an earlier run of the server, ended without a release (its expiry is
/// unconfirmed).
const ROW: &str = "
local function row(h, mkey)
  local exp = tonumber(h[3] or '0')
  if h[1] and h[1] ~= '' and h[6] and h[6] ~= '' then exp = member_expiry(mkey, h[6]) end
  local live = 0
  if held(h[1], h[3], h[6], mkey) then live = 1 end
  local unconfirmed = 0
  if live == 0 and h[1] and h[1] ~= '' and h[7] ~= run_id() then unconfirmed = 1 end
  return {h[1] or '', tonumber(h[2] or '0'), exp, h[4] or '', h[5] or '0', live, h[6] or '', unconfirmed}
end
";

/// KEYS[1] lease hash, KEYS[2] memberships hash → one state row.
const STATE: &str = "
return row(redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'expires', 'checkpoint', 'finished', 'membership', 'run'), KEYS[2])";

/// KEYS[1] shard index set, KEYS[2] memberships hash; ARGV lease key prefix → one state row per
/// shard, after its shard id.
const LIST: &str = "
local out = {}
for _, shard in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local r = row(redis.call('HMGET', ARGV[1] .. shard, 'owner', 'epoch', 'expires', 'checkpoint', 'finished', 'membership', 'run'), KEYS[2])
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

/// Keeps membership `m` in the memberships hash `mkey` for `ttl` ms; `renew` '1' renews only a
/// live one (0 when it had expired), otherwise it starts it, drops expired memberships and
/// counts a change in the version hash `vkey` → 1, or 0.
const KEEP_COPY_FN: &str = "
local function keep_copy(mkey, vkey, m, ttl, renew)
  if renew == '1' then
    if member_expiry(mkey, m) <= now then return 0 end
  else
    redis.call('HINCRBY', vkey, 'v', 1)
    local all = redis.call('HGETALL', mkey)
    for i = 1, #all, 2 do
      if tonumber(all[i + 1]) <= now then redis.call('HDEL', mkey, all[i]) end
    end
  end
  redis.call('HSET', mkey, m, now + ttl)
  redis.call('PEXPIREAT', mkey, now + math.max(ttl, 86400000))
  return 1
end
";

/// KEYS[1] memberships hash, KEYS[2] members set, KEYS[3] version hash; ARGV instance, ttl_ms,
/// membership, '1' to renew only a live one → 1, or 0 when it had expired.
const KEEP: &str = "
local ttl = tonumber(ARGV[2])
if keep_copy(KEYS[1], KEYS[3], ARGV[3], ttl, ARGV[4]) == 0 then return 0 end
list_member(KEYS[2], ARGV[1], ttl)
return 1";

/// One slot bucket's copy of a membership: KEYS[1] the bucket's memberships hash, KEYS[2] its
/// version hash; ARGV as [`KEEP`] → 1, or 0 when it had expired.
const KEEP_COPY: &str = "return keep_copy(KEYS[1], KEYS[2], ARGV[3], tonumber(ARGV[2]), ARGV[4])";

/// KEYS[1] memberships hash, KEYS[2] members set, KEYS[3] version hash; ARGV instance,
/// membership.
const LEAVE: &str = "
redis.call('HINCRBY', KEYS[3], 'v', 1)
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1";

/// One slot bucket's copy of a membership ends: KEYS[1] the bucket's memberships hash, KEYS[2]
/// its version hash; ARGV membership.
const LEAVE_COPY: &str = "
redis.call('HINCRBY', KEYS[2], 'v', 1)
redis.call('HDEL', KEYS[1], ARGV[1])
return 1";

/// KEYS[1] members set; ARGV instance: no longer listed.
const UNLIST: &str = "redis.call('ZREM', KEYS[1], ARGV[1]) return 1";

/// KEYS[1] layout hash, KEYS[2] the version hash of the one-bucket layout; ARGV buckets → the
/// number of slot buckets the stream's keys use: the recorded one, else 1 when keys of the
/// one-bucket layout exist (kept from before the layout was recorded), else ARGV[1], recorded.
const LAYOUT: &str = "
local n = redis.call('HGET', KEYS[1], 'buckets')
if n then return tonumber(n) end
if ARGV[1] ~= '1' and redis.call('HGET', KEYS[2], 'v') then return 1 end
redis.call('HSET', KEYS[1], 'buckets', ARGV[1])
return tonumber(ARGV[1])";

const LIVE: &str = "
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], '(' .. now, '+inf', 'BYSCORE')";

/// The scripts, each loaded once per server.
pub(super) struct Scripts {
    pub(super) acquire: Script,
    pub(super) override_: Script,
    pub(super) renew: Script,
    pub(super) checkpoint: Script,
    pub(super) release: Script,
    pub(super) finish: Script,
    pub(super) forget: Script,
    pub(super) lead: Script,
    pub(super) publish: Script,
    pub(super) published: Script,
    pub(super) state: Script,
    pub(super) list: Script,
    pub(super) heartbeat: Script,
    pub(super) live: Script,
    pub(super) keep: Script,
    pub(super) keep_copy: Script,
    pub(super) leave: Script,
    pub(super) leave_copy: Script,
    pub(super) unlist: Script,
    pub(super) layout: Script,
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

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
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
            keep: Script::from_lua(format!("{NOW}{LIST_MEMBER}{KEEP_COPY_FN}{KEEP}")),
            keep_copy: Script::from_lua(format!("{NOW}{KEEP_COPY_FN}{KEEP_COPY}")),
            leave: script(LEAVE),
            leave_copy: Script::from_lua(LEAVE_COPY),
            unlist: Script::from_lua(UNLIST),
            layout: Script::from_lua(LAYOUT),
        }
    }
}
