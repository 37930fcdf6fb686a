#!/usr/bin/env bash
# Runs every check and test. Needs `redis-server` and `openssl` on PATH: installs them with apt-get
# when it can (root, or sudo without a password), otherwise says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && sudo="sudo -n"; } || true
    if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
      echo "test.sh: installing $pkg (for $cmd)"
      $sudo apt-get update -qq && $sudo apt-get install -y -qq "$pkg" >/dev/null
      return 0
    fi
  fi
  echo "test.sh: '$cmd' is missing; install it first (Debian/Ubuntu: sudo apt-get install -y $pkg; macOS: brew install ${pkg%-server})" >&2
  exit 1
}
need redis-server redis-server
need openssl openssl
need pkg-config pkg-config
# The Event Hubs client (default feature `eventhubs`) links OpenSSL.
if ! pkg-config --exists openssl 2>/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing libssl-dev (OpenSSL headers for the Event Hubs client)"
    apt-get update -qq && apt-get install -y -qq libssl-dev >/dev/null
  else
    echo "test.sh: OpenSSL headers are missing; install them (Debian/Ubuntu: sudo apt-get install -y libssl-dev pkg-config)" >&2
    exit 1
  fi
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The build without Event Hubs (no OpenSSL) must stay clean too.
cargo clippy --all-targets --locked --no-default-features -- -D warnings
# The Bicep check (tests/integration/infra.rs) parses infra/ with tree-sitter-bicep from PyPI.
if ! python3 -c "import tree_sitter, tree_sitter_bicep" 2>/dev/null; then
  echo "test.sh: installing tree-sitter and tree-sitter-bicep (pip) for the Bicep check"
  python3 -m pip install -q tree-sitter tree-sitter-bicep 2>/dev/null \
    || python3 -m pip install -q --user tree-sitter tree-sitter-bicep \
    || { echo "test.sh: install them first: python3 -m pip install tree-sitter tree-sitter-bicep" >&2; exit 1; }
fi
# The unit tests and the one integration-test binary, against a single Redis node.
cargo test --locked --tests
# Every test that uses the tests' Redis again, in the same binary, against a three-master Redis
# Cluster. Left out: the modules without Redis (architecture, infra, eventhubs_amqp, store_sqlite),
# cluster (it starts clusters of its own), and the tests of properties and store_cosmos that
# touch no Redis (decoders, settings, the Cosmos store alone).
CACHEPATTERNS_TEST_REDIS=cluster cargo test --locked --test integration -- \
  http_api:: invariants:: write_behind:: refresh_ahead:: keys:: hardening:: redis_entra_id:: scale_out:: \
  invalidation:: near_cache:: bulk_read:: store_changes:: telemetry:: binary:: openapi:: \
  properties::any_ store_cosmos::throttling_reaches_the_caller store_cosmos::cache_aside_and_write_through_over_http \
  store_cosmos::an_unreachable_account
# What differs without the `eventhubs` feature: start-up with an Event Hubs setting says how to get it.
cargo test --locked --no-default-features --lib -- without_the_event_hubs_feature
# The deployment package: the portable release binary (glibc 2.28, OpenSSL built in) and
# dist/functionapp.zip, then its checks (exact files, modes, NEEDED libraries, newest GLIBC_x.y).
scripts/package.sh
python3 scripts/check_package.py dist/functionapp.zip
