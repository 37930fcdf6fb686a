#!/usr/bin/env bash
# One benchmark command with a report: scripts/bench.sh [--quick]
#
# Starts its own redis-server (free port, no persistence), builds the release `handler`, starts
# handler processes against that Redis and a SQLite store in a temporary directory, drives them with
# wrk (Lua scripts in bench/), redis-benchmark and curl, and writes bench/report.md: the machine,
# then for each scenario medians of several runs and ratios to baselines measured in the same run,
# interleaved with the runs they are compared with. Nothing passes or fails on speed.
#
#   1. hit path at several concurrencies: Cache-Aside (forwarded and payload mode), Refresh-Ahead
#      and near-cache (L1) hits against `redis-benchmark -t get` and the cheapest route of the same
#      server; Redis commands per hit
#   2. misses and stampede: concurrent reads of one cold key over 1 and 4 processes, store reads
#      against what a naive get-or-load would do
#   3. write-through and write-behind throughput, write-behind coalescing and lag
#   4. value sizes (100 B, 10 KB, 100 KB): hit throughput and the handler's RSS
#   5. cold start (process start to the first 200 hit) and RSS idle and under load
#   6. hit path on a local 3-master Redis Cluster against the single node, interleaved:
#      Cache-Aside (L2) and Refresh-Ahead hits, Redis commands and round trips per hit
#
# --quick: one short run per figure, concurrency 1 and 50 only (about 1.5 minutes with the build
# done); the full run takes about 20 minutes. Everything started here is stopped on exit.
# Environment: CARGO_TARGET_DIR (where the release build goes), BENCH_REPORT (default
# bench/report.md), BENCH_ONLY (e.g. 2,3: only those scenarios), BENCH_KEEP=1 (keep the
# temporary directory with the logs and traces).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0
ONLY=${BENCH_ONLY:-1,2,3,4,5,6}
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  RUNS=1 HIT_RUNS=1 DURATION=2 CONNS=(1 50) WRITE_CONNS=(50) COLD_RUNS=3 STAMPEDE_RUNS=2 CHECK_SECONDS=1
else
  # The hit path (scenario 1) takes 5 runs: on a shared machine, other tenants slowed one run in three
  # by 20-30 %, and a median of 3 took that run's figure as soon as a second run was touched.
  RUNS=3 HIT_RUNS=5 DURATION=5 CONNS=(1 10 50 200) WRITE_CONNS=(10 50) COLD_RUNS=10 STAMPEDE_RUNS=3 CHECK_SECONDS=2
fi
CLUSTER_CONNS=(1 50)     # scenario 6 (cluster against single node)
SIZE_CONNS=50            # value-size scenario
STAMPEDE_READERS=200     # concurrent readers of one cold key
WB_FEW_KEYS=10           # write-behind coalescing: many writes to this many keys
WRK_THREADS=2
REDIS_BENCH_N=$((DURATION * 20000))
REPORT=${BENCH_REPORT:-bench/report.md}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
HANDLER=$TARGET_DIR/release/handler
FLOOR=$TARGET_DIR/release/examples/stack_floor
STARTED=$EPOCHREALTIME

for tool in wrk redis-server redis-cli redis-benchmark curl awk; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench.sh: $tool is required (apt-get install wrk redis-server curl)" >&2; exit 1; }
done
HAVE_SQLITE=0
command -v sqlite3 >/dev/null 2>&1 && HAVE_SQLITE=1

