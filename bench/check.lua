-- Shared by the wrk scripts of scripts/bench.sh: counts the answers that were what the scenario
-- expects, and prints the counts when wrk is done.
--
-- Answers are checked only when BENCH_CHECK=1 (the short check pass before the timed runs):
-- defining wrk's `response` makes wrk hand every answer's headers and body to Lua, which costs the
-- load generator time, so timed runs leave it undefined.
--   BENCH_STATUS  the status expected (default 200)
--   BENCH_EXPECT  "name=value": a header the answer must carry (e.g. x-cache-tier=l1); in payload
--                 mode it is looked up in the invocation's `res.headers` instead
--   BENCH_PAYLOAD 1 when the answer is a payload-mode envelope (the function's status and headers
--                 are inside `Outputs.res`)

local want_status = tonumber(os.getenv("BENCH_STATUS") or "200")
local want_name, want_value = (os.getenv("BENCH_EXPECT") or ""):match("^([^=]+)=(.*)$")
local payload = os.getenv("BENCH_PAYLOAD") == "1"

ok, bad, sample = 0, 0, ""

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

local function header(headers, name)
  for k, v in pairs(headers) do
    if k:lower() == name then return v end
  end
  return nil
end

local function good(status, headers, body)
  if payload then
    -- The envelope is 200 whenever the function ran; the function's answer is in Outputs.res.
    if status ~= 200 then return false, "envelope status " .. status end
    local code = body:match('"statusCode":"?(%d+)')
    if tonumber(code) ~= want_status then return false, "res.statusCode " .. tostring(code) end
    if want_name and not body:find('"' .. want_name .. '":"' .. want_value .. '"', 1, true) then
      return false, "res.headers lack " .. want_name .. ": " .. want_value
    end
    return true
  end
  if status ~= want_status then return false, "status " .. status end
  if want_name then
    local got = header(headers, want_name)
    if got ~= want_value then return false, want_name .. ": " .. tostring(got) end
  end
  return true
end

if os.getenv("BENCH_CHECK") == "1" then
  function response(status, headers, body)
    local fine, why = good(status, headers, body or "")
    if fine then
      ok = ok + 1
    else
      bad = bad + 1
      if sample == "" then sample = why end
    end
  end
end

function done(summary, latency, requests)
  local total_ok, total_bad, why = 0, 0, ""
  for _, thread in ipairs(threads) do
    total_ok = total_ok + (thread:get("ok") or 0)
    total_bad = total_bad + (thread:get("bad") or 0)
    local s = thread:get("sample") or ""
    if why == "" then why = s end
  end
  io.write(string.format("BENCH_CHECK ok=%d bad=%d why=%s\n", total_ok, total_bad, why))
end
