-- psd write: apply one batch of coalesced increments, all or nothing, at most once per key.
--
-- KEYS           idempotency keys of the parts in this batch
-- ARGV[1]        msgpack {ttl, prefixes, hashes, totals, members}
--   prefixes     hash key prefixes ("hz:{uid}:{atid}:{metric}:"); the rest names them by index
--   hashes       {prefix, bucket, n, field, delta (n times), prefix, ...}: HINCRBY on the hash
--                prefix .. bucket (delta: number, or a decimal string beyond 2^53); flat, as a
--                table per hash would cost Redis more than the increments themselves
--   totals       {{totals key, aid, new total, {prefix, ...}, second}, ...}: set-total writes in
--                order; the difference to the stored total goes to the five levels of `second`
--                under each prefix
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

-- Set-total differences, read before anything is written.
local MAX_EXACT = 9007199254740992
local extra_at = {}
local stored = {}
for _, entry in ipairs(totals) do
  local key, field = entry[1], entry[2]
  local id = key .. '\0' .. field
  if stored[id] == nil then
    local current = redis.pcall('HGET', key, field)
    if type(current) == 'table' and current.err then return fail(current, 1) end
    stored[id] = {key, field, current, tonumber(current) or 0}
  end
  local diff = entry[3] - stored[id][4]
  stored[id][4] = entry[3]
  if diff ~= 0 then
    local second = entry[5]
    for _, p in ipairs(entry[4]) do
      local prefix = prefixes[p]
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
  end
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
for _, s in pairs(stored) do
  local key, field, previous = s[1], s[2], s[3]
  local r = redis.pcall('HSET', key, field, s[4])
  if type(r) == 'table' and r.err then return fail(r, all_hashes) end
  undo[#undo + 1] = function()
    if previous then redis.call('HSET', key, field, previous) else redis.call('HDEL', key, field) end
  end
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
