#!/usr/bin/env bash
# Proves that the packaged handler runs on a stock Debian 11 (bullseye: glibc 2.31, no OpenSSL 3):
# makes a minimal bullseye root with debootstrap (cached in .data/bullseye, so a second run is fast),
# unpacks dist/functionapp.zip into it with the zip's own file modes, starts a redis-server on the
# host on a free port, runs the handler inside the root with chroot (same network as the host), and
# checks a write-through PUT and two cache-aside GETs from the host with curl.
#
#   scripts/package.sh && scripts/prove-debian11.sh [dist/functionapp.zip]
#
# Runs as root (debootstrap, chroot, mount). Needs debootstrap, redis-server, curl and python3;
# installs the missing ones with apt-get. DEBIAN_MIRROR overrides http://deb.debian.org/debian.
# Not part of CI: the first debootstrap takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

zip=${1:-dist/functionapp.zip}
rootfs=$PWD/.data/bullseye
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
key=debian11
app=/opt/app

say() { echo "prove-debian11: $*"; }
die() { echo "prove-debian11: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it)"
[ -f "$zip" ] || die "$zip is missing: run scripts/package.sh first"
command -v python3 >/dev/null 2>&1 || die "python3 is missing"

need() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ -x "/usr/sbin/$cmd" ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "'$cmd' is missing; install the package $pkg"
  say "installing $pkg"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
}
need debootstrap debootstrap
need redis-server redis-server
need curl curl
export PATH="$PATH:/usr/sbin:/sbin"

# --- the Debian 11 root (cached) --------------------------------------------------------------
if [ ! -f "$rootfs/.prove-complete" ]; then
  rm -rf "$rootfs"
  mkdir -p "$(dirname "$rootfs")"
  say "debootstrap --variant=minbase bullseye $rootfs $mirror (first run: a few minutes)"
  start=$SECONDS
  for try in 1 2; do  # once more on a network hiccup
    debootstrap --variant=minbase bullseye "$rootfs" "$mirror" >"$rootfs.debootstrap.log" 2>&1 && break
    [ $try -eq 2 ] && { tail -20 "$rootfs.debootstrap.log" >&2; die "debootstrap failed (log: $rootfs.debootstrap.log)"; }
    say "debootstrap failed; trying again"
    rm -rf "$rootfs"
  done
  touch "$rootfs/.prove-complete"
  say "root made in $((SECONDS - start)) s"
else
  say "using the cached root $rootfs"
fi

