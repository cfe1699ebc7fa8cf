#!/usr/bin/env bash
# Fetches what lrp-graph needs at run time and is not on crates.io: the ONNX Runtime 1.31.1
# shared library, taken out of the `onnxruntime` wheel on PyPI (the only download), into .ort/.
# Idempotent: does nothing when the library is already there and intact.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.ort"
lib="libonnxruntime.so.1.31.1"
sha="$(cat "$root/scripts/onnxruntime.sha256")"

have_lib() { [ -f "$dest/$lib" ] && echo "$sha  $dest/$lib" | sha256sum -c --status; }

# A C compiler: some crates build C code (mimalloc, the allocator of the binary; psm).
if ! command -v cc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing a C compiler (gcc) with apt-get" >&2
    apt-get install -y -qq gcc libc6-dev >/dev/null
  else
    echo "setup: a C compiler (cc) is needed to build lrp-graph; install gcc (Debian: apt-get install gcc)" >&2
    exit 1
  fi
fi

if ! have_lib; then
  command -v python3 >/dev/null || { echo "setup: python3 (with pip) is needed to fetch ONNX Runtime from PyPI" >&2; exit 1; }
  arch="$(uname -m)"
  case "$arch" in
    x86_64) platform=manylinux_2_28_x86_64 ;;
    aarch64) platform=manylinux_2_28_aarch64 ;;
    *) echo "setup: no onnxruntime 1.31.1 wheel for $arch" >&2; exit 1 ;;
  esac
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "setup: downloading onnxruntime==1.31.1 ($platform) from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform "$platform" \
    onnxruntime==1.31.1 -d "$tmp"
  mkdir -p "$dest"
  python3 - "$tmp" "$dest" "$lib" <<'PY'
import glob, os, sys, zipfile
tmp, dest, lib = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "onnxruntime-1.31.1-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("onnxruntime/capi/" + lib)
part = os.path.join(dest, lib + ".part")
with open(part, "wb") as f:
    f.write(data)
os.replace(part, os.path.join(dest, lib))
PY
  if [ "$arch" = x86_64 ] && ! have_lib; then
    echo "setup: $dest/$lib does not match scripts/onnxruntime.sha256" >&2
    exit 1
  fi
  ln -sf "$lib" "$dest/libonnxruntime.so"
  echo "setup: ONNX Runtime library at $dest/$lib" >&2
fi

command -v cargo >/dev/null || { echo "setup: cargo (Rust 1.92 or newer) is needed: https://rustup.rs" >&2; exit 1; }