# ---------------------------------------------------------------------------------------------
# Processes: everything started is recorded and stopped on exit.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench.XXXXXX")
PIDS=()
SAMPLER=""
cleanup() {
  local status=$?
  set +e
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [ "$status" -ne 0 ] || [ -n "${BENCH_KEEP:-}" ]; then
    echo "bench.sh: status $status; logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[bench %6.1fs] %s\n' "$(elapsed_s)" "$*" >&2; }
die() { echo "bench.sh: $*" >&2; exit 1; }

# Microseconds since the epoch, without forking (EPOCHREALTIME, C locale).
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
elapsed_s() { awk -v a="${STARTED/./}" -v b="$(now_us)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

# A short sleep without forking: a read with a timeout on a pipe nobody writes to.
exec {SLEEP_FD}<> <(:)
nap() { read -r -t "$1" -u "$SLEEP_FD" _ || true; }

USED_PORTS=" "
# Ports are taken below the kernel's range for outgoing connections, whose local ports a listener
# could collide with.
PORT_LOW=10000
PORT_HIGH=$(awk '{ print $1 - 1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32767)
[ "$PORT_HIGH" -gt $((PORT_LOW + 1000)) ] || PORT_HIGH=$((PORT_LOW + 20000))
# claim_port PORT: succeeds, and marks PORT handed out, when it was not handed out before and
# nothing listens on it.
claim_port() {
  local probe
  case "$USED_PORTS" in *" $1 "*) return 1 ;; esac
  if { exec {probe}<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null; then
    exec {probe}>&-
    return 1
  fi
  USED_PORTS+="$1 "
}
# free_port VAR: a port nothing listens on (and not handed out before).
free_port() {
  local p
  while :; do
    p=$((PORT_LOW + RANDOM % (PORT_HIGH - PORT_LOW)))
    claim_port "$p" && { printf -v "$1" '%s' "$p"; return; }
  done
}

# stop_pid PID: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
  local pid=$1 i p
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    nap 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
  local kept=()
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  PIDS=(${kept[@]+"${kept[@]}"})
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# Samples the VmRSS of PID every 0.2 s into FILE until stop_sampler.
start_sampler() {
  local pid=$1 file=$2
  (while kill -0 "$pid" 2>/dev/null; do rss_kb "$pid" >>"$file"; nap 0.2; done) &
  SAMPLER=$!
}
stop_sampler() {
  [ -n "$SAMPLER" ] || return 0
  kill "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=""
}
max_of() { sort -n "$1" 2>/dev/null | tail -n 1; }

# ---------------------------------------------------------------------------------------------
# Redis

start_redis() {
  free_port REDIS_PORT
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
    --logfile "$WORK/redis.log" --daemonize no &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  local i
  for i in $(seq 1 100); do
    [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] && return 0
    nap 0.05
  done
  die "redis-server did not come up on port $REDIS_PORT; see $WORK/redis.log"
}
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# commandstats NAME: "command calls" lines of INFO commandstats into $WORK/stats.NAME
commandstats() {
  rcli INFO commandstats | tr -d '\r' | awk -F'[_:=,]' '/^cmdstat_/ { print $2, $4 }' >"$WORK/stats.$1"
}
calls_of() { awk -v c="$2" '$1 == c { print $2; f = 1 } END { if (!f) print 0 }' "$WORK/stats.$1"; }

# redis_bench TEST CONNS VALUE_BYTES: "rps p50_ms p99_ms" of redis-benchmark TEST (get or set) on
# the key redis-benchmark uses without -r (key:__rand_int__), holding a value of VALUE_BYTES.
redis_bench() {
  local test=$1 c=$2 bytes=$3
  rcli SET 'key:__rand_int__' "$(head -c "$bytes" /dev/zero | tr '\0' x)" >/dev/null
  redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t "$test" -c "$c" -n "$REDIS_BENCH_N" -d "$bytes" --csv 2>/dev/null |
    tr -d '\r"' | awk -F, '$1 != "test" && NF >= 7 { print $2, $5, $7 }' | tail -n 1
}

# ---------------------------------------------------------------------------------------------
# Handlers

declare -A HPORT HPID
# start_handler NAME L1MAXENTRIES [RUST_LOG] [REDISCACHE] [BINARY]: L1MAXENTRIES "" leaves the default
# (1000); REDISCACHE defaults to the script's redis-server; BINARY to the handler (the stack floor
# is started with it).
start_handler() {
  local name=$1 l1=$2 filter=${3:-warn} redis=${4:-} binary=${5:-$HANDLER} port attempt
  for attempt in 1 2 3; do
    free_port port
    spawn_handler "$name" "$l1" "$filter" "$port" "$redis" "$binary"
    wait_ready "$name" && return 0
    # Another program may have taken the port meanwhile: try another one.
    grep -q 'Address already in use' "$WORK/$name.err" || break
  done
  cat "$WORK/$name.err" >&2
  die "handler $name did not become ready"
}
spawn_handler() {
  local name=$1 l1=$2 filter=$3 port=$4 redis=${5:-127.0.0.1:$REDIS_PORT} binary=${6:-$HANDLER}
  local settings=(
    "PATH=$PATH" "HOME=${HOME:-/tmp}"
    "FUNCTIONS_CUSTOMHANDLER_PORT=$port" "RedisCache=$redis"
    "LocalStorePath=$WORK/store.db" "RUST_LOG=$filter"
    # Entries stay fresh through the whole run, so that hits stay hits.
    "CacheTtlSeconds=3600"
  )
  [ -n "$l1" ] && settings+=("L1MaxEntries=$l1")
  [ "$binary" = "$FLOOR" ] && settings+=("FLOOR_VALUE=$(cat "$WORK/value.100")" "FLOOR_KEY=$HIT_KEY")
  (cd "$WORK" && exec env -i "${settings[@]}" "$binary") >"$WORK/$name.out" 2>"$WORK/$name.err" &
  HPID[$name]=$!
  HPORT[$name]=$port
  PIDS+=("$!")
}
# wait_ready NAME: 0 once GET / answers 200 (within 30 s), 1 when the process exited or never did.
wait_ready() {
  local name=$1 i
  for i in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${HPORT[$name]}/" 2>/dev/null)" = 200 ] && return 0
    kill -0 "${HPID[$name]}" 2>/dev/null || break
    nap 0.1
  done
  stop_pid "${HPID[$name]}"
  return 1
}
stop_handler() { stop_pid "${HPID[$1]}"; unset "HPID[$1]" "HPORT[$1]"; }
url() { echo "http://127.0.0.1:${HPORT[$1]}$2"; }

# put_value HANDLER KEY BYTES: writes a JSON string value of BYTES bytes (quotes included) through
# write-through.
put_value() {
  local file=$WORK/value.$3
  [ -f "$file" ] || { printf '"'; head -c $(($3 - 2)) /dev/zero | tr '\0' v; printf '"'; } >"$file"
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
    --data-binary "@$file" "$(url "$1" "/api/write-through/$2")")
  [ "$status" = 200 ] || die "seeding $2 on $1 answered $status"
}

# ---------------------------------------------------------------------------------------------
# wrk

# run_wrk CONNS SECONDS SCRIPT URL [NAME=VALUE...]: prints
# "rps p50_ms p99_ms requests non2xx errors ok bad why" and keeps the output in $WORK/wrk.last.
run_wrk() {
  local c=$1 d=$2 script=$3 target=$4
  shift 4
  local t=$((c < WRK_THREADS ? c : WRK_THREADS))
  env BENCH_DIR="$ROOT/bench" "$@" wrk -t "$t" -c "$c" -d "${d}s" --latency -s "$ROOT/bench/$script" "$target" \
    >"$WORK/wrk.last" 2>&1 || { cat "$WORK/wrk.last" >&2; die "wrk failed"; }
  awk '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
      return v + 0
    }
    /^Requests\/sec:/ { rps = $2 }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    / requests in / { requests = $1 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(",", ""); errors = $4 + $6 + $8 + $10 }
    /^BENCH_CHECK/ { split($2, a, "="); ok = a[2]; split($3, b, "="); bad = b[2]; why = substr($0, index($0, "why=") + 4) }
    END {
      if (why == "") why = "-"
      gsub(/ /, "_", why)
      printf "%s %.3f %.3f %d %d %d %d %d %s\n", rps, p50, p99, requests, non2xx, errors, ok, bad, why
    }' "$WORK/wrk.last"
}

# ---------------------------------------------------------------------------------------------
# Figures

# median FILE COLUMN: the median of a column of numbers ("nan" when there are none).
median() {
  awk -v c="$2" '$c != "" && $c != "nan" { print $c }' "$1" 2>/dev/null | sort -g |
    awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b + 0 == 0) print "–"; else printf "%.2f×", a / b }'; }
num() { awk -v a="$1" -v d="${2:-0}" 'BEGIN { if (a == "nan" || a == "") print "–"; else printf "%.*f", d, a }'; }
mib() { awk -v a="$1" 'BEGIN { if (a == "" || a == "nan" || a + 0 == 0) print "–"; else printf "%.1f", a / 1024 }'; }

RES=$WORK/results
mkdir -p "$RES"
# The report is written section by section (scenarios run in another order than they are shown).
SECTION=0
say() { printf '%s\n' "$@" >>"$WORK/section.$SECTION.md"; }

# ---------------------------------------------------------------------------------------------
# Start

log "building the release handler and the stack floor (cargo build --release --locked --bin handler --example stack_floor)"
CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --locked --bin handler --example stack_floor >&2
[ -x "$HANDLER" ] || die "no handler binary at $HANDLER"
[ -x "$FLOOR" ] || die "no stack floor binary at $FLOOR"

start_redis
log "redis-server on port $REDIS_PORT, work directory $WORK"

MODE=full
[ "$QUICK" = 1 ] && MODE=quick
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
[ -n "$CPU_MODEL" ] || CPU_MODEL=$(uname -m)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"

say "# Benchmark report" ""
if [ "$QUICK" = 1 ]; then
  say "> **Quick run** (\`scripts/bench.sh --quick\`): one run of ${DURATION} s per figure, so the figures are" \
    "> rough; \`scripts/bench.sh\` without \`--quick\` takes medians of 3 runs (5 for the hit path) at more concurrencies." ""
fi
say "Produced by \`scripts/bench.sh$([ "$QUICK" = 1 ] && echo ' --quick')\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT." \
  "Each figure is the median of $RUNS run(s) of $DURATION s ($HIT_RUNS for the hit path); every ratio compares with a baseline measured" \
  "in the same run, its runs interleaved with the runs it is compared with. The load generator, Redis and" \
  "the handler share the machine's cores, and other work on the machine shows in the figures: compare" \
  "ratios, not absolute numbers, and only between runs on the same machine." "" \
  "## Machine" "" \
  "| | |" "| --- | --- |" \
  "| cores | $(nproc) |" \
  "| CPU | $CPU_MODEL |" \
  "| kernel | $(uname -sr) |" \
  "| load average at start | $(cut -d' ' -f1-3 /proc/loadavg) |" \
  "| rustc | $(rustc --version 2>/dev/null || echo unknown) |" \
  "| redis-server | $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p') |" \
  "| wrk | $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }') |" \
  "| curl | $(curl --version | awk 'NR == 1 { print $2 }') |" \
  "| mode | $MODE: runs $RUNS × ${DURATION} s ($HIT_RUNS for the hit path), connections ${CONNS[*]}, wrk with $WRK_THREADS threads, scenarios $ONLY |" ""

