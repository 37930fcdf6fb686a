#!/usr/bin/env python3
"""Checks the deployment zip that scripts/package.sh writes (default dist/functionapp.zip).

  python3 scripts/check_package.py [dist/functionapp.zip] [--root DIR]

The zip must hold exactly host.json, one <Folder>/function.json for every folder of the app root
(--root, default: the repository) that has a function.json, and the executable `handler`, with the
same bytes as the app root's files. Modes come from the zip's unix attributes, as the Functions
host unpacks them: `handler` a regular file 0755, every other file 0644, no directories.

The handler must be an x86_64 ELF that needs no shared library beyond glibc's own and libgcc_s,
asks for no glibc symbol version newer than 2.28 (nor GLIBC_PRIVATE), and has no RPATH/RUNPATH.
The ELF is read here in pure Python (program headers and the dynamic segment, as the loader reads
them), so no binutils are needed.

Exits 1 with the reasons on any failure; prints one summary line on success.
"""

import argparse
import json
import os
import stat
import struct
import sys
import zipfile

ALLOWED_NEEDED = {
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
    "libgcc_s.so.1",
}
MAX_GLIBC = (2, 28)
HANDLER = "handler"
INTERPRETER = "/lib64/ld-linux-x86-64.so.2"

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 15, 29
DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF


class ElfError(Exception):
    pass


def cstr(data, off):
    end = data.find(b"\0", off)
    if off < 0 or off >= len(data) or end < 0:
        raise ElfError(f"string offset {off} out of range")
    return data[off:end].decode("utf-8", "replace")


def read_elf(data):
    """Returns (interpreter, needed, rpaths, verneed) of an ELF64 little-endian x86_64 file.

    verneed is a list of (file, version name) pairs from DT_VERNEED.
    """
    if data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("not a 64-bit little-endian ELF")
    (e_type, e_machine, _ver, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum) = struct.unpack_from(
        "<HHIQQQIHHH", data, 16
    )
    if e_machine != 62:
        raise ElfError(f"e_machine {e_machine}, not x86_64 (62)")
    if e_type not in (2, 3):
        raise ElfError(f"e_type {e_type}: not an executable")
    segments = []
    for i in range(e_phnum):
        p_type, _pflags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize
        )
        segments.append((p_type, p_offset, p_vaddr, p_filesz))

    def at(vaddr):
        for p_type, off, va, size in segments:
            if p_type == PT_LOAD and va <= vaddr < va + size:
                return off + (vaddr - va)
        raise ElfError(f"address {vaddr:#x} is in no loaded segment")

    interp = None
    for p_type, off, _va, size in segments:
        if p_type == PT_INTERP:
            interp = data[off : off + size].rstrip(b"\0").decode()
    dynamic = [s for s in segments if s[0] == PT_DYNAMIC]
    if not dynamic:
        return interp, [], [], []  # fully static
    _t, off, _va, size = dynamic[0]
    entries = []
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == DT_NULL:
            break
        entries.append((tag, val))
    tags = {}
    for tag, val in entries:
        tags.setdefault(tag, val)
    if DT_STRTAB not in tags:
        raise ElfError("dynamic segment without DT_STRTAB")
    strtab = at(tags[DT_STRTAB])
    strtab_end = strtab + tags.get(DT_STRSZ, len(data) - strtab)
    strings = data[strtab:strtab_end]
    needed = [cstr(strings, v) for t, v in entries if t == DT_NEEDED]
    rpaths = [cstr(strings, v) for t, v in entries if t in (DT_RPATH, DT_RUNPATH)]
    verneed = []
    if DT_VERNEED in tags:
        pos = at(tags[DT_VERNEED])
        for _ in range(tags.get(DT_VERNEEDNUM, 0)):
            _vn_version, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", data, pos)
            lib = cstr(strings, vn_file)
            aux = pos + vn_aux
            for _ in range(vn_cnt):
                _hash, _flags, _other, vna_name, vna_next = struct.unpack_from("<IHHII", data, aux)
                verneed.append((lib, cstr(strings, vna_name)))
                if not vna_next:
                    break
                aux += vna_next
            if not vn_next:
                break
            pos += vn_next
    return interp, needed, rpaths, verneed


def glibc_version(name):
    """(2, 28) for "GLIBC_2.28"; None for anything else (GLIBC_PRIVATE, GCC_3.0, ...)."""
    if not name.startswith("GLIBC_"):
        return None
    try:
        return tuple(int(x) for x in name[len("GLIBC_") :].split("."))
    except ValueError:
        return None


def expected_files(root):
    functions = sorted(
        f"{d}/function.json"
        for d in os.listdir(root)
        if not d.startswith(".") and os.path.isfile(os.path.join(root, d, "function.json"))
    )
    return ["host.json", *functions, HANDLER], functions


