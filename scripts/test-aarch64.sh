#!/usr/bin/env bash
# Cross-builds dynaq for aarch64 on an x86-64 Debian 12 machine and tests it under QEMU user
# emulation, without ARM hardware:
#   1. installs what it needs (once): Debian's rustc-web with the arm64 std, the aarch64 GCC
#      (linker), qemu-user;
#   2. runs the kernel crate's tests (dynaq-core) under `qemu-aarch64 -cpu max` (NEON, dotprod,
#      i8mm) once per path, capped with DYNAQ_MAX_ISA, and under `-cpu cortex-a53` (ARMv8.0:
#      only scalar and neon may be detected; a dotprod cap must fall back to neon);
#   3. builds the aarch64 wheel (abi3) with maturin, checks that its native module is an AArch64
#      shared object, and imports it in an aarch64 CPython under QEMU on both CPUs: cpu_info(),
#      dynaq.linear against numpy, matmul_integer bit-exact against numpy on every path.
# Downloads are cached under target/aarch64-cache; builds go to target/aarch64-cross.
# Usage: bash scripts/test-aarch64.sh   (as root, or with sudo available for apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
repo=$PWD
cache=$repo/target/aarch64-cache
triple=aarch64-unknown-linux-gnu
export CARGO_TERM_COLOR=never
export PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$cache"

step() { printf '\n=== aarch64: %s ===\n' "$*"; }
elapsed() { echo "$(($(date +%s) - start))s"; }

step "toolchain and emulator"
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# libc6:arm64 comes with libstd-rust-web-dev:arm64; it is listed because QEMU runs every binary
# against it (see `qemu` below).
packages=(rustc-web libstd-rust-web-dev:arm64 libc6:arm64 gcc-aarch64-linux-gnu qemu-user file)
missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  dpkg --print-foreign-architectures | grep -qx arm64 || $sudo dpkg --add-architecture arm64
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "already installed: ${packages[*]}"
fi
# rustup's toolchain (if any) has no aarch64 std; Debian's rustc-web has one.
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_DIR=$repo/target/aarch64-cross
"$RUSTC" --version
qemu-aarch64 --version | head -1

# `-L /`: the guest's dynamic loader and libc are the multiarch libc6:arm64 in /lib. (The cross
# toolchain's own copy under /usr/aarch64-linux-gnu, 2.36-8cross1, hangs in pthread_create
# under Debian 12's qemu-user 7.2 on this machine: every Rust test binary, and a plain C
# program, spun forever at their first thread.) `timeout` keeps a hang from eating the CI budget.
qemu() {
  local cpu=$1
  shift
  timeout 300 qemu-aarch64 -L "${QEMU_ROOT:-/}" -cpu "$cpu" "$@"
}

step "cross-build the kernel crate's tests"
cargo test -p dynaq-core --target $triple --no-run --message-format=json 2>/dev/null >"$cache/tests.json" ||
  { cargo test -p dynaq-core --target $triple --no-run; exit 1; }
cargo build -q -p dynaq-core --target $triple --example isas
declare -A bins
while read -r name exe; do bins[$name]=$exe; done < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
' "$cache/tests.json")
isas_bin=$CARGO_TARGET_DIR/$triple/debug/examples/isas
for t in dynaq_core dispatch openmp_team paths paths_int4 guard_pages; do
  [ -n "${bins[$t]:-}" ] || { echo "test binary $t not found"; exit 1; }
done
file -b "${bins[paths]}" | grep -q 'ARM aarch64' || { echo "not an aarch64 binary"; exit 1; }
echo "built in $(elapsed)"

# Runs the test binaries on one CPU model with one cap; prints what each ran.
#   run_tests CPU CAP TEST_PATHS
run_tests() {
  local cpu=$1 cap=$2 test_paths=$3 t out summary
  echo "--- qemu-aarch64 -cpu $cpu, DYNAQ_MAX_ISA=$cap, paths tested: ${test_paths:-none}"
  for t in dynaq_core dispatch openmp_team paths paths_int4 guard_pages; do
    if { [ "$t" = paths ] || [ "$t" = paths_int4 ] || [ "$t" = guard_pages ]; } &&
      [ -z "$test_paths" ]; then
      continue
    fi
    if ! out=$(DYNAQ_MAX_ISA=$cap DYNAQ_TEST_PATHS=$test_paths DYNAQ_TEST_QUICK=1 \
      qemu "$cpu" "${bins[$t]}" --test-threads=2 --nocapture 2>&1); then
      echo "$out" | tail -40
      echo "FAILED: $t under -cpu $cpu with DYNAQ_MAX_ISA=$cap"
      exit 1
    fi
    summary=$(echo "$out" | grep -E '^test result:' | sed 's/; finished in.*//')
    printf '    %-11s %s\n' "$t:" "$summary"
    case $t in
      # (informational: two test threads may interleave their printed lines, so a line may
      # not start where it should; that must not fail the run)
      dispatch) echo "$out" | grep -oE 'DYNAQ_MAX_ISA=[a-z0-9]+: active path [a-z0-9]+' |
          sed 's/^/      /' || true ;;
      paths | paths_int4) echo "$out" | grep -oE '[A-Za-z0-9]+: (4-bit )?kernel [^ ]+ \([^)]*\)' | sort -u |
          sed 's/^/      /' || true ;;
    esac
  done
}

