-- Payload mode: POST /{Function} with the JSON invocation envelope the Functions host sends for
-- `GET /api/{route}/{key}` (docs/host-protocol.md §2.2; the same shape as envelope() in
-- tests/integration/common/host.rs: header values as arrays in Data.req.Headers, plain strings in
-- Metadata.Headers, route values in Params, the key JSON-encoded again in Metadata).
--   BENCH_FUNCTION  the function name (default CacheAside)
--   BENCH_ROUTE     its route base (default cache-aside)
--   BENCH_KEY       the key (letters, digits and : . _ - only, so it needs no escaping)
dofile((os.getenv("BENCH_DIR") or "bench") .. "/check.lua")

local fn = os.getenv("BENCH_FUNCTION") or "CacheAside"
local route = os.getenv("BENCH_ROUTE") or "cache-aside"
local key = os.getenv("BENCH_KEY") or "k"
assert(key:match("^[%w:._-]+$"), "BENCH_KEY must need no escaping: " .. key)

local envelope = table.concat({
  '{"Data":{"req":{',
  '"Url":"http://localhost:7071/api/', route, '/', key, '",',
  '"Method":"GET",',
  '"Query":{},',
  '"Headers":{"Host":["localhost:7071"],"User-Agent":["curl/8.5.0"]},',
  '"Params":{"key":"', key, '"},',
  '"Identities":[{"AuthenticationType":"WebJobsAuthLevel","IsAuthenticated":true,"Claims":[],"Name":null}]',
  '}},',
  '"Metadata":{"key":"\\"', key, '\\"",',
  '"Query":{},',
  '"Headers":{"Host":"localhost:7071","User-Agent":"curl/8.5.0"},',
  '"sys":{"MethodName":"', fn, '","UtcNow":"2024-10-25T10:20:00.1234567Z",',
  '"RandGuid":"c7c0d2a4-6d7e-4b8a-9b65-8c9a3b0f1e2d"}}}',
})

wrk.method = "POST"
wrk.path = "/" .. fn
wrk.body = envelope
wrk.headers["Content-Type"] = "application/json; charset=utf-8"
wrk.headers["X-Azure-Functions-InvocationId"] = "00000000-0000-0000-0000-000000000002"
wrk.headers["X-Azure-Functions-HostVersion"] = "4.1041.0"
wrk.headers["User-Agent"] = "Azure-Functions-Host/4.1041.0"
