#!/usr/bin/env bash
# One prepared device check (`make gpu-check`), sized to finish in under 8 minutes on one GPU:
#
#   1. probe   which backend telesketch.gpu gets and the device's name            (limit  30 s)
#   2. tests   the GPU twins' equality tests in-process on the device (the simulator
#              copies are skipped there) and the sm_80/sm_90 compile check         (limit 230 s)
#   3. bench   benchmarks/bench_gpu.py --quick: CPU and GPU packets/s per sketch and
#              for all four, 64 Ki and 1 Mi batches, transfers included            (limit 180 s)
#
# then a short table: each step's result, its seconds and its limit; the benchmark's own Markdown
# table is printed as it runs (paste it into BENCHMARKS.md with the device named). The limits add
# up to 440 s; a step past its limit is killed and reported as "timeout". Exit status: 0 when every
# step passed, 1 otherwise.
#
# GPU_CHECK_DRY_RUN=1: the same three steps without a device, under Numba's CUDA simulator, to
# check the script itself (tests/test_gpu_check_script.py runs it): the probe must report the
# simulator, the test step only collects the tests the device run would run (at least one), and
# the benchmark runs one tiny batch with --allow-simulator (its figures mean nothing).
#
# PYTHON: the interpreter with telesketch and the [gpu] extra installed (default .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
DRY=${GPU_CHECK_DRY_RUN:-0}
if [ "$DRY" = "1" ]; then
  export NUMBA_ENABLE_CUDASIM=1
  echo "gpu_check: DRY RUN under the CUDA simulator (GPU_CHECK_DRY_RUN=1): no device, figures mean nothing"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

declare -a NAMES RESULTS SECONDS_TAKEN LIMITS
failed=0

step() {  # step NAME LIMIT_S COMMAND...: run COMMAND under LIMIT_S seconds, record the result
  local name=$1 limit=$2
  shift 2
  echo
  echo "== gpu_check: $name (limit ${limit} s): $*"
  local start=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  local result=passed
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then result=timeout; elif [ $rc -ne 0 ]; then result="failed (exit $rc)"; fi
  [ "$result" = passed ] || failed=1
  NAMES+=("$name"); RESULTS+=("$result"); SECONDS_TAKEN+=($((SECONDS - start))); LIMITS+=("$limit")
}

PROBE='from telesketch.gpu.core import backend
be = backend()
print("GPU backend:", be.name, be.device_name())'
if [ "$DRY" = "1" ]; then
  PROBE="$PROBE
assert be.name == 'simulator', be.name"
fi
step probe 30 "$PY" -c "$PROBE"

TESTS=(-m gpu -k "in_process or compile" tests/)
if [ "$DRY" = "1" ]; then
  # Only collect: under the simulator the in-process tests skip (they need a device); at least one
  # selected test must exist, or the device run would test nothing.
  step tests 120 bash -c 'out=$("$0" -m pytest -q -p no:cacheprovider --collect-only "$@") || exit 1
      echo "$out" | tail -n 1; echo "$out" | tail -n 1 | grep -Eq "^[1-9][0-9]*(/[0-9]+)? tests? collected"' \
      "$PY" "${TESTS[@]}"
  step bench 120 "$PY" benchmarks/bench_gpu.py --allow-simulator --sizes 256 --repeats 1 --flows 50
else
  step tests 230 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
  step bench 180 "$PY" benchmarks/bench_gpu.py --quick
fi

echo
echo "## gpu_check summary$([ "$DRY" = "1" ] && echo " (dry run, simulator)")"
echo "| step | result | seconds | limit s |"
echo "|---|---|---:|---:|"
for i in "${!NAMES[@]}"; do
  echo "| ${NAMES[$i]} | ${RESULTS[$i]} | ${SECONDS_TAKEN[$i]} | ${LIMITS[$i]} |"
done
exit $failed
