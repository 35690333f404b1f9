#!/usr/bin/env bash
# One VM boot, many scenarios: runs INSIDE the guest, as root.
#
#   bash suite.sh RWDIR PROJECT_DIR PYTHON NAME...
#
# NAME "main" is tests/vm/scenario.sh, run with RWDIR itself (its artifacts stay where tests expect them).
# Any other NAME is tests/vm/scenarios/NAME.sh, run as `bash RWDIR/NAME/scenario.sh RWDIR/NAME PROJECT_DIR PYTHON`
# with lib.sh copied beside it, bounded by MONITOR_VM_SCENARIO_TIMEOUT seconds (default 480), or by the larger
# bound a scenario states in a "# vm-timeout: SECONDS" line of its own (a long storm). Scenarios run one
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
    own=$(sed -n 's/^# vm-timeout: \([0-9][0-9]*\)$/\1/p' "$RW/$name/scenario.sh" | head -n 1)
    lim=$LIMIT
    [ -n "$own" ] && [ "$own" -gt "$LIMIT" ] && lim=$own
    timeout -k 10 "$lim" bash "$RW/$name/scenario.sh" "$RW/$name" "$PROJ" "$PY"; rc=$?
    [ -s "$RW/$name/done" ] || echo "error: scenario $name timed out after $lim s (or died), rc $rc" > "$RW/$name/done"
  fi
  echo "$name rc=$rc seconds=$(( $(date +%s) - start ))" >> "$RW/suite.log"
done
echo ok > "$RW/suite.done"
