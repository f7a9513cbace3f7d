-- wrk script for workload (c): one random point per request, value 1, so that
-- the Redis total equals the number of points applied.
local base = tonumber(os.getenv("BENCH_BASE_TS"))
local users = tonumber(os.getenv("BENCH_USERS"))
local span = tonumber(os.getenv("BENCH_SPAN"))
math.randomseed(os.time())
local headers = {["Content-Type"] = "application/json"}

request = function()
  local body = string.format('{"uid":%d,"atid":%d,"metric":"points","value":1,"ts":%d}',
    math.random(1, users), math.random(1, 5), base + math.random(0, span - 1))
  return wrk.format("POST", "/v1/points", headers, body)
end
