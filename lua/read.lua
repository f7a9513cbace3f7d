-- psd read: one sum per group of hash field ranges, exact beyond 2^53.
--
-- KEYS       the hashes read; "j" below indexes them
-- ARGV[1]    msgpack {{j, first, last, j, first, last, ...}, ...}: one list per sum;
--            first == '' means every field of hash j (a whole year), else fields
--            first..last inclusive (same width, so string order is time order)
-- Returns {high1, low1, high2, low2, ...}: sum k is high_k * 10^9 + low_k.  Lua
-- numbers are doubles, so values are split into a high and a low part that each
-- stay exact when added up.
local groups = cmsgpack.unpack(ARGV[1])
local result = {}
for g, reads in ipairs(groups) do
  local high, low = 0, 0
  local function add(v)
    if #v <= 10 then
      low = low + tonumber(v)
    else
      local h, l = tonumber(string.sub(v, 1, -10)), tonumber(string.sub(v, -9))
      high = high + h
      if string.sub(v, 1, 1) == '-' then low = low - l else low = low + l end
    end
  end
  for r = 1, #reads, 3 do
    local key, first, last = KEYS[reads[r]], reads[r + 1], reads[r + 2]
    if first == '' then
      for _, v in ipairs(redis.call('HVALS', key)) do add(v) end
    else
      local all = redis.call('HGETALL', key)
      for i = 1, #all, 2 do
        local f = all[i]
        if f >= first and f <= last then add(all[i + 1]) end
      end
    end
  end
  result[2 * g - 1] = high
  result[2 * g] = low
end
return result
