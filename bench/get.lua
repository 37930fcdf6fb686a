-- GET the URL given to wrk (forwarded / direct form, e.g. /api/cache-aside/k), as a caller would.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/check.lua")

wrk.method = "GET"
wrk.headers["User-Agent"] = "bench"
