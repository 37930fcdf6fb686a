#!/usr/bin/env bash
# Builds the release handler and writes dist/functionapp.zip, ready for
#   az functionapp deployment source config-zip -g <group> -n <app> --src dist/functionapp.zip
# or, unzipped into an empty folder, `func azure functionapp publish <app> --no-build`.
#
# The zip holds exactly host.json, every <Folder>/function.json of the repository root and the
# executable `handler` (zip mode 0755; the rest 0644). The handler is portable: built with
# `cargo zigbuild` against glibc 2.28 symbol versions, with OpenSSL (for the Event Hubs client) built
# from source and linked statically (feature `vendored-openssl`), so it runs on any x86_64 Linux with
# glibc >= 2.28 and needs no shared library beyond glibc's and libgcc_s. scripts/check_package.py
# checks all of that at the end.
#
#   scripts/package.sh              build, zip, check
#   scripts/package.sh --no-build   zip and check the binary already built
#   scripts/package.sh --install-tools   only install zig and cargo-zigbuild when missing (CI)
#
# Needs: cargo, python3, perl and make (OpenSSL's build), zig and cargo-zigbuild. The last two come
# from PyPI (`pip install ziglang cargo-zigbuild`) and are installed here when missing.
# Honours CARGO_TARGET_DIR (default: target/).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Known-good versions, installed when none is found (.ci/run installs the same).
ZIGLANG_SPEC=${ZIGLANG_SPEC:-ziglang==0.17.1}
CARGO_ZIGBUILD_SPEC=${CARGO_ZIGBUILD_SPEC:-cargo-zigbuild==0.24.1}
GLIBC=2.28
triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
binary=$target_dir/$triple/release/handler
out=dist/functionapp.zip

build=1 tools_only=0
for arg in "$@"; do
  case $arg in
    --no-build) build=0 ;;
    --install-tools) tools_only=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "package.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "package.sh: $*"; }
die() { echo "package.sh: $*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is missing (Debian/Ubuntu: apt-get install -y python3)"
[ "$(uname -m)" = x86_64 ] || die "builds on x86_64 Linux only (the Functions image is x86_64); this is $(uname -sm)"

have_zig() { command -v zig >/dev/null 2>&1 || python3 -m ziglang version >/dev/null 2>&1; }
have_zigbuild() { command -v cargo-zigbuild >/dev/null 2>&1; }

# Puts pip's --user bin folder (and our fallback venv) on PATH, where installs land.
user_bin=$(python3 -c 'import site, os; print(os.path.join(site.getuserbase(), "bin"))' 2>/dev/null || true)
[ -n "$user_bin" ] && export PATH="$user_bin:$PATH"
venv=${XDG_CACHE_HOME:-$HOME/.cache}/functionapp-package/venv
[ -x "$venv/bin/cargo-zigbuild" ] && export PATH="$venv/bin:$PATH"

install_tools() {
  local specs=()
  have_zig || specs+=("$ZIGLANG_SPEC")
  have_zigbuild || specs+=("$CARGO_ZIGBUILD_SPEC")
  [ ${#specs[@]} -eq 0 ] && return 0
  say "installing ${specs[*]} from PyPI"
  if python3 -m pip --version >/dev/null 2>&1; then
    # --user first; inside a virtualenv (no user site) a plain install; else a private venv
    # (Debian's python3 refuses pip installs outside one: PEP 668).
    if python3 -m pip install -q --user "${specs[@]}" 2>/dev/null || python3 -m pip install -q "${specs[@]}" 2>/dev/null; then
      hash -r
      have_zig && have_zigbuild && return 0
    fi
  fi
  if python3 -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/python3" -m pip install -q "${specs[@]}"; then
    export PATH="$venv/bin:$PATH"
    hash -r
    have_zig && have_zigbuild && return 0
  fi
  if ! have_zigbuild && command -v cargo >/dev/null 2>&1; then
    say "pip could not install cargo-zigbuild; trying cargo install cargo-zigbuild --locked"
    cargo install -q cargo-zigbuild --locked || true
    hash -r
  fi
  have_zig && have_zigbuild && return 0
  die "zig and cargo-zigbuild are needed: install them with
    python3 -m pip install --user '$ZIGLANG_SPEC' '$CARGO_ZIGBUILD_SPEC'
  (Debian/Ubuntu: apt-get install -y python3-pip, or python3-venv for the fallback venv; or zig
  from ziglang.org and 'cargo install cargo-zigbuild --locked')"
}

if [ $tools_only -eq 1 ]; then
  install_tools
  say "zig $(zig version 2>/dev/null || python3 -m ziglang version), $(cargo-zigbuild --version)"
  exit 0
fi

if [ $build -eq 1 ]; then
  command -v cargo >/dev/null 2>&1 || die "cargo is missing (https://rustup.rs)"
  # OpenSSL's own build (openssl-src) runs perl's Configure and make.
  command -v make >/dev/null 2>&1 || die "make is missing (Debian/Ubuntu: apt-get install -y make)"
  perl -MIPC::Cmd -MFile::Compare -MFile::Copy -e1 2>/dev/null ||
    die "perl with its core modules is missing, needed to build OpenSSL (Debian/Ubuntu: apt-get install -y perl)"
  install_tools
  say "building $binary (cargo zigbuild, glibc $GLIBC, vendored OpenSSL)"
  start=$SECONDS
  cargo zigbuild --release --locked --features vendored-openssl --target "$triple.$GLIBC"
  say "build took $((SECONDS - start)) s"
fi
[ -f "$binary" ] || die "$binary is missing (run without --no-build)"

mkdir -p dist
python3 - "$binary" "$out" <<'PY'
import os, sys, time, zipfile

binary, out = sys.argv[1], sys.argv[2]
functions = sorted(d for d in os.listdir(".") if not d.startswith(".") and os.path.isfile(os.path.join(d, "function.json")))
if not functions:
    sys.exit("package.sh: no <Folder>/function.json at the repository root")
entries = [("host.json", "host.json", 0o644)]
entries += [(f"{d}/function.json", os.path.join(d, "function.json"), 0o644) for d in functions]
entries.append(("handler", binary, 0o755))

tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
    for name, src, mode in entries:
        # The files' own modification times (deployments that sync by time see the change).
        mtime = max(os.stat(src).st_mtime, 315532800)  # zip dates start in 1980
        info = zipfile.ZipInfo(name, date_time=time.localtime(mtime)[:6])
        info.create_system = 3  # unix: the host honours the mode bits below
        info.external_attr = (0o100000 | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(src, "rb") as f:
            zf.writestr(info, f.read(), compresslevel=9)
os.replace(tmp, out)
PY

size=$(du -h "$out" | cut -f1)
say "wrote $root/$out ($size)"
python3 scripts/check_package.py "$out"
