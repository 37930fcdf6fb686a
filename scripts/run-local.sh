#!/usr/bin/env bash
# Runs the handler locally on its embedded defaults: Redis on localhost:6379 (started here if none
# is running), the SQLite store under .data/, settings from local.settings.json. Then:
#   curl localhost:7071/api/cache-aside/k
# Set PORT to listen elsewhere. With Azure Functions Core Tools, `func start` works from the same
# layout after this script has built ./handler once.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .data

redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }

if ! redis_up; then
  if ! command -v redis-server >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; fi
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
      echo "run-local: installing redis-server with apt-get"
      $sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server >/dev/null
    else
      echo "run-local: no Redis on localhost:6379 and no redis-server to start." >&2
      echo "  Install it (Debian/Ubuntu: sudo apt-get install -y redis-server; macOS: brew install redis)," >&2
      echo "  or run one in a container: docker run -p 6379:6379 redis:7, then run this script again." >&2
      exit 1
    fi
  fi
  echo "run-local: starting redis-server on 127.0.0.1:6379 (data and log in .data/)"
  redis-server --port 6379 --bind 127.0.0.1 --daemonize yes --dir "$PWD/.data" \
    --pidfile "$PWD/.data/redis.pid" --logfile "$PWD/.data/redis.log" --save "" --appendonly no
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
fi

# The Event Hubs client (default feature) links OpenSSL. Locally write-behind uses the Redis Stream,
# so without the OpenSSL headers the handler is built without it.
features=()
if ! (command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl 2>/dev/null); then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    echo "run-local: installing pkg-config and libssl-dev (for the Event Hubs client)"
    apt-get update -qq && apt-get install -y -qq pkg-config libssl-dev >/dev/null
  else
    echo "run-local: OpenSSL headers not found; building without the Event Hubs client (--no-default-features)"
    features=(--no-default-features)
  fi
fi
cargo build --release --locked ${features[@]+"${features[@]}"}
cp target/release/handler ./handler

# The Values of local.settings.json, unless already set in the environment.
if command -v python3 >/dev/null 2>&1; then
  eval "$(python3 - <<'PY'
import json, os, shlex
values = json.load(open("local.settings.json")).get("Values", {})
for name, value in values.items():
    if name.replace("_", "").isalnum() and name not in os.environ:
        print(f"export {name}={shlex.quote(str(value))}")
PY
)"
else
  export RedisCache="${RedisCache:-localhost:6379}"
fi
export FUNCTIONS_CUSTOMHANDLER_PORT="${PORT:-${FUNCTIONS_CUSTOMHANDLER_PORT:-7071}}"
echo "run-local: handler on http://127.0.0.1:${FUNCTIONS_CUSTOMHANDLER_PORT} (Ctrl+C to stop)"
exec ./handler
