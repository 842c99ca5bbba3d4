#!/usr/bin/env bash
# Bounded fuzzing of the Python entry points with atheris (libFuzzer, from PyPI):
#   fuzz/fuzz_packed_weight.py  PackedWeight.from_bytes on arbitrary bytes
#   fuzz/fuzz_safetensors.py    the safetensors reader and load_quantized on arbitrary files
#   fuzz/fuzz_kernels.py        linear / quantize / dynamic_quantize_linear / matmul_integer /
#                               pack_weight / Linear on fuzzer-chosen shapes, values and options,
#                               every path bit-exact with the scalar path and the numpy reference
#   fuzz/fuzz_layers.py         the layers' from_bytes and the torch modules' load_state_dict on
#                               arbitrary bytes and on structure-aware edits resealed with a
#                               valid checksum; a layer that loads must work
# each for SECONDS (default 60), starting from the committed seeds in fuzz/corpus/<target>/
# (never modified: new inputs go to a scratch directory). A crash, an undocumented exception or
# a wrong result fails the script; the input is kept under $FUZZ_ARTIFACTS (default: a
# temporary directory, printed). Without atheris (no wheel for this Python, or
# DYNAQ_FUZZ_RANDOM=1) each target runs a randomized mutation loop for the same time instead.
#
#   bash scripts/fuzz.sh [SECONDS]
#
# Needs dynaq importable by $PYTHON (default python3); when it is not, installs this checkout
# with `pip install .` (also when DYNAQ_FUZZ_INSTALL=1).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
py=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "${DYNAQ_FUZZ_INSTALL:-0}" = 1 ] || ! (cd / && "$py" -c "import dynaq") >/dev/null 2>&1; then
  echo "--- installing dynaq from this checkout"
  "$py" -m pip install -q .
fi
if [ "${DYNAQ_FUZZ_RANDOM:-0}" != 1 ] && ! "$py" -c "import atheris" >/dev/null 2>&1; then
  echo "--- installing atheris"
  "$py" -m pip install -q atheris || echo "atheris could not be installed: randomized runs instead"
fi
if [ "${DYNAQ_FUZZ_RANDOM:-0}" != 1 ] && "$py" -c "import atheris" >/dev/null 2>&1; then
  mode="atheris $("$py" -c 'import importlib.metadata as m; print(m.version("atheris"))')"
else
  mode="randomized (no atheris)"
fi
(cd / && "$py" -c "import dynaq; print('dynaq', dynaq.__version__, 'from', dynaq.__file__, 'paths', dynaq.cpu_info()['isas'])")
echo "--- fuzzing: $mode, ${secs} s per target"

work=$(mktemp -d)
artifacts=${FUZZ_ARTIFACTS:-$work/artifacts}
mkdir -p "$artifacts"
status=0
summary=()
for target in packed_weight safetensors kernels layers; do
  mkdir -p "$work/corpus-$target"
  extra=()
  if [ -f "fuzz/$target.dict" ]; then extra+=("-dict=fuzz/$target.dict"); fi
  log="$work/$target.log"
  echo "--- $target"
  set +e
  "$py" "fuzz/fuzz_$target.py" "$work/corpus-$target" "fuzz/corpus/$target" \
    -max_total_time="$secs" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$target-" "${extra[@]}" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
  if [ "$rc" -ne 0 ]; then
    status=1
    summary+=("$target: FINDING (exit $rc) after ${runs:-?}")
    grep -v -E '^(INFO|WARNING|#[0-9]+)' "$log" | tail -n 60
    echo "inputs kept in $artifacts:"
    ls -l "$artifacts"
  else
    summary+=("$target: ${runs:-no run count} ($mode), no finding")
  fi
done
echo "--- fuzzing summary"
printf '  %s\n' "${summary[@]}"
if [ "$status" -eq 0 ]; then
  rm -rf "$work"
fi
exit "$status"
