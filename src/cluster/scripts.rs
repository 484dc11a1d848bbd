//! The Lua scripts: each room change is one script, and Redis runs scripts one at a time,
//! so ids, names, history and each room's order come from one atomic step (see the module
//! docs of `cluster`). `Link` calls them through [`Scripts`].

use redis::Script;

/// Room 1 on a fresh Redis, once, whichever node starts first.
pub(super) const INIT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], 1)
redis.call('HSET', KEYS[2], 1, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], 1)
return 1"#;

/// KEYS: next_room_id, rooms, titles. ARGV: lower-cased title, room JSON, `max_rooms` (0:
/// no bound). The new id, 0 if the title is taken, -1 if `max_rooms` rooms exist.
pub(super) const CREATE: &str = r#"
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
local most = tonumber(ARGV[3])
if most > 0 and redis.call('HLEN', KEYS[2]) >= most then return -1 end
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], id)
return id"#;

/// KEYS: rooms, titles. ARGV: id, the JSON read before, the new JSON, old and new lower-cased
/// titles, and the room's channel when its password or visibility changes ('' if not):
/// then every node closes the room's sockets when the `a` event reaches it. 1 done, 0
/// changed meanwhile (read again), -1 gone, -2 title taken.
pub(super) const UPDATE: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return -1 end
if current ~= ARGV[2] then return 0 end
if ARGV[4] ~= ARGV[5] then
  if redis.call('HEXISTS', KEYS[2], ARGV[5]) == 1 then return -2 end
  redis.call('HDEL', KEYS[2], ARGV[4])
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], 'a -\n') end
return 1"#;

/// KEYS: rooms, titles, history, msgid, members. ARGV: id, the JSON read before, its
/// lower-cased title, channel, prefix. 1 done, 0 changed meanwhile, -1 gone. The members'
/// entries in their nodes' hashes go too, so no reaper meets them later.
pub(super) const DELETE: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return -1 end
if current ~= ARGV[2] then return 0 end
local members = redis.call('HGETALL', KEYS[5])
for i = 1, #members, 2 do
  local node = string.match(cjson.decode(members[i + 1]).owner, '^([^:]*):')
  if node then
    redis.call('HDEL', ARGV[5] .. 'node:' .. node .. ':members', ARGV[1] .. ':' .. members[i])
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('PUBLISH', ARGV[4], 'x -\n')
return 1"#;

/// KEYS: rooms, members, history, node members, node alive. ARGV: room id, lower-cased
/// name, member JSON, owner, leave head, since, join text, channel. `{1, replay}` joined,
/// `{0}` name taken, `{-1}` room gone, `{-2}` this node was reaped (it must start over).
pub(super) const JOIN: &str = r#"
if redis.call('EXISTS', KEYS[5]) == 0 then return {-2, {}} end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {-1, {}} end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return {0, {}} end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1] .. ':' .. ARGV[2], ARGV[4] .. '\n' .. ARGV[5])
redis.call('PUBLISH', ARGV[8], 'j ' .. ARGV[4] .. '\n' .. ARGV[7])
return {1, redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[6], '+inf')}"#;

/// KEYS: members, msgid, history. ARGV: lower-cased name, owner, member JSON, event text
/// without its id, history_len, channel. The message id, or -1 if the name is not this
/// socket's (any more).
pub(super) const SEND: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or cjson.decode(current).owner ~= ARGV[2] then return -1 end
local id = redis.call('INCR', KEYS[2])
local text = string.sub(ARGV[4], 1, -2) .. ',' .. '"id":' .. id .. '}'
local keep = tonumber(ARGV[5])
if keep > 0 then
  redis.call('ZADD', KEYS[3], id, text)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(keep + 1))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[6], 's ' .. ARGV[2] .. '\n' .. text)
return id"#;

/// KEYS: members, node members. ARGV: lower-cased name, owner, node field, leave text,
/// channel. 1 left, 0 the name was not this socket's (reaped, or its room deleted).
pub(super) const LEAVE: &str = r#"
local held = redis.call('HGET', KEYS[2], ARGV[3])
if held and string.sub(held, 1, #ARGV[2] + 1) == ARGV[2] .. '\n' then
  redis.call('HDEL', KEYS[2], ARGV[3])
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or cjson.decode(current).owner ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[5], 'l ' .. ARGV[2] .. '\n' .. ARGV[4])
return 1"#;

/// KEYS: nodes. ARGV: prefix, the time for the leave events, and a node id to retire now
/// ('' to retire every node whose heartbeat expired). Removes those nodes' members and
/// publishes their leaves; returns how many. Keys are built inside, so this needs one Redis,
/// not a Redis Cluster.
pub(super) const REAP: &str = r#"
local function retire(node)
  local held = ARGV[1] .. 'node:' .. node .. ':members'
  local fields = redis.call('HGETALL', held)
  local gone = 0
  for i = 1, #fields, 2 do
    local room, lower = string.match(fields[i], '^(%d+):(.*)$')
    local owner, head = string.match(fields[i + 1], '^([^\n]*)\n(.*)$')
    if room and owner then
      local members = ARGV[1] .. 'members:' .. room
      local current = redis.call('HGET', members, lower)
      if current and cjson.decode(current).owner == owner then
        redis.call('HDEL', members, lower)
        redis.call('PUBLISH', ARGV[1] .. 'room:' .. room, 'l -\n' .. head .. ARGV[2] .. '"}')
        gone = gone + 1
      end
    end
  end
  redis.call('DEL', held)
  redis.call('SREM', KEYS[1], node)
  return gone
end
if ARGV[3] ~= '' then return retire(ARGV[3]) end
local gone = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node .. ':alive') == 0 then
    gone = gone + retire(node)
  end
end
return gone"#;

/// The scripts, loaded once per link (`Script` sends the body only when Redis lacks it).
pub(super) struct Scripts {
    pub(super) init: Script,
    pub(super) create: Script,
    pub(super) update: Script,
    pub(super) delete: Script,
    pub(super) join: Script,
    pub(super) send: Script,
    pub(super) leave: Script,
    pub(super) reap: Script,
}
