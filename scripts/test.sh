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

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
