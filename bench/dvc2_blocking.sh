#!/usr/bin/env bash
# DVC 2.58.2's blocking time per checkpoint (dvc.api.make_checkpoint inside `dvc exp run`),
# beside torch.save in the same process, for the 12 MB state of bench/blocking.py.
#
#   bash bench/dvc2_blocking.sh [--checkpoints 10] [--size-mb 12] [--keep]
#
# Creates bench/.venv-dvc2 on first use (DVC 2 cannot share a virtualenv with DVC 3). If the
# install fails, the reason is printed and written to bench/results/dvc2_blocking.json.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/.venv-dvc2"
RESULTS="$HERE/results"
LOG="$RESULTS/dvc2_install.log"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
mkdir -p "$RESULTS"

fail() {
  echo "dvc2_blocking: $1" >&2
  "$PY" - "$1" "$LOG" "$RESULTS/dvc2_blocking.json" <<'EOF'
import json, sys, datetime
reason, log, out = sys.argv[1:4]
try:
    tail = open(log, encoding="utf-8", errors="replace").read().splitlines()[-40:]
except OSError:
    tail = []
json.dump({"benchmark": "dvc2_blocking", "status": "failed", "reason": reason, "install_log_tail": tail,
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}, open(out, "w"), indent=2)
EOF
  exit 1
}

if [ ! -x "$VENV/bin/dvc" ] || ! "$VENV/bin/dvc" --version 2>/dev/null | grep -qx "2.58.2"; then
  echo "creating $VENV (dvc 2.58.2; log in $LOG)"
  "$PY" -m venv "$VENV" >"$LOG" 2>&1 || fail "could not create the virtualenv with $PY (see $LOG)"
  if ! "$VENV/bin/pip" install "dvc==2.58.2" "pathspec<0.12" "pygit2<1.15" "dulwich==0.21.6" torch==2.13.0 >>"$LOG" 2>&1; then
    fail "pip install of dvc==2.58.2 failed: $(grep -E '^(ERROR|error):' "$LOG" | head -3 | tr '\n' ' ')"
  fi
  "$VENV/bin/dvc" --version >>"$LOG" 2>&1 || fail "dvc 2.58.2 installed but does not start: $(tail -1 "$LOG")"
fi

exec "$VENV/bin/python" "$HERE/_dvc2_driver.py" "$@"
