#!/usr/bin/env bash
# Runs the app behind the real Functions host, as on Azure: Redis on localhost:6379 and Azurite (the
# storage emulator `AzureWebJobsStorage=UseDevelopmentStorage=true` points at) are started here if
# they are not running, ./handler is built, then `func start` serves on http://localhost:7071
# (scripts/run-local.sh uses 7072, so both can run at once).
#
# Needs Azure Functions Core Tools v4 (`func`), which this script cannot install for you: its
# installer downloads the host from Microsoft's CDN. See
# https://learn.microsoft.com/azure/azure-functions/functions-run-local#install-the-azure-functions-core-tools
# Azurite comes from the npm registry (`npm install -g azurite`, or `npx azurite`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_redis

azurite_up() { (exec 3<>/dev/tcp/127.0.0.1/10000) 2>/dev/null; }
if ! azurite_up; then
  if ! command -v azurite >/dev/null 2>&1; then
    if ! command -v npm >/dev/null 2>&1; then
      echo "run-func: Azurite is not running and npm is missing; install Node.js (https://nodejs.org) and run: npm install -g azurite" >&2
      exit 1
    fi
    echo "run-func: installing Azurite from the npm registry (npm install -g azurite)"
    npm install -g azurite >/dev/null 2>&1 || as_root npm install -g azurite >/dev/null
  fi
  mkdir -p .data/azurite
  echo "run-func: starting Azurite on 127.0.0.1:10000-10002 (data and log in .data/azurite)"
  azurite --silent --skipApiVersionCheck --location .data/azurite --debug .data/azurite/debug.log \
    --blobHost 127.0.0.1 --queueHost 127.0.0.1 --tableHost 127.0.0.1 >.data/azurite/azurite.log 2>&1 &
  for _ in $(seq 1 100); do azurite_up && break; sleep 0.1; done
  azurite_up || { echo "run-func: Azurite did not come up; see .data/azurite/azurite.log" >&2; exit 1; }
fi

build_handler

if ! command -v func >/dev/null 2>&1; then
  echo "run-func: Redis and Azurite are up and ./handler is built, but Azure Functions Core Tools ('func') is not installed." >&2
  echo "  Install Core Tools v4 (https://learn.microsoft.com/azure/azure-functions/functions-run-local), then run: func start" >&2
  echo "  Without it, scripts/run-local.sh runs the handler on its own (port 7072)." >&2
  exit 1
fi
echo "run-func: func start (http://localhost:7071; the handler gets its own port from the host)"
exec func start --port 7071