# The active path under a cap, from the dispatch test's line "DYNAQ_MAX_ISA=x: active path y".
active_under() {
  DYNAQ_MAX_ISA=$2 qemu "$1" "${bins[dispatch]}" environment_cap_is_respected --nocapture 2>&1 |
    sed -n 's/^DYNAQ_MAX_ISA=.*: active path //p'
}

step "clippy for aarch64"
# Needs rustup's aarch64 std (clippy ships with rustup's toolchain, not with rustc-web); skipped
# when that cannot be had, since the build and tests above do not depend on it.
if command -v rustup >/dev/null && rustup target add $triple >/dev/null 2>&1; then
  env -u RUSTC CARGO_TARGET_DIR="$repo/target/aarch64-clippy" \
    cargo clippy -q --workspace --all-targets --target $triple -- -D warnings
  echo "clippy -D warnings: clean for $triple"
else
  echo "skipped: rustup cannot add the $triple standard library here"
fi

step "kernel tests under qemu-aarch64 -cpu max (one path per run)"
detected=$(qemu max "$isas_bin")
echo "paths detected: $detected"
[ "$detected" = "scalar neon dotprod i8mm" ] || { echo "expected all four paths"; exit 1; }
for isa in scalar neon dotprod i8mm; do
  run_tests max "$isa" "$isa"
done

step "kernel tests under qemu-aarch64 -cpu cortex-a53 (ARMv8.0)"
detected=$(qemu cortex-a53 "$isas_bin")
echo "paths detected: $detected"
[ "$detected" = "scalar neon" ] || { echo "expected only scalar and neon"; exit 1; }
for isa in scalar neon; do
  run_tests cortex-a53 "$isa" "$isa"
done
# Caps above what the CPU has: the unit and dispatch tests, and the fallback itself.
for cap in dotprod i8mm; do
  run_tests cortex-a53 "$cap" ""
  got=$(active_under cortex-a53 $cap)
  [ "$got" = neon ] || { echo "DYNAQ_MAX_ISA=$cap on cortex-a53 gave '$got', not neon"; exit 1; }
  echo "    DYNAQ_MAX_ISA=$cap falls back to: $got"
done
echo "kernel tests done in $(elapsed)"

step "aarch64 wheel (maturin, abi3)"
command -v maturin >/dev/null || python3 -m pip install -q "maturin>=1.5,<2"
rm -rf "$cache/dist" "$cache/wheel"
mkdir -p "$cache"
# abi3 needs no target interpreter: PyO3 builds against the stable ABI without
# PYO3_CROSS_LIB_DIR. `--compatibility manylinux_2_36` because this is Debian 12's glibc.
if ! maturin build --release --target $triple --out "$cache/dist" --compatibility manylinux_2_36 \
  >"$cache/maturin.log" 2>&1; then
  tail -40 "$cache/maturin.log"
  echo "FAILED: maturin build for $triple"
  exit 1
fi
grep -E 'Built wheel|warning' "$cache/maturin.log" || true
wheel=$(ls "$cache"/dist/dynaq-*aarch64*.whl)
echo "wheel: $(basename "$wheel")"
case $(basename "$wheel") in *-abi3-*) ;; *) echo "not an abi3 wheel"; exit 1 ;; esac
python3 -m zipfile -e "$wheel" "$cache/wheel"
so=$(ls "$cache"/wheel/dynaq/_dynaq*.so)
echo "native module: ${so#"$cache"/wheel/}: $(file -b "$so" | cut -d, -f1-2)"
file -b "$so" | grep -q 'ELF 64-bit LSB shared object, ARM aarch64' ||
  { echo "the native module is not an AArch64 shared object"; exit 1; }
