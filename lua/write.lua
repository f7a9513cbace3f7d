-- psd write: apply one batch of coalesced increments, all or nothing, at most once per key.
--
-- KEYS           idempotency keys of the parts in this batch
-- ARGV[1]        msgpack {ttl, prefixes, hashes, totals, members, history_cap, history_ttl}
--   prefixes     hash key prefixes ("hz:{uid}:{atid}:{metric}:"); the rest names them by index
--   hashes       {prefix, bucket, n, field, delta (n times), prefix, ...}: HINCRBY on the hash
--                prefix .. bucket (delta: number, or a decimal string beyond 2^53); flat, as a
--                table per hash would cost Redis more than the increments themselves
--   totals       {{totals key, aid, total, key head, key tail, atid, second, history key, ts}, ...}:
--                set-total writes (see below); a series' hash prefix is head .. atid .. tail
--   history_cap, history_ttl   the bound of each activity's set-total history
--   members      {key, member, ...}: SADD, e.g. the activity types a user has written
-- ARGV[2]        msgpack {i = digest, ...}: KEYS[i] is recorded with this digest of its request's
--                content (an Idempotency-Key); the other keys are recorded as 1
-- Returns {0} when applied, {1, i, ...} naming the idempotency keys already seen
-- (then nothing was written; -i: KEYS[i] was recorded with another digest, a conflict),
-- or an error reply with every write of this call undone.
local args = cmsgpack.unpack(ARGV[1])
local ttl, prefixes, hashes, totals, members = args[1], args[2], args[3], args[4], args[5]
local digests = ARGV[2] and cmsgpack.unpack(ARGV[2]) or {}

