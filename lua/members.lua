-- psd members: the members of several sets in one reply (a user's activity types).
--
-- KEYS       the sets
-- Returns one string: each set's members joined by ',', the sets separated by ';'
-- (one reply to parse instead of one multi-bulk per set).
local out = {}
for i = 1, #KEYS do
  out[i] = table.concat(redis.call('SMEMBERS', KEYS[i]), ',')
end
return table.concat(out, ';')
