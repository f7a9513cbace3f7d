-- psd write: apply one batch of coalesced increments, all or nothing, at most once per key.
--
-- KEYS[1..nd]    idempotency keys of the parts in this batch
-- KEYS[nd+1..]   hash keys; "j" below is an index into this second list
-- ARGV[1]        msgpack {ttl, nd, incr, totals, members}
--   incr[j]      {field, delta, field, delta, ...} for hash j (delta: number, or a
--                decimal string when it does not fit a double exactly)
--   totals       {{j, field, new_total, {j, field, j, field, ...}}, ...}: set-total
--                writes in order; the difference to the stored total goes to the targets
--   members      {j, member, ...}: SADD, e.g. the activity types a user has written
-- Returns {0} when applied, {1, i, ...} naming the idempotency keys already seen
-- (then nothing was written), or an error reply with every write of this call undone.
local args = cmsgpack.unpack(ARGV[1])
local ttl, nd, incr, totals, members = args[1], args[2], args[3], args[4], args[5]

local seen = {}
for i = 1, nd do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    seen[#seen + 1] = i
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

-- Undo log: increments in flat arrays (no closure per increment: most of a call's work),
-- the rare other writes as closures.  They touch different keys, so only the order
-- within each list matters.
local undo = {}
local undo_keys, undo_fields, undo_deltas, undone = {}, {}, {}, 0
local function fail(err)  -- Redis' own message, so OOM reads as OOM (try later) and overflow as ERR (refused)
  for i = undone, 1, -1 do
    local delta = undo_deltas[i]
    if delta then
      redis.call('HINCRBY', undo_keys[i], undo_fields[i], negate(delta))
    else
      redis.call('HDEL', undo_keys[i], undo_fields[i])
    end
  end
  for i = #undo, 1, -1 do undo[i]() end
  return redis.error_reply(err.err)
end

-- Set-total differences, read before anything is written.
local MAX_EXACT = 9007199254740992
local extra, extra_at = {}, {}
local stored = {}
for _, entry in ipairs(totals) do
  local key, field = KEYS[nd + entry[1]], entry[2]
  local id = key .. '\0' .. field
  if stored[id] == nil then
    local current = redis.pcall('HGET', key, field)
    if type(current) == 'table' and current.err then return fail(current) end
    stored[id] = {key, field, current, tonumber(current) or 0}
  end
  local diff = entry[3] - stored[id][4]
  stored[id][4] = entry[3]
  if diff ~= 0 then
    local targets = entry[4]
    for t = 1, #targets, 2 do
      local tkey, tfield = KEYS[nd + targets[t]], targets[t + 1]
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
end

local function increment(key, field, delta)
  local r = redis.pcall('HINCRBY', key, field, delta)
  if type(r) == 'table' and r.err then return r end
  undone = undone + 1
  undo_keys[undone], undo_fields[undone] = key, field
  -- a new field is undone by removing it (and the hash, if it was its only field)
  undo_deltas[undone] = r ~= delta and delta
end

for j, fields in ipairs(incr) do
  local key = KEYS[nd + j]
  for f = 1, #fields, 2 do
    local err = increment(key, fields[f], fields[f + 1])
    if err then return fail(err) end
  end
end
for _, e in ipairs(extra) do
  if e[3] ~= 0 then
    local err = increment(e[1], e[2], e[3])
    if err then return fail(err) end
  end
end
for _, s in pairs(stored) do
  local key, field, previous = s[1], s[2], s[3]
  local r = redis.pcall('HSET', key, field, s[4])
  if type(r) == 'table' and r.err then return fail(r) end
  undo[#undo + 1] = function()
    if previous then redis.call('HSET', key, field, previous) else redis.call('HDEL', key, field) end
  end
end
for m = 1, #members, 2 do
  local key, member = KEYS[nd + members[m]], members[m + 1]
  local r = redis.pcall('SADD', key, member)
  if type(r) == 'table' and r.err then return fail(r) end
  if r == 1 then undo[#undo + 1] = function() redis.call('SREM', key, member) end end
end
for i = 1, nd do
  redis.call('SET', KEYS[i], 1, 'EX', ttl, 'NX')
end
return {0}