-- One EXISTS per 1,000 keys (unpack's stack limit), and per key only when some were seen.
-- A key recorded as 1 (no digest, or recorded before digests existed) matches any content.
local seen = {}
for first = 1, #KEYS, 1000 do
  local last = math.min(first + 999, #KEYS)
  if redis.call('EXISTS', unpack(KEYS, first, last)) > 0 then
    for i = first, last do
      local recorded = redis.call('GET', KEYS[i])
      if recorded then
        local digest = digests[i]
        if digest == nil or recorded == '1' or recorded == digest then seen[#seen + 1] = i else seen[#seen + 1] = -i end
      end
    end
  end
end
if #seen > 0 then
  table.insert(seen, 1, 1)
  return seen
end

local function negate(delta)
  if type(delta) == 'number' then return -delta end
  if string.sub(delta, 1, 1) == '-' then return string.sub(delta, 2) end
  return '-' .. delta
end

-- A field is undone by the opposite increment; one that ends at 0 is removed (and its hash
-- with it when that was its last field), so a field the call created does not stay behind.
local function undo_increment(key, field, delta)
  if redis.call('HINCRBY', key, field, negate(delta)) == 0 then
    redis.call('HDEL', key, field)
  end
end

-- What has been applied is known from the arguments and the position reached, so the
-- increments (most of a call's work) keep no undo log; the rare other writes keep closures.
local extra_done = 0
local extra = {}
local undo = {}
local function fail(err, failed_field)  -- Redis' own message, so OOM reads as OOM (try later) and overflow as ERR (refused)
  for i = #undo, 1, -1 do undo[i]() end
  for e = extra_done, 1, -1 do
    if extra[e][3] ~= 0 then undo_increment(extra[e][1], extra[e][2], extra[e][3]) end
  end
  local h = 1
  while h < failed_field do
    local key, last = prefixes[hashes[h]] .. hashes[h + 1], h + 1 + 2 * hashes[h + 2]
    for f = h + 3, math.min(last, failed_field - 2), 2 do undo_increment(key, hashes[f], hashes[f + 1]) end
    h = last + 2
  end
  return redis.error_reply(err.err)
end

-- Set-total writes, order-independent.  Each activity keeps a history of (ts, total) points in
-- a sorted set (score ts, member "second|total|atid").  A total T at ts between the kept points
-- (tp, Tp) and (tn, Tn) writes +(T - Tp) at ts and -(T - Tp) at tn; at a kept ts it replaces that
-- point and moves tn the same way; a repeated (ts, T) writes nothing.  So the sums are those of
-- the totals applied in time order, whatever order they arrive in.  The history keeps at most
-- `history_cap` points (the oldest go first) and expires `history_ttl` seconds after the
-- activity's last update; a total older than the oldest point it still knows is refused.
-- The totals hash keeps, per activity, the newest point (field aid: total, aid:ts) and the
-- floor (aid:floor) below which the history is gone; it seeds a history that expired, or one
-- written before histories existed (its total then counts as the total from the beginning).
local MAX_EXACT = 9007199254740992
local extra_at = {}
local function add_diff(head, tail, atid, second, diff)
  local function add(prefix)
    for width = 4, 12, 2 do
      local tkey, tfield = prefix .. string.sub(second, 1, width), string.sub(second, 1, width + 2)
      local tid = tkey .. '\0' .. tfield
      local at = extra_at[tid]
      if at and math.abs(extra[at][3] + diff) <= MAX_EXACT then
        extra[at][3] = extra[at][3] + diff
      else
        extra[#extra + 1] = {tkey, tfield, diff}
        extra_at[tid] = #extra
      end
    end
  end
  add(head .. atid .. tail)
  if atid ~= '0' then add(head .. '0' .. tail) end
end

local function checked(reply)  -- a Redis error reply becomes a failure of the whole call
  if type(reply) == 'table' and reply.err then error(reply) end
  return reply
end

local function zset_add(key, score, member)
  if checked(redis.pcall('ZADD', key, score, member)) == 1 then
    undo[#undo + 1] = function() redis.call('ZREM', key, member) end
  end
end

local function zset_remove(key, score, member)
  redis.call('ZREM', key, member)
  undo[#undo + 1] = function() redis.call('ZADD', key, score, member) end
end

local function int(n)  -- an integer as Redis and the members spell it (tostring would say 9e+15)
  return string.format('%d', n)
end

local function point_of(member)  -- second, total (text), atid
  return string.match(member, '^(%d+)|(%d+)|(%d+)$')
end

local function first(...)  -- the first member and score of a ZRANGE-like reply WITHSCORES, or nil
  local reply = checked(redis.pcall(...))
  if reply[1] then return reply[1], tonumber(reply[2]) end
end

local history_cap, history_ttl = args[6], args[7]
-- Per activity, its fields in the totals hash: read once per call, written once at the end.
local STATE_FIELDS = {'', ':ts', ':second', ':atid', ':floor'}  -- total, ts, second, atid, floor
local states, touched = {}, {}
local function state_of(tkey, aid, hkey, atid)
  local id = hkey
  local state = states[id]
  if state then return state end
  local names = {}
  for i, suffix in ipairs(STATE_FIELDS) do names[i] = aid .. suffix end
  local values = checked(redis.pcall('HMGET', tkey, unpack(names)))
  state = {key = tkey, names = names, old = {}, new = {}}
  for i = 1, #names do
    state.old[i] = values[i] or false
    state.new[i] = values[i] or false
  end
  states[id] = state
  touched[#touched + 1] = state
  if state.new[1] and checked(redis.pcall('EXISTS', hkey)) == 0 then
    -- the history expired, or predates histories: its newest point is all psd knows, and the floor
    local last_ts = state.new[2] or '-1'
    zset_add(hkey, tonumber(last_ts), (state.new[3] or '0') .. '|' .. state.new[1] .. '|' .. (state.new[4] or atid))
    state.new[5] = last_ts
  end
  return state
end

local function apply_total(entry)
  local tkey, aid, total, head, tail, atid, second, hkey, ts = unpack(entry)
  local state = state_of(tkey, aid, hkey, atid)
  local floor = tonumber(state.new[5])
  if floor and ts < floor then
    error({err = 'ERR psd: the set-total of activity ' .. aid .. ' at ' .. int(ts) .. ' is older than the ' ..
                 'history psd keeps of it (from ' .. int(floor) .. ' on): nothing was written'})
  end
  local newest_ts = tonumber(state.new[2])
  local later = newest_ts == nil or ts > newest_ts  -- the common case: no point at or after ts
  local here, here_score
  if not later then here, here_score = first('ZRANGEBYSCORE', hkey, ts, ts, 'WITHSCORES', 'LIMIT', 0, 1) end
  local base
  if later then
    base = tonumber(state.new[1]) or 0
  elseif here then
    local _, here_total = point_of(here)
    if tonumber(here_total) == total then return end
    base = tonumber(here_total)
    zset_remove(hkey, here_score, here)
  else
    local before = first('ZREVRANGEBYSCORE', hkey, '(' .. int(ts), '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
    local _, before_total = point_of(before or '')
    base = tonumber(before_total) or 0
  end
  local diff = total - base
  if diff ~= 0 then
    add_diff(head, tail, atid, second, diff)
    local after = not later and first('ZRANGEBYSCORE', hkey, '(' .. int(ts), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if after then
      local after_second, _, after_atid = point_of(after)
      add_diff(head, tail, after_atid, after_second, -diff)
    end
  end
  zset_add(hkey, ts, second .. '|' .. int(total) .. '|' .. atid)
  if later or ts == newest_ts then  -- the newest point (trims never take it)
    state.new[1], state.new[2], state.new[3], state.new[4] = int(total), int(ts), second, atid
  end
  local size = checked(redis.pcall('ZCARD', hkey))
  if size > history_cap then  -- the oldest points go; the new oldest is the floor
    local oldest = checked(redis.pcall('ZRANGE', hkey, 0, size - history_cap - 1, 'WITHSCORES'))
    for i = 1, #oldest, 2 do zset_remove(hkey, oldest[i + 1], oldest[i]) end
    local _, floor_score = first('ZRANGE', hkey, 0, 0, 'WITHSCORES')
    state.new[5] = int(floor_score)
  end
  if history_ttl > 0 then redis.call('EXPIRE', hkey, history_ttl) end
end

-- The totals hash fields that changed, in one HSET per activity, with what puts them back.
local function save_state(state)
  local changed = {}
  for i = 1, #state.names do
    if state.new[i] ~= state.old[i] then
      changed[#changed + 1] = state.names[i]
      changed[#changed + 1] = state.new[i]
    end
  end
  if #changed == 0 then return end
  checked(redis.pcall('HSET', state.key, unpack(changed)))
  undo[#undo + 1] = function()
    for i = 1, #state.names do
      if state.old[i] then redis.call('HSET', state.key, state.names[i], state.old[i])
      else redis.call('HDEL', state.key, state.names[i]) end
    end
  end
end

local totals_ok, totals_err = pcall(function()
  for _, entry in ipairs(totals) do apply_total(entry) end
  for _, state in ipairs(touched) do save_state(state) end
end)
if not totals_ok then
  if type(totals_err) ~= 'table' then totals_err = {err = 'ERR psd: ' .. tostring(totals_err)} end
  return fail(totals_err, 1)
end

local h, all_hashes = 1, #hashes + 1
while h < all_hashes do
  local key, last = prefixes[hashes[h]] .. hashes[h + 1], h + 1 + 2 * hashes[h + 2]
  for f = h + 3, last, 2 do
    local r = redis.pcall('HINCRBY', key, hashes[f], hashes[f + 1])
    if type(r) == 'table' then return fail(r, f) end
  end
  h = last + 2
end
for e = 1, #extra do
  local x = extra[e]
  if x[3] ~= 0 then
    local r = redis.pcall('HINCRBY', x[1], x[2], x[3])
    if type(r) == 'table' then return fail(r, all_hashes) end
  end
  extra_done = e
end
for m = 1, #members, 2 do
  local key, member = members[m], members[m + 1]
  local r = redis.pcall('SADD', key, member)
  if type(r) == 'table' and r.err then return fail(r, all_hashes) end
  if r == 1 then undo[#undo + 1] = function() redis.call('SREM', key, member) end end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], digests[i] or 1, 'EX', ttl, 'NX')
end
return {0}
