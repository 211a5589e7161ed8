#!/usr/bin/env bash
# The test command (`make test`): install, sync checks, notebook tests, docs, pytest. Prints stage times.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1
declare -a NAMES TIMES
stage() {  # stage NAME COMMAND...
  local name=$1; shift
  echo "=== [$name] $*"
  local t0=$(date +%s.%N)
  "$@"; local rc=$?
  local dt=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
  NAMES+=("$name"); TIMES+=("$dt")
  echo "=== [$name] ${dt} s (exit $rc)"
  if [ $rc -ne 0 ]; then summary; echo "FAILED at stage: $name"; exit $rc; fi
}
summary() {
  echo "--- stage times (s)"
  for i in "${!NAMES[@]}"; do printf '  %-12s %8s\n' "${NAMES[$i]}" "${TIMES[$i]}"; done
}
stage install   python -m pip install -q -c constraints.txt -e ".[dev]"
stage sync      python tools/check_sync.py
stage nbdev_test env OMP_NUM_THREADS=1 nbdev_test --n_workers 2 --timing
stage docs      python tools/build_docs.py --force
stage pytest    env USSEG_DOCS_DIR=_docs python -m pytest -q tests
summary
echo "ALL PASSED"
