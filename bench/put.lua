-- Writes: PUT /api/{route}/{prefix}{n} with a JSON value, cycling over BENCH_KEYS keys (few keys:
-- many writes per key, what write-behind coalesces).
--   BENCH_ROUTE        write-through or write-behind
--   BENCH_PREFIX       key prefix (letters, digits and : . _ - only)
--   BENCH_KEYS         how many distinct keys (default 1000)
--   BENCH_VALUE_BYTES  size of the JSON value (default 100)
dofile((os.getenv("BENCH_DIR") or "bench") .. "/check.lua")

local route = os.getenv("BENCH_ROUTE") or "write-through"
local prefix = os.getenv("BENCH_PREFIX") or "w:"
local keys = tonumber(os.getenv("BENCH_KEYS") or "1000")
local size = tonumber(os.getenv("BENCH_VALUE_BYTES") or "100")
assert(prefix:match("^[%w:._-]*$"), "BENCH_PREFIX must need no escaping: " .. prefix)

-- {"v":"xxx…"} of `size` bytes in all.
local body = '{"v":"' .. string.rep("x", math.max(size - 8, 0)) .. '"}'
local headers = { ["Content-Type"] = "application/json", ["User-Agent"] = "bench" }

-- Each thread starts at another key, so that threads do not write in lockstep.
local n = 0
function init(args)
  n = ((thread_id or 1) * 7919) % keys
end

function request()
  n = (n + 1) % keys
  return wrk.format("PUT", "/api/" .. route .. "/" .. prefix .. n, headers, body)
end
