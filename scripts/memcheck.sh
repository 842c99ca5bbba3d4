#!/usr/bin/env bash
# valgrind memcheck of the kernel crate's tests (dynaq-core: unit tests, paths, guard pages,
# dispatch) on the scalar and AVX2 paths. Fails on any memcheck error or definite leak.
#
#   bash scripts/memcheck.sh            # both paths
#   bash scripts/memcheck.sh avx2       # one path (scalar is always tested too: it is the baseline)
#
# valgrind cannot run AVX-512 and hides it from CPUID, so under valgrind the crate detects at most
# AVX2; the script checks that it does detect AVX2 (when the CPU has it), so that the AVX2 kernels
# really run. The tests run with DYNAQ_TEST_SCALE=small (shrunk grids and case counts that keep
# the odd shapes 1..9, 15/16/17, 31/32/33, 63/64/65 and one reduction beyond K_CHUNK), and
# DYNAQ_MAX_ISA limits the paths they test. "Possibly lost" blocks are not errors: they are the
# stacks and thread-locals of threads alive at exit (rayon's global pool, the test harness).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

isas=("$@")
if [ ${#isas[@]} -eq 0 ]; then
  isas=(scalar avx2)
fi

if ! command -v valgrind >/dev/null 2>&1; then
  echo "valgrind not found: installing it"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind >/dev/null
fi
valgrind --version

start=$(date +%s)
echo "--- building the dynaq-core test binaries"
bins=$(cargo test -p dynaq-core --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])
')
if [ -z "$bins" ]; then
  echo "no test binaries were built" >&2
  cargo test -p dynaq-core --no-run  # show the error
  exit 1
fi
cargo build -q -p dynaq-core --example isas
isas_bin=target/debug/examples/isas
echo "$bins" | sed 's/^/    /'

vg=(valgrind --tool=memcheck --error-exitcode=1 --leak-check=full
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect -q)

echo "--- paths detected natively: $("$isas_bin")"
under_vg=$("${vg[@]}" "$isas_bin")
echo "--- paths detected under valgrind: $under_vg"
case " $under_vg " in
  *" avx512vnni "*)
    echo "valgrind reported AVX-512 VNNI; it cannot run it" >&2
    exit 1
    ;;
esac
if grep -qw avx2 /proc/cpuinfo 2>/dev/null && ! [[ " $under_vg " == *" avx2 "* ]]; then
  echo "the CPU has AVX2 but it is not detected under valgrind: the AVX2 kernels would not run" >&2
  exit 1
fi

status=0
for isa in "${isas[@]}"; do
  if ! [[ " $under_vg " == *" $isa "* ]]; then
    echo "--- DYNAQ_MAX_ISA=$isa: not available under valgrind on this machine, skipped"
    continue
  fi
  for bin in $bins; do
    t0=$(date +%s)
    echo "--- DYNAQ_MAX_ISA=$isa valgrind $(basename "$bin")"
    # guard_page_faults forks a child that must die of SIGSEGV: valgrind reports that child's
    # deliberate fault, so it is left to the native runs.
    log=$(mktemp)
    set +e
    DYNAQ_MAX_ISA=$isa DYNAQ_TEST_SCALE=small "${vg[@]}" "$bin" -q --skip guard_page_faults \
      >"$log" 2>&1
    rc=$?
    set -e
    tail -n 40 "$log"
    rm -f "$log"
    if [ "$rc" -ne 0 ]; then
      echo "FAILED (exit $rc): DYNAQ_MAX_ISA=$isa $(basename "$bin")" >&2
      status=1
    fi
    echo "    $(($(date +%s) - t0)) s"
  done
done
echo "--- memcheck: $(($(date +%s) - start)) s in all"
if [ "$status" -ne 0 ]; then
  echo "memcheck found errors" >&2
fi
exit "$status"
