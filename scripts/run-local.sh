#!/usr/bin/env bash
# Runs the handler locally on its embedded defaults, without the Functions host: Redis on
# localhost:6379 (started here if none is running), the SQLite store under .data/, settings from
# local.settings.json. It listens on 127.0.0.1:7072, so that `func start` (scripts/run-func.sh,
# port 7071) can run beside it. Then:
#   curl localhost:7072/api/cache-aside/k
# Set PORT to listen elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_redis
build_handler

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
export FUNCTIONS_CUSTOMHANDLER_PORT="${PORT:-7072}"
echo "run-local: handler on http://127.0.0.1:${FUNCTIONS_CUSTOMHANDLER_PORT} (Ctrl+C to stop)"
exec ./handler