# ---------------------------------------------------------------------------------------------
# 1. Hit path

HIT_KEY=bench:hit
if want 1 || want 4; then
start_handler l2 0   # Redis hits: the near cache off
start_handler l1 ""  # near-cache hits: L1MaxEntries left at its default (1000)
put_value l2 "$HIT_KEY" 100
RSS_IDLE_L2=$(rss_kb "${HPID[l2]}")
RSS_IDLE_L1=$(rss_kb "${HPID[l1]}")

# The near cache serves only while its invalidation feed is live: wait for the first L1 hit.
for i in $(seq 1 100); do
  tier=$(curl -s -o /dev/null -w '%header{x-cache-tier}' "$(url l1 "/api/cache-aside/$HIT_KEY")")
  [ "$tier" = l1 ] && break
  nap 0.1
done
[ "$tier" = l1 ] || die "the near cache did not serve (x-cache-tier: $tier)"
fi
# The stack floor (scenario 1): the same hits with none of the patterns' logic.
want 1 && start_handler floor "" warn "" "$FLOOR"

if want 1; then
log "scenario 1: hit path"
SECTION=1

# label|handler|script|path|environment (space-separated NAME=VALUE)|its stack floor|what it is
TARGETS=(
  "ceiling|l2|get.lua|/|||HTTP ceiling: \`GET /\` of the same server"
  "floorl2|floor|get.lua|/floor/l2/$HIT_KEY|BENCH_EXPECT=x-cache-tier=l2||Stack floor, L2: one \`HMGET\` of an entry hash, same HTTP stack and Redis client, no pattern logic"
  "floorl2d|floor|get.lua|/floor/l2d/$HIT_KEY|BENCH_EXPECT=x-cache-tier=l2|floorl2|Stack floor, L2, with the service's deadlines: the same read under the request's deadline, budget and the Redis call's deadline, as in the service"
  "floorl1|floor|get.lua|/floor/l1/$HIT_KEY|BENCH_EXPECT=x-cache-tier=l1||Stack floor, L1: the same answer from memory"
  "floorpay|floor|payload.lua|/FloorPayload|BENCH_KEY=$HIT_KEY BENCH_FUNCTION=FloorPayload BENCH_PAYLOAD=1 BENCH_EXPECT=x-cache-tier=l2||Stack floor, payload: the envelope read (not decoded), one \`HMGET\`, the service's envelope answered"
  "aside|l2|get.lua|/api/cache-aside/$HIT_KEY|BENCH_EXPECT=x-cache-tier=l2|floorl2|Cache-Aside, forwarded \`GET /api/cache-aside/k\` (L2 hit)"
  "payload|l2|payload.lua|/CacheAside|BENCH_KEY=$HIT_KEY BENCH_PAYLOAD=1 BENCH_EXPECT=x-cache-tier=l2|floorpay|Cache-Aside, payload \`POST /CacheAside\` (L2 hit)"
  "refresh|l2|get.lua|/api/refresh-ahead/$HIT_KEY|BENCH_EXPECT=x-cache-tier=l2|floorl2|Refresh-Ahead \`GET /api/refresh-ahead/k\` (L2 hit, read counted in batches)"
  "near|l1|get.lua|/api/cache-aside/$HIT_KEY|BENCH_EXPECT=x-cache-tier=l1|floorl1|Cache-Aside, forwarded, near-cache hit (L1)"
)

