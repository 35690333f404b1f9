#!/usr/bin/env bash
# Guest side of bench/vm_bench.py: runs INSIDE the virtme-ng guest (Debian kernel with ESP), as root.
#
#   bash vm_xfrm_monitor.sh RWDIR PROJECT_DIR PYTHON N
#
# A burst of 3*N XFRM events (add N SAs, update N, delete N, via one `ip -batch`) while two consumers
# listen to the same multicast stream: `ip xfrm monitor` (iproute2, C) and our KernelSource + Pipeline
# (`python -m bench.vm_bench --guest-consume`). Writes RWDIR/result.json (counts, durations, CPU) and
# RWDIR/done ("ok" or "error: ..."). The batch file and ip's output contain the (random, throwaway)
# test keys, so they stay in the guest's /tmp; only counts and times reach RWDIR.
set -u
RW=$1; PROJ=$2; PY=$3; N=${4:-2000}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C
LOG="$RW/guest.log"
: > "$LOG"
rm -f "$RW/done" "$RW/result.json"
log() { echo "$(date +%s.%N) $*" >> "$LOG"; }
finish() { echo "$1" > "$RW/done"; log "done: $1"; }
trap 'finish "error: guest script exited early (line $LINENO)"' EXIT

WORK=/tmp/vmbench
mkdir -p "$WORK"
mountpoint -q "$WORK" || mount -t tmpfs tmpfs "$WORK"
modprobe esp4 >> "$LOG" 2>&1 || true
modprobe xfrm_user >> "$LOG" 2>&1 || true
ip link set lo up

# --- the burst, as one ip -batch file: add N, update N (new lifetime), delete N -----------------------
KEY=0x$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
BATCH=$WORK/batch.txt
: > "$BATCH"
for i in $(seq 1 "$N"); do
  d="198.51.100.$(( (i % 250) + 1 ))"
  printf 'xfrm state add src 192.0.2.1 dst %s proto esp spi %d reqid %d mode tunnel aead rfc4106(gcm(aes)) %s 128\n' \
    "$d" $((4096 + i)) "$i" "$KEY" >> "$BATCH"
done
for i in $(seq 1 "$N"); do
  d="198.51.100.$(( (i % 250) + 1 ))"
  printf 'xfrm state update src 192.0.2.1 dst %s proto esp spi %d reqid %d mode tunnel aead rfc4106(gcm(aes)) %s 128 limit time-hard 7200\n' \
    "$d" $((4096 + i)) "$i" "$KEY" >> "$BATCH"
done
for i in $(seq 1 "$N"); do
  d="198.51.100.$(( (i % 250) + 1 ))"
  printf 'xfrm state delete src 192.0.2.1 dst %s proto esp spi %d\n' "$d" $((4096 + i)) >> "$BATCH"
done
EXPECT=$((3 * N))
log "batch: $EXPECT operations"

# --- consumers --------------------------------------------------------------------------------------
ip xfrm monitor > "$WORK/ipmon.txt" 2>&1 &
IPMON=$!
PYTHONPATH="$PROJ" "$PY" -m bench.vm_bench --guest-consume --expect "$EXPECT" --out "$RW/ours.json" \
  --ready "$RW/ours.ready" >> "$LOG" 2>&1 &
OURS=$!
for _ in $(seq 1 600); do [ -e "$RW/ours.ready" ] && break; sleep 0.1; done
[ -e "$RW/ours.ready" ] || { log "our consumer never got ready"; }
sleep 1

count_ip() { grep -cE '^(Deleted |Updated |Expired )?src [0-9]' "$WORK/ipmon.txt" || true; }

# poll ip's output in the background (every 50 ms): when its first and its last expected event appear
( for _ in $(seq 1 6000); do
    c=$(count_ip)
    if [ "$c" -gt 0 ] && [ ! -e "$WORK/ip.first" ]; then date +%s.%N > "$WORK/ip.first"; fi
    if [ "$c" -ge "$EXPECT" ]; then date +%s.%N > "$WORK/ip.done"; break; fi
    sleep 0.05
  done ) &
POLL=$!

T0=$(date +%s.%N)
echo "$T0" > "$RW/burst.start"
ip -batch "$BATCH" >> "$LOG" 2>&1 || log "ip -batch failed (exit $?)"
T1=$(date +%s.%N)
log "ip -batch finished"
wait "$POLL"
IP_DONE=$(cat "$WORK/ip.done" 2>/dev/null || echo null)
IP_FIRST=$(cat "$WORK/ip.first" 2>/dev/null || echo null)
IP_COUNT=$(count_ip)
IP_CPU=$(awk '{print ($14 + $15) / 100}' "/proc/$IPMON/stat" 2>/dev/null || echo null)
# our consumer exits by itself once it has EXPECT events (or times out)
for _ in $(seq 1 1200); do kill -0 "$OURS" 2>/dev/null || break; sleep 0.1; done
kill "$OURS" 2>/dev/null
kill "$IPMON" 2>/dev/null
wait 2>/dev/null

cat > "$RW/result.json" <<EOF
{"n": $N, "expected": $EXPECT, "burst_start": $T0, "batch_end": $T1,
 "ip": {"events": $IP_COUNT, "first": $IP_FIRST, "done": $IP_DONE, "cpu_s": $IP_CPU},
 "kernel": "$(uname -r)", "guest_cpus": $(nproc)}
EOF
trap - EXIT
finish ok