# --- processes and mounts, cleaned up on any exit ---------------------------------------------
redis_pid="" handler_pid="" mounted_proc=0
work=$(mktemp -d)
cleanup() {
  [ -n "$handler_pid" ] && kill "$handler_pid" 2>/dev/null && wait "$handler_pid" 2>/dev/null
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  [ "$mounted_proc" -eq 1 ] && umount "$rootfs/proc" 2>/dev/null
  rm -rf "$work"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- unpack the zip as the Functions host would, keeping the zip's modes ----------------------
rm -rf "${rootfs:?}$app" && mkdir -p "$rootfs$app"
python3 - "$zip" "$rootfs$app" <<'PY'
import os, sys, zipfile
zf = zipfile.ZipFile(sys.argv[1])
for info in zf.infolist():
    path = zf.extract(info, sys.argv[2])
    os.chmod(path, (info.external_attr >> 16) & 0o7777)  # the zip's mode, nothing else
PY
[ -x "$rootfs$app/handler" ] || die "handler is not executable after unpacking (zip mode lost?)"
rm -f "$rootfs"/tmp/store.db*

if ! mountpoint -q "$rootfs/proc" && mount -t proc proc "$rootfs/proc" 2>/dev/null; then mounted_proc=1; fi

in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
os=$(. "$rootfs/etc/os-release" && echo "$PRETTY_NAME")
ldd_version=$(in_root ldd --version 2>/dev/null | head -1 || true)
[ -n "$ldd_version" ] || ldd_version=$(in_root /lib/x86_64-linux-gnu/libc.so.6 | head -1)
ldd_handler=$(in_root ldd "$app/handler" 2>&1) || die "ldd $app/handler in the root failed:
$ldd_handler"
grep -q 'not found' <<<"$ldd_handler" && die "libraries missing in the root:
$ldd_handler"
ssl_files=$(cd "$rootfs" && find usr lib -name 'libssl.so*' 2>/dev/null | tr '\n' ' ')
if grep -q libssl <<<"$ldd_handler"; then die "the handler loads libssl: $ldd_handler"; fi
if [ -n "$ssl_files" ]; then ssl_line="the root has ${ssl_files}but the handler does not load it";
else ssl_line="no libssl.so* anywhere in the root (and none loaded)"; fi

# --- redis on the host, the handler in the root -----------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rport=$(free_port)
hport=$(free_port)
while [ "$hport" = "$rport" ]; do hport=$(free_port); done

redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$rport" && printf 'PING\r\n' >&3 && head -c5 <&3 | grep -q PONG) 2>/dev/null && break
  kill -0 "$redis_pid" 2>/dev/null || { cat "$work/redis.log" >&2; die "redis-server exited"; }
  sleep 0.1
done

chroot "$rootfs" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root \
  RedisCache="127.0.0.1:$rport" LocalStorePath=/tmp/store.db FUNCTIONS_CUSTOMHANDLER_PORT="$hport" \
  /bin/sh -c "cd $app && exec ./handler" >"$work/handler.log" 2>&1 &
handler_pid=$!
base=http://127.0.0.1:$hport
up=0
for _ in $(seq 300); do
  kill -0 "$handler_pid" 2>/dev/null || { cat "$work/handler.log" >&2; die "the handler exited in the root"; }
  if curl -fsS -o "$work/root.body" "$base/" 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
[ $up -eq 1 ] || { cat "$work/handler.log" >&2; die "GET / did not answer within 30 s"; }

# request METHOD PATH [BODY] -> sets status, body file $work/body, headers file $work/headers
request() {
  local args=(-sS -X "$1" -o "$work/body" -D "$work/headers" -w '%{http_code}')
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
  status=$(curl "${args[@]}" "$base$2") || die "curl $1 $2 failed"
}
header() { tr -d '\r' <"$work/headers" | awk -v h="$1" 'tolower($1) == tolower(h) ":" { print $2 }' | tail -1; }

value='{"proof":"debian11","glibc":"2.31","n":42,"nested":{"ok":true,"list":[1,2,3]},"text":"héllo ✓"}'
request PUT "/api/write-through/$key" "$value"
[ "$status" = 200 ] || die "PUT /api/write-through/$key -> $status: $(cat "$work/body")"
put_cache=$(header x-cache)
put_body=$(cat "$work/body")

request GET "/api/cache-aside/$key"
[ "$status" = 200 ] || die "GET /api/cache-aside/$key -> $status: $(cat "$work/body")"
first_cache=$(header x-cache)
first_body=$(cat "$work/body")
request GET "/api/cache-aside/$key"
[ "$status" = 200 ] || die "second GET /api/cache-aside/$key -> $status: $(cat "$work/body")"
second_cache=$(header x-cache)
[ "$second_cache" = hit ] || die "second read: x-cache '$second_cache', want hit"
for body in "$put_body" "$first_body" "$(cat "$work/body")"; do
  python3 - "$value" "$body" "$key" <<'PY' || die "the value did not round-trip: $body"
import json, sys
sent, got, key = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
assert got["key"] == key and got["value"] == sent, (got, sent)
PY
done

echo
say "PASSED: the packaged handler runs on $os"
echo "  glibc in the root:  $ldd_version"
echo "  handler:            from $zip, mode $(stat -c %a "$rootfs$app/handler") as unpacked from the zip"
echo "  ldd in the root:"
sed 's/^[[:space:]]*/                      /' <<<"$ldd_handler"
echo "  OpenSSL:            $ssl_line"
echo "  GET /               -> 200 ($(head -c 80 "$work/root.body" | tr -d '\n'))"
echo "  PUT  /api/write-through/$key -> 200, x-cache: $put_cache, $put_body"
echo "  GET  /api/cache-aside/$key   -> 200, x-cache: $first_cache, value round-trips"
echo "  GET  /api/cache-aside/$key   -> 200, x-cache: $second_cache, value round-trips"
echo "  (Redis 127.0.0.1:$rport on the host, handler 127.0.0.1:$hport in the chroot; both stopped now)"
