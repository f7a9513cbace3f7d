-- psd read: one exact sum per group of hash field ranges.
--
-- KEYS       the hashes read, in order: group 1's reads, then group 2's, ...
--            (a key may appear more than once; every key read is declared here)
-- ARGV[1]    msgpack {template, ...}; a template is the field ranges of one group,
--            {first, last, first, last, ...}, one pair per hash read: first == ''
--            means every field of the hash (a whole year), first == last one field,
--            else fields first..last inclusive (same width: string order is time order);
--            '+first' is such a range whose whole-hash sum is also remembered, and
--            '=field' (last '') adds that field of the hash and subtracts the sums
--            remembered since the last '=' (a big range read as total minus edges)
-- ARGV[2]    msgpack {t, n, t, n, ...}: the next n groups follow template t, each
--            taking as many KEYS as t has pairs
-- Returns one string, the sums separated by ',' as exact decimal integers.  Lua
-- numbers are doubles, so each value is split into a high part (10^9s) and a low
-- part that each stay exact when added up, and printed without rounding.
local templates = cmsgpack.unpack(ARGV[1])
local runs = cmsgpack.unpack(ARGV[2])
local call, sub, byte, tonumber, format, floor = redis.call, string.sub, string.byte, tonumber, string.format, math.floor
local out, n, k = {}, 0, 0

local function exact(high, low)
  -- carry low into high so that 0 <= low < 10^9, then print high * 10^9 + low
  local carry = floor(low / 1e9)
  low = low - carry * 1e9
  if low < 0 then carry, low = carry - 1, low + 1e9 elseif low >= 1e9 then carry, low = carry + 1, low - 1e9 end
  high = high + carry
  if high == 0 then return format('%d', low) end
  if high > 0 then return format('%d%09d', high, low) end
  if low == 0 then return format('-%d000000000', -high) end
  high, low = -high - 1, 1e9 - low
  if high == 0 then return format('-%d', low) end
  return format('-%d%09d', high, low)
end

local function add(v, high, low)
  if #v <= 10 then return high, low + tonumber(v) end
  local l = tonumber(sub(v, -9))
  if byte(v, 1) == 45 then l = -l end
  return high + tonumber(sub(v, 1, -10)), low + l
end

for r = 1, #runs, 2 do
  local t = templates[runs[r]]
  local pairs_in_t = #t
  for _ = 1, runs[r + 1] do
    local high, low, whole_high, whole_low = 0, 0, 0, 0
    for i = 1, pairs_in_t, 2 do
      k = k + 1
      local first, last = t[i], t[i + 1]
      local key = KEYS[k]
      local mark = byte(first, 1)
      if mark == nil then
        local values = call('HVALS', key)
        for j = 1, #values do high, low = add(values[j], high, low) end
      elseif mark == 43 then  -- '+first': a range, and remember the whole hash's sum
        local all = call('HGETALL', key)
        first = sub(first, 2)
        for j = 1, #all, 2 do
          local f, v = all[j], all[j + 1]
          if f >= first and f <= last then high, low = add(v, high, low) end
          whole_high, whole_low = add(v, whole_high, whole_low)
        end
      elseif mark == 61 then  -- '=field': that field of this (parent) hash, minus what '+' remembered
        local v = call('HGET', key, sub(first, 2))
        if v then high, low = add(v, high, low) end
        high, low, whole_high, whole_low = high - whole_high, low - whole_low, 0, 0
      elseif first == last then
        local v = call('HGET', key, first)
        if v then high, low = add(v, high, low) end
      else
        local all = call('HGETALL', key)
        for j = 1, #all, 2 do
          local f = all[j]
          if f >= first and f <= last then high, low = add(all[j + 1], high, low) end
        end
      end
      if low > 1e15 or low < -1e15 then  -- keep low exact however many values a group adds
        local carry = floor(low / 1e9)
        high, low = high + carry, low - carry * 1e9
      end
    end
    n = n + 1
    out[n] = exact(high, low)
  end
end
return table.concat(out, ',')