readelf -h "$so" | grep -q 'Machine:.*AArch64' || { echo "readelf: not AArch64"; exit 1; }

step "aarch64 CPython + numpy under QEMU"
# Debian's arm64 CPython 3.11 (unpacked, not installed) and numpy's manylinux aarch64 wheel.
pyroot=$cache/python-root
site=$cache/numpy-site
if [ ! -x "$pyroot/usr/bin/python3.11" ]; then
  mkdir -p "$cache/debs"
  (cd "$cache/debs" && apt-get -qq download python3.11-minimal:arm64 libpython3.11-minimal:arm64 \
    libpython3.11-stdlib:arm64 zlib1g:arm64 libexpat1:arm64 libffi8:arm64 libbz2-1.0:arm64 \
    liblzma5:arm64 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  rm -rf "$pyroot" && mkdir -p "$pyroot"
  for d in "$cache"/debs/*.deb; do dpkg -x "$d" "$pyroot"; done
fi
if [ ! -d "$site/numpy" ]; then
  python3 -m pip download -q -d "$cache/wheels" --platform manylinux2014_aarch64 \
    --only-binary=:all: --python-version 3.11 --no-deps "numpy>=1.22,<2.3"
  rm -rf "$site" && python3 -m zipfile -e "$(ls "$cache"/wheels/numpy-*aarch64*.whl | head -1)" "$site"
fi
cat >"$cache/check.py" <<'EOF'
import platform
import sys

import numpy as np

import dynaq

assert platform.machine() == "aarch64", platform.machine()
info = dynaq.cpu_info()
print(f"  python {sys.version.split()[0]} on {platform.machine()}, numpy {np.__version__}")
print(f"  cpu_info: isas {info['isas']}, active {info['active_isa']}, kernels {info['kernels']}")
expected = sys.argv[1].split(",")
assert info["isas"] == expected, (info["isas"], expected)
assert info["arch_isas"] == ["scalar", "neon", "dotprod", "i8mm"], info["arch_isas"]

rng = np.random.default_rng(0)
m, k, n = 37, 300, 70
x = rng.standard_normal((m, k)).astype(np.float32)
w = rng.standard_normal((n, k)).astype(np.float32)
b = rng.standard_normal(n).astype(np.float32)
ref = x.astype(np.float64) @ w.astype(np.float64).T + b
# Error bound from the scales: per-row asymmetric u8 activations (step sx, error <= sx/2) and
# per-channel symmetric s8 weights (step sw, error <= sw/2), plus float32 rounding.
lo, hi = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
sx = ((hi - lo) / 255)[:, None]
sw = (np.abs(w).max(1) / 127)[None, :]
bound = (np.abs(x) @ np.ones((k, n))) * sw / 2 + sx / 2 * np.abs(w).sum(1)[None, :] + k * sx * sw / 4
bound = bound + 1e-4 * (np.abs(ref) + 1)
outs = {}
for isa in info["isas"]:
    with dynaq.use_isa(isa) as active:
        assert active == isa, (active, isa)
        y = dynaq.linear(x, w, b)
        assert y.dtype == np.float32 and y.shape == (m, n)
        err = np.abs(y - ref)
        assert (err <= bound).all(), (isa, float((err / bound).max()))
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
        bq = rng.integers(-128, 128, (k, n), dtype=np.int8)
        got = dynaq.matmul_integer(a, bq)
        want = a.astype(np.int64) @ bq.astype(np.int64)
        assert np.array_equal(got, want), isa
        outs[isa] = y
        print(f"  {isa}: linear {m}x{k}x{n} within bound (max err/bound "
              f"{float((err / bound).max()):.3f}), matmul_integer exact")
first = next(iter(outs.values()))
assert all(np.array_equal(v, first) for v in outs.values()), "paths disagree"
print(f"  every path returns the same linear output bit for bit: {', '.join(outs)}")
EOF
for cpu in max cortex-a53; do
  case $cpu in
    max) want=scalar,neon,dotprod,i8mm ;;
    *) want=scalar,neon ;;
  esac
  echo "--- qemu-aarch64 -cpu $cpu"
  PYTHONPATH=$cache/wheel:$site PYTHONNOUSERSITE=1 QEMU_ROOT=$pyroot \
    qemu "$cpu" "$pyroot/usr/bin/python3.11" -s "$cache/check.py" "$want" 2>&1 ||
    { echo "FAILED: the wheel under -cpu $cpu"; exit 1; }
done

step "done"
echo "aarch64 checks passed in $(elapsed)"
