//! The Lua scripts, each run with `EVAL` (atomic on the server, one round trip). They are small,
//! and only settling a failure, claiming and trimming use them, so they are sent whole each time
//! rather than cached.

/// Claims a group's entries idle for at least the given time (`XAUTOCLAIM`), acks away the ones
/// deleted meanwhile (by a trim), and returns each claimed entry's delivery count.
///
/// KEYS: stream. ARGV: group, consumer, min-idle ms, cursor, count.
/// Returns `{next cursor, entries, counts, deleted}`.
pub(super) const CLAIM: &str = r#"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local entries, counts, deleted = {}, {}, 0
for _, e in ipairs(r[2]) do
  if type(e[2]) == 'table' then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    entries[#entries + 1] = e
    counts[#counts + 1] = (p[1] and p[1][4]) or 1
  else
    redis.call('XACK', KEYS[1], ARGV[1], e[1])
    deleted = deleted + 1
  end
end
for _, id in ipairs(r[3] or {}) do
  redis.call('XACK', KEYS[1], ARGV[1], id)
  deleted = deleted + 1
end
return {r[1], entries, counts, deleted}
"#;

/// Delivers one pending entry again to the consumer that holds it (`XCLAIM`, which counts a
/// delivery), only if that consumer still holds it: an entry acked, or claimed by another
/// consumer meanwhile, is left alone. An entry deleted meanwhile is acked away.
///
/// KEYS: stream. ARGV: group, consumer, id.
/// Returns `{count, entry}`, `{0}` when deleted, or `false` when not held by the consumer.
pub(super) const REDELIVER: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return false end
local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3])
if not c[1] or type(c[1][2]) ~= 'table' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  return {0}
end
return {p[1][4] + 1, c[1]}
"#;

/// Sets the idle time of pending entries the consumer still holds, without counting a delivery
/// (`XCLAIM ... IDLE ms JUSTID`): 0 keeps a delayed nack from being claimed early; a long time
/// gives the entries back (any subscription of the group claims them at its next look).
///
/// KEYS: stream. ARGV: group, consumer, idle ms, ids... Returns how many were changed.
pub(super) const SET_IDLE: &str = r#"
local n = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    n = n + 1
  end
end
return n
"#;

/// Rejects a pending entry: acks it and, if it was still pending, appends a copy to the dead
/// letter stream with the reason, the original topic and the entry's id.
///
/// KEYS: stream, dead-letter stream. ARGV: group, id, reason, topic.
/// Returns 1 if dead-lettered, else 0.
pub(super) const REJECT: &str = r#"
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 0 or not e[1] then return 0 end
local f = e[1][2]
local extra = {'m:millstream.poison.reason', ARGV[3], 'm:millstream.poison.topic', ARGV[4],
  'm:millstream.redis.group', ARGV[1], 'm:millstream.redis.entry', ARGV[2]}
for _, v in ipairs(extra) do f[#f + 1] = v end
redis.call('XADD', KEYS[2], '*', unpack(f))
return 1
"#;

/// Trims a stream, never below any group's position: the cut (by length or age) is lowered to
/// each group's oldest pending entry, or to the entry after the last one the group was given.
/// At most 10 000 entries go per call when trimming by length.
///
/// KEYS: stream. ARGV: `maxlen` and a count, or `maxage` and milliseconds.
/// Returns how many entries were removed.
pub(super) const TRIM: &str = r#"
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return 0 end
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms, tonumber(seq)
end
local function less(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  return as < bs
end
local limit
if ARGV[1] == 'maxlen' then
  local excess = redis.call('XLEN', key) - tonumber(ARGV[2])
  if excess <= 0 then return 0 end
  if excess > 10000 then excess = 10000 end
  local r = redis.call('XRANGE', key, '-', '+', 'COUNT', excess + 1)
  if #r <= excess then return 0 end
  limit = r[#r][1]
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local cut = now - tonumber(ARGV[2])
  if cut <= 0 then return 0 end
  limit = string.format('%.0f-0', cut)
end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local p = redis.call('XPENDING', key, name)
  local bound
  if p[1] > 0 then
    bound = p[2]
  else
    local ms, seq = split(last)
    bound = ms .. '-' .. string.format('%.0f', seq + 1)
  end
  if less(bound, limit) then limit = bound end
end
return redis.call('XTRIM', key, 'MINID', limit)
"#;

/// Deletes a group's consumers that hold no pending entry and have been idle at least the given
/// time, except the caller. Checked and deleted in one script, so a consumer that holds an entry
/// is never deleted (deleting it would drop its entries from the group's pending list).
///
/// KEYS: stream. ARGV: group, idle ms, the caller's consumer. Returns how many were deleted.
pub(super) const FORGET_CONSUMERS: &str = r#"
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if pending == 0 and idle >= tonumber(ARGV[2]) and name ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    n = n + 1
  end
end
return n
"#;