def check(zip_path, root):
    errors = []
    if not os.path.isfile(zip_path):
        return [f"{zip_path} does not exist (run scripts/package.sh first)"], None
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        return [f"{zip_path} is not a zip file: {e}"], None
    with zf:
        bad = zf.testzip()
        if bad is not None:
            errors.append(f"{bad}: CRC check failed")
        infos = zf.infolist()
        names = [i.filename for i in infos]
        want, functions = expected_files(root)
        if not functions:
            errors.append(f"no <Folder>/function.json found under {root}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            errors.append(f"duplicate entries: {', '.join(dupes)}")
        missing = sorted(set(want) - set(names))
        extra = sorted(set(names) - set(want))
        if missing:
            errors.append(f"missing from the zip: {', '.join(missing)}")
        if extra:
            errors.append(f"not expected in the zip: {', '.join(extra)}")

        for info in infos:
            mode = info.external_attr >> 16
            want_mode = 0o100755 if info.filename == HANDLER else 0o100644
            if info.create_system != 3:
                errors.append(f"{info.filename}: made on system {info.create_system}, not unix (3): modes would be lost")
            if mode != want_mode:
                errors.append(f"{info.filename}: mode {mode:#o}, want {want_mode:#o}")
            elif info.filename == HANDLER and not stat.S_ISREG(mode):
                errors.append(f"{HANDLER}: not a regular file")
            if info.filename.endswith(".json") and info.filename in want:
                body = zf.read(info)
                try:
                    json.loads(body)
                except ValueError as e:
                    errors.append(f"{info.filename}: not valid JSON: {e}")
                src = os.path.join(root, info.filename)
                if os.path.isfile(src) and open(src, "rb").read() != body:
                    errors.append(f"{info.filename}: differs from {src} (stale zip? run scripts/package.sh)")

        if "host.json" in names:
            try:
                host = json.loads(zf.read("host.json"))
                exe = host.get("customHandler", {}).get("description", {}).get("defaultExecutablePath")
                if exe != HANDLER:
                    errors.append(f"host.json: customHandler.description.defaultExecutablePath is {exe!r}, want {HANDLER!r}")
            except ValueError:
                pass

        summary = None
        if HANDLER in names:
            binary = zf.read(HANDLER)
            try:
                interp, needed, rpaths, verneed = read_elf(binary)
            except (ElfError, struct.error) as e:
                errors.append(f"{HANDLER}: cannot read the ELF: {e}")
            else:
                if needed and interp != INTERPRETER:
                    errors.append(f"{HANDLER}: program interpreter {interp!r}, want {INTERPRETER}")
                foreign = [n for n in needed if n not in ALLOWED_NEEDED]
                if foreign:
                    errors.append(
                        f"{HANDLER}: needs shared libraries beyond glibc and libgcc_s: {', '.join(foreign)}"
                        " (OpenSSL? build with --features vendored-openssl)"
                    )
                if rpaths:
                    errors.append(f"{HANDLER}: has RPATH/RUNPATH {rpaths}")
                glibc = sorted({v for _lib, name in verneed if (v := glibc_version(name))})
                private = sorted({f"{lib}:{name}" for lib, name in verneed if name == "GLIBC_PRIVATE"})
                if private:
                    errors.append(f"{HANDLER}: needs GLIBC_PRIVATE symbols ({', '.join(private)})")
                newest = glibc[-1] if glibc else None
                if newest and newest > MAX_GLIBC:
                    too_new = sorted({name for _lib, name in verneed if (v := glibc_version(name)) and v > MAX_GLIBC})
                    errors.append(
                        f"{HANDLER}: needs {', '.join(too_new)}, newer than GLIBC_{MAX_GLIBC[0]}.{MAX_GLIBC[1]}"
                        " (build with cargo zigbuild --target x86_64-unknown-linux-gnu.2.28)"
                    )
                newest_s = "GLIBC_" + ".".join(map(str, newest)) if newest else "none (static)"
                summary = (
                    f"{zip_path}: {len(names)} files ({len(functions)} functions),"
                    f" zip {os.path.getsize(zip_path) / 1e6:.1f} MB, handler {len(binary) / 1e6:.1f} MB 0755,"
                    f" NEEDED: {' '.join(needed) or 'none'}, newest {newest_s}"
                )
    return errors, summary


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("zip", nargs="?", default="dist/functionapp.zip")
    ap.add_argument("--root", default=os.path.dirname(here), help="the app root the zip was made from")
    args = ap.parse_args()
    errors, summary = check(args.zip, args.root)
    if errors:
        print(f"check_package: {args.zip} FAILED:", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
