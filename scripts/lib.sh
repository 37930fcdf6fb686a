# Shared by the run scripts: `source scripts/lib.sh` from the repository root.

# Runs a command as root: directly when we are root, through passwordless sudo otherwise. Fails
# (status 1) when neither is possible.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 1
  fi
}

# Makes sure a Redis answers on 127.0.0.1:6379: uses the one that is there, or starts one (data and
# log under .data/), installing redis-server with apt-get when it can.
ensure_redis() {
  mkdir -p .data
  redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }
  redis_up && return 0
  if ! command -v redis-server >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && as_root true; then
      echo "$0: installing redis-server with apt-get"
      as_root apt-get update -qq && as_root apt-get install -y -qq redis-server >/dev/null
    else
      echo "$0: no Redis on localhost:6379 and no redis-server to start." >&2
      echo "  Install it (Debian/Ubuntu: sudo apt-get install -y redis-server; macOS: brew install redis)," >&2
      echo "  or run one in a container: docker run -p 6379:6379 redis:7, then run this script again." >&2
      exit 1
    fi
  fi
  echo "$0: starting redis-server on 127.0.0.1:6379 (data and log in .data/)"
  redis-server --port 6379 --bind 127.0.0.1 --daemonize yes --dir "$PWD/.data" \
    --pidfile "$PWD/.data/redis.pid" --logfile "$PWD/.data/redis.log" --save "" --appendonly no
  for _ in $(seq 1 50); do redis_up && return 0; sleep 0.1; done
  echo "$0: redis-server did not come up; see .data/redis.log" >&2
  exit 1
}

# Builds ./handler (release). The Event Hubs client links OpenSSL: without its headers, the
# handler is built without it (locally write-behind uses the Redis Stream anyway).
build_handler() {
  local features=()
  if ! (command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl 2>/dev/null); then
    if command -v apt-get >/dev/null 2>&1 && as_root true; then
      echo "$0: installing pkg-config and libssl-dev (for the Event Hubs client)"
      as_root apt-get update -qq && as_root apt-get install -y -qq pkg-config libssl-dev >/dev/null
    else
      echo "$0: OpenSSL headers not found; building without the Event Hubs client (--no-default-features)"
      features=(--no-default-features)
    fi
  fi
  cargo build --release --locked ${features[@]+"${features[@]}"}
  install_handler "${CARGO_TARGET_DIR:-target}/release/handler"
}

# Puts a copy of the binary $1 at ./handler atomically: copied to a temporary name in the same
# directory, then renamed over ./handler. The other run script may be running ./handler at that
# moment (run-local.sh execs it, `func start` starts it): copying onto a running executable fails
# with "Text file busy", while a rename leaves the running file alone and points the name at the
# new one.
install_handler() {
  local tmp
  tmp=$(mktemp ./handler.XXXXXX)
  if ! { cp "$1" "$tmp" && chmod 755 "$tmp" && mv -f "$tmp" ./handler; }; then
    rm -f "$tmp"
    echo "$0: could not put $1 at ./handler" >&2
    return 1
  fi
}