# Check pass: every answer is what it should be, and how many Redis commands each costs.
: >"$RES/commands"
for target in "${TARGETS[@]}"; do
  IFS='|' read -r label handler script path envs floor what <<<"$target"
  rcli CONFIG RESETSTAT >/dev/null
  read -r rps p50 p99 requests non2xx errors ok bad why < <(run_wrk 10 "$CHECK_SECONDS" "$script" "$(url "$handler" "$path")" BENCH_CHECK=1 $envs)
  commandstats "hit.$label"
  [ "$ok" -gt 0 ] || die "check pass of $label: no answer as expected ($bad not: $why)"
  [ "$bad" = 0 ] || log "  check pass of $label: $bad of $((ok + bad)) answers not as expected ($why)"
  breakdown=$(awk -v n="$requests" '$1 != "info" && $1 !~ /^config/ && $1 != "ping" { total += $2; if ($2 / n >= 0.01) parts = parts sprintf("%s`%s` %.2f", parts == "" ? "" : ", ", $1, $2 / n) }
    END { printf "%.2f|%s\n", total / n, parts == "" ? "none" : parts }' "$WORK/stats.hit.$label")
  echo "$label|$requests|$ok|$bad|$why|$breakdown" >>"$RES/commands"
done

RSS_LOAD_L2=0 RSS_LOAD_L1=0
for c in "${CONNS[@]}"; do
  log "  $c connection(s)"
  for r in $(seq 1 "$HIT_RUNS"); do
    redis_bench get "$c" 100 >>"$RES/hit.$c.redis"
    for target in "${TARGETS[@]}"; do
      IFS='|' read -r label handler script path envs floor what <<<"$target"
      start_sampler "${HPID[$handler]}" "$WORK/rss.$handler"
      run_wrk "$c" "$DURATION" "$script" "$(url "$handler" "$path")" $envs >>"$RES/hit.$c.$label"
      stop_sampler
    done
  done
done
RSS_LOAD_L2=$(max_of "$WORK/rss.l2")
RSS_LOAD_L1=$(max_of "$WORK/rss.l1")
RSS_AFTER_L2=$(rss_kb "${HPID[l2]}")
RSS_AFTER_L1=$(rss_kb "${HPID[l1]}")

say "## 1. Hit path" "" \
  "Requests per second of cache hits through the real server (wrk, keep-alive), against the same" \
  "server's cheapest route and against \`redis-benchmark -t get\` at the same concurrency on the same Redis." \
  "The HTTP ceiling is \`GET /\`, the host's readiness probe: \`src/http/server.rs\` answers it first," \
  "before the body budget, routing and Redis (a 404 of an unknown path costs more: it passes the body" \
  "budget and the route lookup). \`redis-benchmark\` GETs a 100-byte string; the hits read a 100-byte value" \
  "(one \`HMGET\` of the entry hash)." "" \
  "The **stack floor** (\`bench/stack_floor.rs\`, built as an example) is a second server on the same HTTP" \
  "stack (the service's own serve loop, axum, hyper, mimalloc, the same runtime) and the same Redis client," \
  "with none of the service's logic: one \`HMGET\` of a nine-field hash, or an answer from memory, written" \
  "like a hit's answer (payload mode: the envelope is read but not decoded, and the service's envelope is" \
  "answered). What separates a hit from its floor is what the service itself costs: decoding the envelope," \
  "the key check, the entry's freshness and JSON checks, the near cache's lookup, the breaker, the deadlines" \
  "(the request's and each Redis call's, each a timer armed and disarmed in the runtime; hyper's header" \
  "deadline and redis-rs's response timeout are in the floor too), metrics, spans and logs. What separates" \
  "the floor from \`redis-benchmark\` is the stack's. The L2 floor is measured a second time under the" \
  "service's two deadlines and its request budget (\`/floor/l2d/\`, as in the service): what separates the two" \
  "floors is what those protections cost, which no hit can save without giving them up (compare them only" \
  "across several runs: a difference of a few per cent is within a run's noise)." ""
for c in "${CONNS[@]}"; do
  ceiling=$(median "$RES/hit.$c.ceiling" 1)
  redis=$(median "$RES/hit.$c.redis" 1)
  say "**$c connection(s)**" "" \
    "| route | req/s | p50 ms | p99 ms | × HTTP ceiling | × redis-benchmark GET | × its stack floor |" \
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  say "| \`redis-benchmark -t get -c $c\` | $(num "$redis") | $(num "$(median "$RES/hit.$c.redis" 2)" 3) | $(num "$(median "$RES/hit.$c.redis" 3)" 3) | $(ratio "$redis" "$ceiling") | 1.00× | |"
  for target in "${TARGETS[@]}"; do
    IFS='|' read -r label handler script path envs floor what <<<"$target"
    rps=$(median "$RES/hit.$c.$label" 1)
    against_floor=""
    [ -n "$floor" ] && against_floor=$(ratio "$rps" "$(median "$RES/hit.$c.$floor" 1)")
    say "| $what | $(num "$rps") | $(num "$(median "$RES/hit.$c.$label" 2)" 3) | $(num "$(median "$RES/hit.$c.$label" 3)" 3) | $(ratio "$rps" "$ceiling") | $(ratio "$rps" "$redis") | $against_floor |"
  done
  non2xx=0
  for target in "${TARGETS[@]}"; do
    non2xx=$((non2xx + $(awk '{ s += $5 + $6 } END { print s + 0 }' "$RES/hit.$c.${target%%|*}")))
  done
  [ "$non2xx" = 0 ] || say "" "($non2xx answers were not 2xx or had socket errors at $c connections.)"
  say ""
done

say "### Redis commands per hit" "" \
  "\`CONFIG RESETSTAT\`, a ${CHECK_SECONDS} s check pass at 10 connections (every answer checked: status and" \
  "\`x-cache-tier\`), then the \`INFO commandstats\` calls divided by the requests served. Commands run" \
  "inside Lua scripts count too; \`info\`, \`config\` and \`ping\` are left out (the feed's heartbeat and the" \
  "other handler's background work are in the rest, a few calls per second)." "" \
  "| route | requests | answers as expected | commands per hit | commands (≥ 0.01 per hit) |" "| --- | ---: | ---: | ---: | --- |"
while IFS='|' read -r label requests ok bad why total parts; do
  for target in "${TARGETS[@]}"; do
    IFS='|' read -r l _ _ _ _ _ what <<<"$target"
    [ "$bad" = 0 ] && why="" || why=" (first other: ${why//_/ })"
    [ "$l" = "$label" ] && say "| $what | $requests | $ok of $((ok + bad))$why | $total | $parts |"
  done
done <"$RES/commands"
say "" "\`evalsha\` is one call of a Lua script; the commands the script runs are counted under their own names." ""
fi

# ---------------------------------------------------------------------------------------------
# 4. Value sizes (the Redis-hit handler of scenario 1 is still running)

if want 4; then
log "scenario 4: value sizes"
SECTION=4
SIZES=(100 10240 102400)
for bytes in "${SIZES[@]}"; do
  put_value l2 "bench:size:$bytes" "$bytes"
  run_wrk 10 1 get.lua "$(url l2 "/api/cache-aside/bench:size:$bytes")" BENCH_CHECK=1 BENCH_EXPECT=x-cache-tier=l2 >"$RES/size.check.$bytes"
  read -r _ _ _ _ _ _ ok bad why <"$RES/size.check.$bytes"
  [ "$bad" = 0 ] && [ "$ok" -gt 0 ] || die "check pass of the $bytes-byte value: $bad bad answers ($why)"
done
for r in $(seq 1 "$RUNS"); do
  for bytes in "${SIZES[@]}"; do
    redis_bench get "$SIZE_CONNS" "$bytes" >>"$RES/size.$bytes.redis"
    start_sampler "${HPID[l2]}" "$WORK/rss.size.$bytes"
    run_wrk "$SIZE_CONNS" "$DURATION" get.lua "$(url l2 "/api/cache-aside/bench:size:$bytes")" >>"$RES/size.$bytes.hit"
    stop_sampler
  done
done
say "## 4. Value sizes" "" \
  "Cache-Aside hits (forwarded, L2, near cache off) of values of 100 B, 10 KB and 100 KB at $SIZE_CONNS" \
  "connections, against \`redis-benchmark -t get\` of a string of the same size, and the handler's RSS" \
  "(\`VmRSS\`, sampled every 0.2 s) while each size is read." "" \
  "| value | req/s | p99 ms | MB/s of values | × redis-benchmark GET (same size) | × the 100 B hit | max RSS under load MiB |" \
  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
small=$(median "$RES/size.100.hit" 1)
for bytes in "${SIZES[@]}"; do
  rps=$(median "$RES/size.$bytes.hit" 1)
  redis=$(median "$RES/size.$bytes.redis" 1)
  mbs=$(awk -v r="$rps" -v b="$bytes" 'BEGIN { if (r == "nan") print "nan"; else print r * b / 1e6 }')
  say "| $bytes B | $(num "$rps") | $(num "$(median "$RES/size.$bytes.hit" 3)" 3) | $(num "$mbs" 1) | $(ratio "$rps" "$redis") | $(ratio "$rps" "$small") | $(mib "$(max_of "$WORK/rss.size.$bytes")") |"
done
say "" "RSS of the handler after these runs: $(mib "$(rss_kb "${HPID[l2]}")") MiB." ""
fi

if want 1 || want 4; then
  stop_handler l1
  stop_handler l2
fi

# ---------------------------------------------------------------------------------------------
# 2. Misses and stampede

# burst PROCESSES RUN: seeds a key through write-through, deletes its entry in Redis, then sends
# STAMPEDE_READERS concurrent reads of it spread over the processes (curl --parallel, each read on
# its own connection) while MONITOR records what Redis did. Prints
# "missed store_reads locks answers_miss answers_hit answers_other burst_ms".
burst() {
  local procs=$1 run=$2 key="stampede:$1:$2" i
  put_value st1 "$key" 100
  rcli DEL "$key" >/dev/null
  local cfg=$WORK/burst.cfg
  : >"$cfg"
  for i in $(seq 0 $((STAMPEDE_READERS - 1))); do
    printf 'url = "%s"\noutput = "/dev/null"\n' "$(url "st$((i % procs + 1))" "/api/cache-aside/$key")" >>"$cfg"
  done
  local trace=$WORK/monitor.$procs.$run
  # redis-cli itself in the background (not through a function: that would be a subshell whose
  # redis-cli outlives it), so that stopping it ends the MONITOR.
  redis-cli -p "$REDIS_PORT" MONITOR >"$trace" &
  local monitor=$!
  PIDS+=("$monitor")
  for i in $(seq 1 100); do grep -q OK "$trace" 2>/dev/null && break; nap 0.02; done
  local t0 t1
  t0=$(now_us)
  curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max "$STAMPEDE_READERS" -K "$cfg" \
    -w '%{http_code} %header{x-cache}\n' >"$WORK/answers" 2>"$WORK/curl.err" || true
  t1=$(now_us)
  nap 0.3
  stop_pid "$monitor"
  # Every store read of this key is followed by caching what it read: the PUT_IF_NOT_OLDER script's
  # HSET of "ver" (seen in MONITOR as a command run by Lua). A reader whose HMGET ran before the first
  # such fill found no entry: a naive get-or-load would have read the store for each of them.
  local counts
  counts=$(awk -v k="\"$key\"" '
    { line = tolower($0) }
    index(line, "[0 lua] \"hset\" " k " \"ver\"") { fills++; filled = 1; next }
    index(line, "[0 lua] \"hset\" " k " \"lk\"") { locks++; next }
    !filled && index(line, " lua] ") == 0 && index(line, "\"hmget\" " k " ") { missed++ }
    END { printf "%d %d %d", missed, fills, locks }' "$trace")
  local answers
  answers=$(awk '$1 == 200 && $2 == "miss" { m++; next } $1 == 200 && $2 == "hit" { h++; next } { o++ }
    END { printf "%d %d %d", m, h, o }' "$WORK/answers")
  echo "$counts $answers $(((t1 - t0) / 1000))"
}

if want 2; then
log "scenario 2: stampede"
SECTION=2
for procs in 1 4; do
  for i in $(seq 1 "$procs"); do start_handler "st$i" 0; done
  for r in $(seq 1 "$STAMPEDE_RUNS"); do burst "$procs" "$r" >>"$RES/stampede.$procs"; done
  for i in $(seq 1 "$procs"); do stop_handler "st$i"; done
done
say "## 2. Misses and stampede" "" \
  "$STAMPEDE_READERS concurrent reads of one key whose entry was just deleted from Redis (seeded through" \
  "write-through, then \`DEL\`), each on its own connection (\`curl --parallel\`), spread over 1 or 4 handler" \
  "processes (near cache off). Store reads are counted in Redis \`MONITOR\`: every store read of the key is" \
  "followed by one cache fill (the fill script's \`HSET … ver\`). A naive get-or-load reads the store once for" \
  "every reader that finds no entry: at most $STAMPEDE_READERS, and in practice every reader whose first" \
  "\`HMGET\` ran before the first fill, counted in the same \`MONITOR\` trace. Medians of $STAMPEDE_RUNS bursts." "" \
  "| processes | readers | found no entry (naive: a store read each) | store reads | × naive | × worst case ($STAMPEDE_READERS) | load locks taken | answers \`x-cache: miss\` / \`hit\` / other | burst ms |" \
  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
for procs in 1 4; do
  f=$RES/stampede.$procs
  missed=$(median "$f" 1)
  reads=$(median "$f" 2)
  say "| $procs | $STAMPEDE_READERS | $(num "$missed") | $(num "$reads") | $(ratio "$reads" "$missed") | $(ratio "$reads" "$STAMPEDE_READERS") | $(num "$(median "$f" 3)") | $(num "$(median "$f" 4)") / $(num "$(median "$f" 5)") / $(num "$(median "$f" 6)") | $(num "$(median "$f" 7)") |"
done
say "" "Each burst: $(awk '{ printf "%s%s found no entry, %s store read(s)", (NR > 1 ? "; " : ""), $1, $2 }' "$RES/stampede.1") (1 process);" \
  "$(awk '{ printf "%s%s found no entry, %s store read(s)", (NR > 1 ? "; " : ""), $1, $2 }' "$RES/stampede.4") (4 processes)." \
  "An \`x-cache: miss\` answer does not mean that request read the store: readers of one process that" \
  "join a load in flight (single-flight) get that load's answer, marked \`miss\` too." ""
fi

# ---------------------------------------------------------------------------------------------
# 3. Writes

if want 3; then
log "scenario 3: writes"
SECTION=3
start_handler w 0 "warn,cachepatterns::patterns::write_behind::consumer=info"
STREAM=$'\x1fwritebehind'
put_value w bench:hit 100

# wb_run LABEL CONNS KEYS: a write-behind run, then the time until the queue is drained (every
# event applied to the store and removed from the stream). Prints
# "rps p50 p99 requests non2xx errors backlog_at_end drain_ms events store_writes applied xadd".
wb_run() {
  local label=$1 c=$2 keys=$3 run=$4
  local before
  before=$(wc -l <"$WORK/w.out")
  rcli CONFIG RESETSTAT >/dev/null
  local line
  line=$(run_wrk "$c" "$DURATION" put.lua "$(url w /)" BENCH_ROUTE=write-behind BENCH_PREFIX="$label$run:" BENCH_KEYS="$keys")
  local t0 backlog t1
  t0=$(now_us)
  backlog=$(rcli XLEN "$STREAM")
  while [ "$(rcli XLEN "$STREAM")" != 0 ]; do
    [ $(($(now_us) - t0)) -lt 300000000 ] || die "the write-behind queue did not drain in 300 s"
    nap 0.02
  done
  t1=$(now_us)
  commandstats wb
  nap 0.2 # the batch's log line follows its XACK/XDEL
  local batches
  batches=$(tail -n +"$((before + 1))" "$WORK/w.out" | grep 'write-behind batch applied' |
    awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "events") e += kv[2]; if (kv[1] == "keys") k += kv[2]; if (kv[1] == "applied") a += kv[2] } }
      END { printf "%d %d %d", e, k, a }')
  set -- $line
  echo "$1 $2 $3 $4 $5 $6 $backlog $(((t1 - t0) / 1000)) $batches $(calls_of wb xadd)"
}

for c in "${WRITE_CONNS[@]}"; do
  read -r _ _ _ _ _ _ ok bad why < <(run_wrk "$c" 1 put.lua "$(url w /)" BENCH_CHECK=1 BENCH_ROUTE=write-through BENCH_PREFIX=wtcheck:)
  [ "$bad" = 0 ] || die "write-through check: $bad bad answers ($why)"
  read -r _ _ _ _ _ _ ok bad why < <(run_wrk "$c" 1 put.lua "$(url w /)" BENCH_CHECK=1 BENCH_STATUS=202 BENCH_ROUTE=write-behind BENCH_PREFIX=wbcheck:)
  [ "$bad" = 0 ] || die "write-behind check: $bad bad answers ($why)"
  while [ "$(rcli XLEN "$STREAM")" != 0 ]; do nap 0.05; done
  for r in $(seq 1 "$RUNS"); do
    log "  $c connection(s), run $r"
    run_wrk "$c" "$DURATION" get.lua "$(url w /)" >>"$RES/write.$c.ceiling"
    redis_bench set "$c" 100 >>"$RES/write.$c.redis"
    run_wrk "$c" "$DURATION" put.lua "$(url w /)" BENCH_ROUTE=write-through BENCH_PREFIX="wt$c.$r:" BENCH_KEYS=1000 >>"$RES/write.$c.wt"
    wb_run "wb$c." "$c" 1000 "$r" >>"$RES/write.$c.wb"
    wb_run "wbfew$c." "$c" "$WB_FEW_KEYS" "$r" >>"$RES/write.$c.wbfew"
  done
done

# The store caught up: every key of the last few-keys run holds in SQLite the version Redis holds.
STORE_CHECK="not checked (no sqlite3)"
if [ "$HAVE_SQLITE" = 1 ]; then
  last_c=${WRITE_CONNS[-1]}
  same=0
  for k in $(seq 0 $((WB_FEW_KEYS - 1))); do
    key="wbfew$last_c.$RUNS:$k"
    cached=$(rcli HGET "$key" ver)
    stored=$(sqlite3 "file:$WORK/store.db?mode=ro" "SELECT version FROM items WHERE key = '$key'" 2>/dev/null || true)
    [ -n "$cached" ] && [ "$cached" = "$stored" ] && same=$((same + 1))
  done
  STORE_CHECK="$same of $WB_FEW_KEYS keys hold in SQLite the version Redis holds"
fi

say "## 3. Writes" "" \
  "\`PUT\` of a 100-byte JSON value (wrk, \`bench/put.lua\`) through write-through (store, then cache) and" \
  "write-behind (queued on the Redis Stream, cached, \`202\`; the handler's consumer applies it) over 1000" \
  "keys, and write-behind over $WB_FEW_KEYS keys (many writes per key: coalescing), against the same" \
  "server's \`GET /\` and \`redis-benchmark -t set\` at the same concurrency. After each write-behind run the" \
  "script waits until the stream is empty (entries are deleted only once applied): that is the lag. The" \
  "consumer's batch reports (\`write-behind batch applied\` at info) give events and store writes." ""
for c in "${WRITE_CONNS[@]}"; do
  ceiling=$(median "$RES/write.$c.ceiling" 1)
  redis=$(median "$RES/write.$c.redis" 1)
  wt=$(median "$RES/write.$c.wt" 1)
  say "**$c connection(s)**" "" \
    "| what | req/s | p50 ms | p99 ms | × HTTP ceiling | × redis-benchmark SET | × write-through |" \
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" \
    "| \`GET /\` (HTTP ceiling) | $(num "$ceiling") | $(num "$(median "$RES/write.$c.ceiling" 2)" 3) | $(num "$(median "$RES/write.$c.ceiling" 3)" 3) | 1.00× | $(ratio "$ceiling" "$redis") | |" \
    "| \`redis-benchmark -t set -c $c\` | $(num "$redis") | $(num "$(median "$RES/write.$c.redis" 2)" 3) | $(num "$(median "$RES/write.$c.redis" 3)" 3) | $(ratio "$redis" "$ceiling") | 1.00× | |"
  for kind in wt wb wbfew; do
    case $kind in
      wt) what="write-through, 1000 keys" ;;
      wb) what="write-behind, 1000 keys" ;;
      wbfew) what="write-behind, $WB_FEW_KEYS keys" ;;
    esac
    rps=$(median "$RES/write.$c.$kind" 1)
    say "| $what | $(num "$rps") | $(num "$(median "$RES/write.$c.$kind" 2)" 3) | $(num "$(median "$RES/write.$c.$kind" 3)" 3) | $(ratio "$rps" "$ceiling") | $(ratio "$rps" "$redis") | $(ratio "$rps" "$wt") |"
  done
  say "" "| write-behind | events (XADD) | store writes (keys applied per batch) | events per store write | backlog when the load stopped | lag until the store caught up, ms |" \
    "| --- | ---: | ---: | ---: | ---: | ---: |"
  for kind in wb wbfew; do
    f=$RES/write.$c.$kind
    [ "$kind" = wb ] && what="1000 keys" || what="$WB_FEW_KEYS keys"
    events=$(median "$f" 9)
    writes=$(median "$f" 10)
    say "| $what | $(num "$(median "$f" 12)") | $(num "$writes") | $(awk -v e="$events" -v w="$writes" 'BEGIN { if (w + 0 == 0) print "–"; else printf "%.1f", e / w }') | $(num "$(median "$f" 7)") | $(num "$(median "$f" 8)") |"
  done
  non2xx=$(cat "$RES"/write."$c".{ceiling,wt,wb,wbfew} | awk '{ s += $5 + $6 } END { print s + 0 }')
  [ "$non2xx" = 0 ] || say "" "($non2xx answers were not 2xx or had socket errors at $c connections.)"
  say ""
done
say "Store check after the last run: $STORE_CHECK." ""
stop_handler w
fi

# ---------------------------------------------------------------------------------------------
# 5. Cold start

# probe_hit PORT PATH: 0 when the answer is 200 with x-cache: hit, 2 when connected but not yet,
# 1 when nothing listens.
probe_hit() {
  local fd line status="" hit=""
  { exec {fd}<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&"$fd"
  while IFS= read -r -t 10 -u "$fd" line; do
    line=${line%$'\r'}
    [ -z "$status" ] && status=$line
    [ -z "$line" ] && break
    case "${line,,}" in "x-cache: hit") hit=1 ;; esac
  done
  exec {fd}>&-
  [[ "$status" == "HTTP/1.1 200"* && -n "$hit" ]] && return 0
  return 2
}
# probe_pong PORT: 0 when Redis answers PING.
probe_pong() {
  local fd line=""
  { exec {fd}<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&"$fd"
  IFS= read -r -t 10 -u "$fd" line || true
  exec {fd}>&-
  [ "${line%$'\r'}" = "+PONG" ] && return 0
  return 2
}
# time_until PID PROBE ARGS...: polls every 2 ms (no forks) until PROBE succeeds; prints
# "ms_to_first_connection ms_to_success" counted from T0 (set by the caller). Fails when PID exits.
time_until() {
  local pid=$1 first="" rc
  shift
  while :; do
    rc=0
    "$@" || rc=$?
    [ "$rc" -ne 1 ] && [ -z "$first" ] && first=$(now_us)
    [ "$rc" -eq 0 ] && break
    kill -0 "$pid" 2>/dev/null || return 1
    [ $(($(now_us) - T0)) -lt 30000000 ] || die "no answer within 30 s ($*)"
    nap 0.002
  done
  local done_at
  done_at=$(now_us)
  awk -v a="$first" -v b="$done_at" -v t="$T0" 'BEGIN { printf "%.1f %.1f\n", (a - t) / 1000, (b - t) / 1000 }'
}

# cold_start handler|redis: starts one process on a free port, appends its timing to
# $RES/cold.KIND and stops it (another port when the first was taken meanwhile). The first handler's
# RSS, 1 s after its first hit, goes to RSS_COLD_IDLE.
cold_start() {
  local kind=$1 attempt port pid timing
  for attempt in 1 2 3; do
    free_port port
    T0=$(now_us)
    if [ "$kind" = handler ]; then
      spawn_handler cold "" warn "$port"
      pid=${HPID[cold]}
      timing=$(time_until "$pid" probe_hit "$port" "/api/cache-aside/$HIT_KEY") || { stop_pid "$pid"; continue; }
      if [ -z "${RSS_COLD_IDLE:-}" ]; then
        nap 1
        RSS_COLD_IDLE=$(rss_kb "$pid")
      fi
    else
      redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
        --logfile "$WORK/redis-cold.log" --daemonize no &
      pid=$!
      PIDS+=("$pid")
      timing=$(time_until "$pid" probe_pong "$port") || { stop_pid "$pid"; continue; }
    fi
    stop_pid "$pid"
    echo "$timing" >>"$RES/cold.$kind"
    return 0
  done
  die "could not start $kind for the cold start (see $WORK/cold.err, $WORK/redis-cold.log)"
}

if want 5; then
log "scenario 5: cold start"
SECTION=5
if [ "$(rcli EXISTS "$HIT_KEY")" != 1 ]; then
  start_handler seed 0
  put_value seed "$HIT_KEY" 100
  stop_handler seed
fi
# Redis keeps the entry of bench:hit (TTL 3600 s): the first read is a Redis hit. The handler's
# settings are those of the others, the near cache at its default.
for r in $(seq 1 "$COLD_RUNS"); do
  cold_start handler
  cold_start redis
done
handler_ms=$(median "$RES/cold.handler" 2)
redis_ms=$(median "$RES/cold.redis" 2)
say "## 5. Cold start and memory" "" \
  "From spawning \`handler\` to its first \`200\` with \`x-cache: hit\` (a Redis hit, the entry already cached)," \
  "polled every 2 ms over a fresh connection from bash, $COLD_RUNS times; the baseline is \`redis-server\`" \
  "started the same way until it answers \`PING\`. RSS is \`VmRSS\` from \`/proc/<pid>/status\`." "" \
  "| process | port open, ms (median) | first good answer, ms (median) | min | max | × redis-server |" \
  "| --- | ---: | ---: | ---: | ---: | ---: |" \
  "| \`handler\` → first hit | $(num "$(median "$RES/cold.handler" 1)" 1) | $(num "$handler_ms" 1) | $(sort -g -k2 "$RES/cold.handler" | awk 'NR == 1 { print $2 }') | $(sort -g -k2 "$RES/cold.handler" | awk 'END { print $2 }') | $(ratio "$handler_ms" "$redis_ms") |" \
  "| \`redis-server\` → first \`PONG\` | $(num "$(median "$RES/cold.redis" 1)" 1) | $(num "$redis_ms" 1) | $(sort -g -k2 "$RES/cold.redis" | awk 'NR == 1 { print $2 }') | $(sort -g -k2 "$RES/cold.redis" | awk 'END { print $2 }') | 1.00× |" "" \
  "| handler | RSS MiB |" "| --- | ---: |" \
  "| idle, 1 s after its cold start and first hit | $(mib "${RSS_COLD_IDLE:-0}") |" \
  "| near cache off, idle after start-up (scenario 1) | $(mib "${RSS_IDLE_L2:-}") |" \
  "| near cache off, max under the hit load of scenario 1 (up to ${CONNS[-1]} connections) | $(mib "${RSS_LOAD_L2:-}") |" \
  "| near cache off, after that load | $(mib "${RSS_AFTER_L2:-}") |" \
  "| near cache on, idle after start-up | $(mib "${RSS_IDLE_L1:-}") |" \
  "| near cache on, max under the hit load of scenario 1 | $(mib "${RSS_LOAD_L1:-}") |" \
  "| near cache on, after that load | $(mib "${RSS_AFTER_L1:-}") |" ""
fi

# ---------------------------------------------------------------------------------------------
# 6. Hit path on a Redis Cluster

# free_cluster_port VAR: a free port whose cluster bus port (port + 10000) is free as well.
free_cluster_port() {
  local candidate
  while :; do
    free_port candidate
    [ $((candidate + 10000)) -le 65535 ] && claim_port $((candidate + 10000)) && { printf -v "$1" '%s' "$candidate"; return; }
  done
}

# start_cluster: three masters (no replicas, no persistence) joined with `redis-cli --cluster
# create`, as the integration tests start theirs; waits for cluster_state:ok on every node.
CLUSTER_PORTS=()
start_cluster() {
  local i port
  for i in 1 2 3; do
    free_cluster_port port
    mkdir -p "$WORK/cluster.$port"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK/cluster.$port" \
      --cluster-enabled yes --cluster-node-timeout 5000 --cluster-config-file nodes.conf \
      --logfile "$WORK/cluster.$port.log" --daemonize no &
    PIDS+=("$!")
    CLUSTER_PORTS+=("$port")
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    for i in $(seq 1 100); do
      [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && break
      nap 0.05
    done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") --cluster-yes \
    >"$WORK/cluster.create" 2>&1 || die "redis-cli --cluster create failed; see $WORK/cluster.create"
  for port in "${CLUSTER_PORTS[@]}"; do
    for i in $(seq 1 300); do
      redis-cli -p "$port" CLUSTER INFO 2>/dev/null | grep -q 'cluster_state:ok' && break
      nap 0.1
    done
    redis-cli -p "$port" CLUSTER INFO | grep -q 'cluster_state:ok' || die "the cluster node on $port is not ok"
  done
}

# node_stats NAME PORT...: INFO commandstats of the nodes, summed, as "command calls" lines into
# $WORK/stats.NAME (like commandstats).
node_stats() {
  local name=$1 port
  shift
  for port in "$@"; do
    redis-cli -p "$port" INFO commandstats | tr -d '\r' | awk -F'[_:=,]' '/^cmdstat_/ { print $2, $4 }'
  done | awk '{ calls[$1] += $2 } END { for (c in calls) print c, calls[c] }' >"$WORK/stats.$name"
}
# round_trips HANDLER: the handler's Redis round trips so far (its own count in api/metrics: a
# pipeline, or commands sent to several cluster nodes at once, count once).
round_trips() {
  curl -s "$(url "$1" /api/metrics)" |
    awk '/^db_client_operation_duration_seconds_count[{]/ && /db_system_name="redis"/ && /db_operation_name="round_trip"/ { s += $NF }
      END { print s + 0 }'
}

if want 6; then
log "scenario 6: hit path on a Redis Cluster against the single node"
SECTION=6
start_cluster
log "  cluster nodes on ports ${CLUSTER_PORTS[*]}"
start_handler c6single 0   # the near cache off: every hit reads Redis
start_handler c6cluster 0 warn "127.0.0.1:${CLUSTER_PORTS[0]}"
put_value c6single "$HIT_KEY" 100
put_value c6cluster "$HIT_KEY" 100
# slot_owner SLOT: the port of the master serving SLOT.
slot_owner() {
  redis-cli -p "${CLUSTER_PORTS[0]}" CLUSTER NODES | awk -v s="$1" '$3 ~ /master/ {
    for (i = 9; i <= NF; i++) { n = split($i, r, "-"); if (n == 1) r[2] = r[1]; if (s >= r[1] && s <= r[2]) { split($2, a, "[:@]"); print a[2] } } }'
}
HIT_SLOT=$(redis-cli -p "${CLUSTER_PORTS[0]}" CLUSTER KEYSLOT "$HIT_KEY")
HOT_SLOT=$(redis-cli -p "${CLUSTER_PORTS[0]}" CLUSTER KEYSLOT '{hot}set')
if [ "$(slot_owner "$HIT_SLOT")" = "$(slot_owner "$HOT_SLOT")" ]; then HOT_WHERE="the same master"; else HOT_WHERE="another master"; fi

# label|path|what
CLUSTER_TARGETS=(
  "aside|/api/cache-aside/$HIT_KEY|Cache-Aside, forwarded \`GET /api/cache-aside/k\` (L2 hit)"
  "refresh|/api/refresh-ahead/$HIT_KEY|Refresh-Ahead \`GET /api/refresh-ahead/k\` (L2 hit, read counted in batches)"
)
# Check pass on each: every answer a Redis hit; Redis commands (summed over the nodes) and the
# handler's round trips per hit.
: >"$RES/cluster.commands"
for target in "${CLUSTER_TARGETS[@]}"; do
  IFS='|' read -r label path what <<<"$target"
  for where in single cluster; do
    if [ "$where" = single ]; then ports=("$REDIS_PORT"); else ports=("${CLUSTER_PORTS[@]}"); fi
    for port in "${ports[@]}"; do redis-cli -p "$port" CONFIG RESETSTAT >/dev/null; done
    trips0=$(round_trips "c6$where")
    read -r rps p50 p99 requests non2xx errors ok bad why < <(run_wrk 10 "$CHECK_SECONDS" get.lua "$(url "c6$where" "$path")" BENCH_CHECK=1 BENCH_EXPECT=x-cache-tier=l2)
    trips1=$(round_trips "c6$where")
    node_stats "c6.$where.$label" "${ports[@]}"
    [ "$ok" -gt 0 ] || die "check pass of $label on the $where Redis: no answer as expected ($bad not: $why)"
    [ "$bad" = 0 ] || log "  check pass of $label on the $where Redis: $bad of $((ok + bad)) answers not as expected ($why)"
    per_hit=$(awk -v n="$requests" '$1 != "info" && $1 !~ /^config/ && $1 != "ping" && $1 != "cluster" { total += $2; if ($2 / n >= 0.01) parts = parts sprintf("%s`%s` %.2f", parts == "" ? "" : ", ", $1, $2 / n) }
      END { printf "%.2f|%s\n", total / n, parts == "" ? "none" : parts }' "$WORK/stats.c6.$where.$label")
    trips=$(awk -v a="$trips0" -v b="$trips1" -v n="$requests" 'BEGIN { printf "%.2f", (b - a) / n }')
    echo "$label|$where|$requests|$ok|$bad|$why|$trips|$per_hit" >>"$RES/cluster.commands"
  done
done

for c in "${CLUSTER_CONNS[@]}"; do
  log "  $c connection(s)"
  for r in $(seq 1 "$RUNS"); do
    for target in "${CLUSTER_TARGETS[@]}"; do
      IFS='|' read -r label path what <<<"$target"
      # Interleaved: single node, then cluster, for each route and run.
      for where in single cluster; do
        run_wrk "$c" "$DURATION" get.lua "$(url "c6$where" "$path")" >>"$RES/cluster.$c.$label.$where"
      done
    done
  done
done
stop_handler c6cluster
stop_handler c6single

say "## 6. Hit path on a Redis Cluster" "" \
  "The hits of scenario 1 (near cache off, a 100-byte value) through two handlers of the same build: one" \
  "on the script's single \`redis-server\`, one on a local Redis Cluster of three masters (no replicas, no" \
  "persistence; \`RedisCache\` names one node, the handler finds out the cluster by itself). Their runs are" \
  "interleaved (single node, then cluster, route by route, run by run); the baseline of each figure is the" \
  "same route on the single node. The key lives in slot $HIT_SLOT, on one master: a Cache-Aside hit reads" \
  "that node, and so does a Refresh-Ahead hit: its read is counted in the process and sent to the hot-key" \
  "set (hash tag \`{hot}\`, slot $HOT_SLOT, on $HOT_WHERE) once a second with the others." ""
for c in "${CLUSTER_CONNS[@]}"; do
  say "**$c connection(s)**" "" \
    "| route | single node req/s | cluster req/s | × single node | single p50 / p99 ms | cluster p50 / p99 ms |" \
    "| --- | ---: | ---: | ---: | ---: | ---: |"
  for target in "${CLUSTER_TARGETS[@]}"; do
    IFS='|' read -r label path what <<<"$target"
    single=$RES/cluster.$c.$label.single
    cluster=$RES/cluster.$c.$label.cluster
    say "| $what | $(num "$(median "$single" 1)") | $(num "$(median "$cluster" 1)") | $(ratio "$(median "$cluster" 1)" "$(median "$single" 1)") | $(num "$(median "$single" 2)" 3) / $(num "$(median "$single" 3)" 3) | $(num "$(median "$cluster" 2)" 3) / $(num "$(median "$cluster" 3)" 3) |"
  done
  non2xx=$(cat "$RES"/cluster."$c".* | awk '{ s += $5 + $6 } END { print s + 0 }')
  [ "$non2xx" = 0 ] || say "" "($non2xx answers were not 2xx or had socket errors at $c connections.)"
  say ""
done
say "### Redis commands and round trips per hit, cluster against single node" "" \
  "\`CONFIG RESETSTAT\` on every node, a ${CHECK_SECONDS} s check pass at 10 connections (every answer checked:" \
  "status and \`x-cache-tier: l2\`), then the \`INFO commandstats\` calls summed over the nodes divided by the" \
  "requests served (\`info\`, \`config\`, \`ping\` and \`cluster\` left out: the cluster client's topology checks" \
  "are \`cluster\` calls). Round trips are the handler's own count (\`db_client_operation_duration_seconds_count\`" \
  "of \`round_trip\` in \`api/metrics\`, before and after): a pipeline, or commands sent to several nodes at" \
  "once and awaited together, is one." "" \
  "| route | Redis | requests | answers as expected | round trips per hit | commands per hit | commands (≥ 0.01 per hit) |" \
  "| --- | --- | ---: | ---: | ---: | ---: | --- |"
while IFS='|' read -r label where requests ok bad why trips total parts; do
  for target in "${CLUSTER_TARGETS[@]}"; do
    IFS='|' read -r l _ what <<<"$target"
    [ "$bad" = 0 ] && why="" || why=" (first other: ${why//_/ })"
    [ "$where" = single ] && redis="single node" || redis="3-master cluster"
    [ "$l" = "$label" ] && say "| $what | $redis | $requests | $ok of $((ok + bad))$why | $trips | $total | $parts |"
  done
done <"$RES/cluster.commands"
say ""
fi

# ---------------------------------------------------------------------------------------------

total=$(elapsed_s)
SECTION=7
say "---" "" "The whole run took $(awk -v s="$total" 'BEGIN { printf "%d min %d s", s / 60, s % 60 }') (build included)."
mkdir -p "$(dirname "$REPORT")"
for n in 0 1 2 3 4 5 6 7; do
  [ -f "$WORK/section.$n.md" ] && cat "$WORK/section.$n.md"
done >"$REPORT"
log "report written to $REPORT"
