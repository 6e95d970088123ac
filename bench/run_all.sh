#!/usr/bin/env bash
# Run every benchmark, one after the other, then print the summary table.
#
#   bash bench/run_all.sh            # quick: 12 MB state, 2 repetitions of the whole-run ones
#   bash bench/run_all.sh --full     # 12, 100 and 500 MB states, 3 repetitions
#
# Each script writes bench/results/<name>.json; a failing one is reported and the rest still run.
# Benchmarks, not tests: nothing here fails on a slow figure. Takes ~25 min quick, ~45 min full
# on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1

FULL=0
for arg in "$@"; do
  case "$arg" in
    --full) FULL=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument $arg (use --full)" >&2; exit 2 ;;
  esac
done

if [ "$FULL" = 1 ]; then
  SIZES=12,100,500; REPS=3
else
  SIZES=12; REPS=2
fi

failed=()
step() {
  local name="$1"; shift
  echo
  echo "################ $name: $*"
  local start=$SECONDS
  if "$@"; then
    echo "################ $name done in $((SECONDS - start)) s"
  else
    echo "################ $name FAILED (exit $?) after $((SECONDS - start)) s"
    failed+=("$name")
  fi
}

step blocking python bench/blocking.py --sizes "$SIZES"
step dvc2_blocking bash bench/dvc2_blocking.sh
step overhead python bench/overhead.py --reps "$REPS"
step listing python bench/listing.py
step storage python bench/storage.py
step resume python bench/resume.py --reps "$REPS"

echo
python bench/summary.py
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
