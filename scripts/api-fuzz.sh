#!/usr/bin/env bash
# Fuzzes the HTTP API against docs/openapi.yaml with schemathesis: every documented operation with
# generated valid and invalid requests (path, query, headers, bodies), then sequences that follow
# the document's links (write, then read, evict and delete what was written). Every check is on but
# `ignored_auth`: function keys are checked by the Functions host, and this run talks to the
# handler directly, as `scripts/run-local.sh` serves it.
#
# It starts its own redis-server on a free port and the handler (debug build; `--release` for the
# release one) on another, with the SQLite store in a temporary directory, and stops them on exit.
# Installs schemathesis from PyPI when it is missing.
#
#   scripts/api-fuzz.sh                 # 50 cases per operation, a random seed
#   scripts/api-fuzz.sh --release -n 200 --seed 1
#
# Options: -n/--max-examples N (per operation, default 50), --seed N, --release; anything after
# `--` goes to `schemathesis run` as it is. Not part of scripts/test.sh: it takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

max_examples=50
seed=""
profile=debug
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--max-examples) max_examples=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --release) profile=release; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "api-fuzz: unknown option $1 (see the top of $0)" >&2; exit 2 ;;
  esac
done

started=$(date +%s)
if ! python3 -c "import schemathesis" 2>/dev/null; then
  echo "api-fuzz: installing schemathesis (pip)"
  python3 -m pip install -q schemathesis 2>/dev/null \
    || python3 -m pip install -q --user schemathesis \
    || { echo "api-fuzz: install it first: python3 -m pip install schemathesis" >&2; exit 1; }
fi
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 \
  || { echo "api-fuzz: redis-server is missing (Debian/Ubuntu: apt-get install -y redis-server)" >&2; exit 1; }

build=(cargo build --locked --bin handler)
[ "$profile" = release ] && build+=(--release)
"${build[@]}"
handler="${CARGO_TARGET_DIR:-target}/$profile/handler"

work=$(mktemp -d "${TMPDIR:-/tmp}/api-fuzz.XXXXXX")
redis_pid=""
handler_pid=""
cleanup() {
  [ -n "$handler_pid" ] && kill "$handler_pid" 2>/dev/null && wait "$handler_pid" 2>/dev/null
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
redis_pid=$!

handler_port=$(free_port)
RedisCache="127.0.0.1:$redis_port" LocalStorePath="$work/store.db" \
  FUNCTIONS_CUSTOMHANDLER_PORT="$handler_port" RUST_LOG="${RUST_LOG:-warn}" \
  "$handler" >"$work/handler.log" 2>&1 &
handler_pid=$!
base="http://127.0.0.1:$handler_port"
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "$base/" 2>/dev/null && break
  kill -0 "$handler_pid" 2>/dev/null || { echo "api-fuzz: the handler exited:" >&2; cat "$work/handler.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "$base/api/health" || { echo "api-fuzz: the handler is not healthy" >&2; exit 1; }
# Something for the dead-letter operations to list, replay and discard: events the consumer cannot
# apply, put on the write-behind stream (`\x1fwritebehind`), which it dead-letters at once.
for poison in 'not json' 'not json either' '[]' '{}' '{"key":"k","op":"upsert","version":1,"ts":""}' '{"key":"","op":"delete","version":1,"ts":""}'; do
  redis-cli -p "$redis_port" XADD $'\x1fwritebehind' '*' event "$poison" >/dev/null
done
for _ in $(seq 1 50); do
  [ "$(redis-cli -p "$redis_port" XLEN $'\x1fdeadletter')" -ge 6 ] && break
  sleep 0.1
done

# The document without the parts marked `x-not-yet-served` (specified ahead of the code, see
# tests/integration/openapi.rs): the operations, and the oneOf branches that refer to such schemas.
python3 - docs/openapi.yaml "$work/openapi.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
schemas = doc["components"]["schemas"]
unserved = {f"#/components/schemas/{n}" for n, s in schemas.items() if s.get("x-not-yet-served")}
dropped = []
for path, item in list(doc["paths"].items()):
    for method in [m for m, op in item.items() if isinstance(op, dict) and op.get("x-not-yet-served")]:
        del item[method]
        dropped.append(f"{method.upper()} {path}")
    if not any(m in item for m in ("get", "put", "post", "delete", "patch")):
        del doc["paths"][path]
def prune(node):
    if isinstance(node, dict):
        for word in ("oneOf", "anyOf"):
            if word in node:
                node[word] = [b for b in node[word] if b.get("$ref") not in unserved]
        for value in node.values():
            prune(value)
    elif isinstance(node, list):
        for value in node:
            prune(value)
prune(doc["paths"])
for ref in unserved:
    del schemas[ref.rsplit("/", 1)[1]]
    dropped.append(ref.rsplit("/", 1)[1])
yaml.safe_dump(doc, open(sys.argv[2], "w"), sort_keys=False, allow_unicode=True)
print("api-fuzz: not served yet, left out:", ", ".join(dropped) or "nothing")
PY

# Per-operation settings. Replaying one dead letter answers `422` when the dead letter cannot be
# replayed (its event is not a valid write event): a documented outcome that depends on what the
# dead letter holds, not on the request, so valid requests may get it.
cat >"$work/schemathesis.toml" <<'TOML'
[[operations]]
include-operation-id = "replayDeadLetter"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
TOML

args=(--config-file "$work/schemathesis.toml" run "$work/openapi.yaml" --url "$base"
  --checks all --exclude-checks ignored_auth
  --max-examples "$max_examples"
  --request-timeout 10 --max-response-time 5
  --generation-database none
  --report junit --report-dir "$work/report")
[ -n "$seed" ] && args+=(--seed "$seed")
echo "api-fuzz: schemathesis ${args[*]} ${extra[*]+"${extra[*]}"}"
status=0
# From the temporary directory, where schemathesis keeps its cache.
(cd "$work" && python3 -m schemathesis.cli "${args[@]}" ${extra[@]+"${extra[@]}"}) || status=$?

python3 - "$work/report" "$((  $(date +%s) - started ))" <<'PY' || true
import glob, sys, xml.etree.ElementTree as ET
tests = failures = errors = 0
for path in glob.glob(sys.argv[1] + "/*.xml"):
    root = ET.parse(path).getroot()
    for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
        tests += int(suite.get("tests", 0))
        failures += int(suite.get("failures", 0))
        errors += int(suite.get("errors", 0))
print(f"api-fuzz: {tests} operations and scenarios tested, {failures} failed, {errors} errors, in {sys.argv[2]} s")
PY
if grep -q "panicked" "$work/handler.log"; then
  echo "api-fuzz: the handler panicked:" >&2
  grep -A3 "panicked" "$work/handler.log" >&2
  status=1
fi
kill -0 "$handler_pid" 2>/dev/null || { echo "api-fuzz: the handler died during the run" >&2; status=1; }
exit "$status"
