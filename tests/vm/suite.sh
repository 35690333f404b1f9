#!/usr/bin/env bash
# One VM boot, many scenarios: runs INSIDE the guest, as root.
#
#   bash suite.sh RWDIR PROJECT_DIR PYTHON NAME...
#
# NAME "main" is tests/vm/scenario.sh, run with RWDIR itself (its artifacts stay where tests expect them).
# Any other NAME is tests/vm/scenarios/NAME.sh, run as `bash RWDIR/NAME/scenario.sh RWDIR/NAME PROJECT_DIR PYTHON`
# with lib.sh copied beside it, bounded by MONITOR_VM_SCENARIO_TIMEOUT seconds (default 480). Scenarios run one
# after another in the order given; each writes its own verdict into its folder's `done`. The host copied
# every script into RWDIR before the boot (bash reads a script while it runs).
set -u
RW=$1; PROJ=$2; PY=$3; shift 3
LIMIT=${MONITOR_VM_SCENARIO_TIMEOUT:-480}
: > "$RW/suite.log"
for name in "$@"; do
  start=$(date +%s)
  if [ "$name" = main ]; then
    timeout -k 10 "$LIMIT" bash "$RW/scenario.sh" "$RW" "$PROJ" "$PY"; rc=$?
  else
    timeout -k 10 "$LIMIT" bash "$RW/$name/scenario.sh" "$RW/$name" "$PROJ" "$PY"; rc=$?
    [ -s "$RW/$name/done" ] || echo "error: scenario $name timed out after $LIMIT s (or died), rc $rc" > "$RW/$name/done"
  fi
  echo "$name rc=$rc seconds=$(( $(date +%s) - start ))" >> "$RW/suite.log"
done
echo ok > "$RW/suite.done"
