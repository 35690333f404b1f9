#!/usr/bin/env bash
# Guest-side scenario for the VM tests: runs INSIDE the virtme-ng guest (Debian kernel with ESP), as root.
#
#   bash scenario.sh RWDIR PROJECT_DIR PYTHON
#
# RWDIR        host folder shared read-write (9p) with the guest: every artifact is written there
# PROJECT_DIR  the project checkout (read-only in the guest); put on PYTHONPATH for the recorder
# PYTHON       python with the project's dependencies (e.g. PROJECT_DIR/.venv/bin/python)
# (each may also come from env MONITOR_VM_RW / MONITOR_VM_PROJECT / MONITOR_VM_PYTHON)
#
# Phases: two strongSwan gateways in netns a / b over a veth pair; pings 10.10.1.1 -> 10.20.1.1 through the
# tunnel until >= REKEYS_WANTED CHILD_SA rekeys; a quiescent "dump point" (xfrm state/policy + swanctl
# reference dumps); then the peer (b) dies and a's DPD tears the tunnel down.
# Artifacts: see tests/vm/README.md.
set -u
set -o pipefail

RW=${1:-${MONITOR_VM_RW:-}}
PROJ=${2:-${MONITOR_VM_PROJECT:-}}
PY=${3:-${MONITOR_VM_PYTHON:-python3}}
REKEYS_WANTED=${MONITOR_VM_REKEYS:-2}
if [ -z "$RW" ] || [ ! -d "$RW" ]; then echo "scenario: RWDIR missing" >&2; exit 2; fi

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C
T0=$(date +%s.%N)
LOG="$RW/scenario.log"
: > "$LOG"
rm -f "$RW/done"

log() { local m; m="$(date +%s.%N) [+$(elapsed)s] $*"; echo "$m" >> "$LOG"; echo "scenario: $m"; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
DONE_WRITTEN=0
finish() {  # finish "ok" | finish "error: ..."
  [ "$DONE_WRITTEN" = 1 ] && return
  DONE_WRITTEN=1
  log "finish: $1"
  cleanup
  echo "$1" > "$RW/done"
}
fail() { log "FAIL: $*"; finish "error: $*"; exit 1; }
trap 'finish "error: scenario exited early (line $LINENO)"' EXIT

# job control: background jobs get their own process group and do NOT inherit an ignored SIGINT,
# so the recorder can be stopped with SIGINT like from a terminal
set -m

WORK=/tmp/monitor-vm-scn            # tmpfs, sockets work here (not in the 9p RWDIR)
mkdir -p "$WORK"
mountpoint -q "$WORK" || mount -t tmpfs tmpfs "$WORK" || fail "mount tmpfs $WORK"

PING_PID=
REC_PID=
TCPDUMP_PID=
CHARON_A_PID=
CHARON_B_PID=

stop_pid() {  # stop_pid PID SIGNAL SECONDS: signal, wait up to SECONDS, then SIGKILL
  local pid=$1 sig=$2 secs=$3 i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -"$sig" "$pid" 2>/dev/null
  for ((i = 0; i < secs * 10; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "pid $pid did not stop on SIG$sig within ${secs}s, killing"
  kill -9 "$pid" 2>/dev/null
  return 0
}
cleanup() {
  stop_pid "$PING_PID" INT 3; PING_PID=
  if [ -n "$REC_PID" ]; then
    stop_pid "$REC_PID" INT 15
    wait "$REC_PID" 2>/dev/null; log "recorder exited with status $?"
    REC_PID=
  fi
  stop_pid "$CHARON_A_PID" TERM 5; CHARON_A_PID=
  stop_pid "$CHARON_B_PID" TERM 5; CHARON_B_PID=
  sleep 0.5                                   # let tcpdump see the last messages
  stop_pid "$TCPDUMP_PID" INT 5; TCPDUMP_PID=
  sync
}

# poll_until DEADLINE_SECONDS INTERVAL CMD...: run CMD every INTERVAL s until it succeeds (0) or time is up (1)
poll_until() {
  local secs=$1 ivl=$2; shift 2
  local end; end=$(awk -v n="$(date +%s.%N)" -v s="$secs" 'BEGIN{printf "%.3f", n+s}')
  while :; do
    "$@" && return 0
    awk -v n="$(date +%s.%N)" -v e="$end" 'BEGIN{exit !(n>=e)}' && return 1
    sleep "$ivl"
  done
}

vici() { echo "unix://$WORK/$1.vici"; }
# swanctl prints plugin-loading noise on stderr: keep it out of the reference dumps
# swanctl needs no crypto plugins as a vici client; loading the distro's full list is slow under TCG and noisy
printf 'swanctl {\n  load = random\n}\n' > "$WORK/swanctl-client.conf"
sw() {
  local side=$1; shift
  STRONGSWAN_CONF="$WORK/swanctl-client.conf" swanctl "$@" --uri "$(vici "$side")" 2>> "$RW/swanctl-stderr.log"
}

# ---------------------------------------------------------------- kernel + network
log "kernel $(uname -r), strongSwan $(swanctl --version 2>&1 | sed -n 's/^strongSwan \([0-9][0-9.]*\) swanctl.*/\1/p' | head -n1), tcpdump $(tcpdump --version 2>&1 | awk 'NR==1{print $3}'), python $PY"
log "uptime at scenario start: $(cut -d' ' -f1 /proc/uptime) s"
modprobe -a esp4 xfrm_user nlmon veth || fail "modprobe esp4 xfrm_user nlmon veth"

ip netns add a || fail "netns add a"
ip netns add b || fail "netns add b"
ip link add veth-a netns a type veth peer name veth-b netns b || fail "veth"
ip -n a addr add 192.0.2.1/24 dev veth-a
ip -n b addr add 192.0.2.2/24 dev veth-b
for ns in a b; do ip -n $ns link set lo up; ip -n $ns link set veth-$ns up; done
ip -n a addr add 10.10.1.1/32 dev lo
ip -n b addr add 10.20.1.1/32 dev lo
ip -n a route add 10.20.1.1/32 via 192.0.2.2 dev veth-a src 10.10.1.1 || fail "route a"
ip -n b route add 10.10.1.1/32 via 192.0.2.1 dev veth-b src 10.20.1.1 || fail "route b"
ip netns exec a ping -c1 -W5 192.0.2.2 > /dev/null || fail "veth does not pass traffic"
log "network up"

# ---------------------------------------------------------------- netlink capture in ns a (whole scenario)
ip -n a link add nlmon0 type nlmon || fail "nlmon link"
ip -n a link set nlmon0 up
ip netns exec a tcpdump -i nlmon0 -s 0 -U -Z root -w "$RW/nlmon-a.pcap" > "$RW/tcpdump-a.log" 2>&1 &
TCPDUMP_PID=$!
poll_until 20 0.2 grep -q 'listening on' "$RW/tcpdump-a.log" || fail "tcpdump did not start"
log "tcpdump on nlmon0 in ns a started (pid $TCPDUMP_PID)"

# ---------------------------------------------------------------- our own recorder, if the package has one
# Started before charon so it sees everything. No separate "does it exist" probe: each Python start costs
# seconds under TCG. Instead start it and wait until it is either listening (an XFRM netlink socket bound to
# multicast groups exists in ns a: nothing else opens one before charon starts) or has exited (e.g. no
# "record" command yet: argparse exits 2).
xfrm_listener() {  # /proc/net/netlink columns: sk Eth Pid Groups ...; Eth 6 = NETLINK_XFRM
  ip netns exec a awk 'NR > 1 && $2 == 6 && $4 != "00000000" {f = 1} END {exit !f}' /proc/net/netlink
}
rec_ready() { xfrm_listener || ! kill -0 "$REC_PID" 2>/dev/null; }
if [ -n "$PROJ" ] && [ -f "$PROJ/monitor/cli.py" ]; then
  (cd "$PROJ" && exec ip netns exec a env PYTHONPATH="$PROJ" "$PY" -m monitor record \
      --out "$RW/monitor-a.pcap" --interval 1) > "$RW/monitor-a.log" 2>&1 &
  REC_PID=$!
  log "recorder starting (pid $REC_PID): $PY -m monitor record --out $RW/monitor-a.pcap --interval 1"
  poll_until 90 0.25 rec_ready || log "recorder: no XFRM listener after 90 s, starting charon anyway"
  if ! kill -0 "$REC_PID" 2>/dev/null; then
    wait "$REC_PID"; rc=$?
    log "recorder exited at start with status $rc (no usable 'monitor record'?): $(tail -n 2 "$RW/monitor-a.log" | tr '\n' ' ')"
    REC_PID=
  else
    log "recorder listening"
  fi
else
  log "no $PROJ/monitor/cli.py; recorder not started"
fi

# ---------------------------------------------------------------- strongSwan, one charon per netns
write_conf() {  # write_conf SIDE LOCAL REMOTE LOCAL_TS REMOTE_TS START_ACTION REKEY_TIME
  local s=$1
  mkdir -p "$WORK/$s"
  cat > "$WORK/$s/strongswan.conf" <<EOT
charon {
  load_modular = no
  load = random nonce openssl aes sha1 sha2 hmac kdf gmp kernel-netlink socket-default vici
  install_routes = no
  # old inbound SAs are deleted 2 s (default 5 s) after a rekey, so the state settles well before the next
  # rekey (every 12-15 s) and the quiet dump-point window fits in between
  delete_rekeyed_delay = 2
  retransmit_tries = 2
  retransmit_timeout = 1.0
  retransmit_base = 1.4
  plugins {
    vici {
      socket = $(vici "$s")
    }
  }
  filelog {
    $s {
      path = $RW/charon-$s.log
      time_format = %T
      ike_name = yes
      append = no
      flush_line = yes
      default = 1
      ike = 2
      chd = 2
      knl = 2
      cfg = 1
    }
  }
}
EOT
  cat > "$WORK/$s/swanctl.conf" <<EOT
connections {
  tun {
    version = 2
    local_addrs = $2
    remote_addrs = $3
    proposals = aes128-sha256-ecp256
    dpd_delay = 3s
    local {
      auth = psk
      id = $2
    }
    remote {
      auth = psk
      id = $3
    }
    children {
      net {
        mode = tunnel
        local_ts = $4
        remote_ts = $5
        esp_proposals = aes128-sha256
        rekey_time = $7
        life_time = 25s
        rand_time = 2s
        dpd_action = restart
        start_action = $6
      }
    }
  }
}
secrets {
  ike-tun {
    id-a = 192.0.2.1
    id-b = 192.0.2.2
    secret = "monitor-vm-test-psk"
  }
}
EOT
}
start_charon() {  # start_charon SIDE -> sets CHARON_<SIDE>_PID
  local s=$1 pid
  ip netns exec "$s" unshare -m sh -c \
    "mount -t tmpfs tmpfs /run && STRONGSWAN_CONF=$WORK/$s/strongswan.conf exec /usr/lib/ipsec/charon" \
    > "$RW/charon-$s.stdout" 2>&1 &
  pid=$!
  poll_until 30 0.2 test -S "$WORK/$s.vici" || fail "charon $s: no vici socket $(vici "$s")"
  sw "$s" --load-all --file "$WORK/$s/swanctl.conf" >> "$RW/swanctl-load-$s.log" \
    || fail "swanctl --load-all for $s (see swanctl-load-$s.log)"
  if [ "$s" = a ]; then CHARON_A_PID=$pid; else CHARON_B_PID=$pid; fi
  log "charon $s started (pid $pid) and configured"
}
# Only a (the monitored side) initiates rekeys: a at 15 s - [0, 2) s jitter, b's own 20 s never comes
# (each rekey by a replaces b's SAs too). Both rekeying at 15 s made rekey collisions and 2 s rekey gaps.
write_conf a 192.0.2.1 192.0.2.2 10.10.1.1/32 10.20.1.1/32 start 15s
write_conf b 192.0.2.2 192.0.2.1 10.20.1.1/32 10.10.1.1/32 none 20s
start_charon b                 # responder first, so the initiator's start_action=start finds it
start_charon a

out_spis() {  # outbound ESP SPIs (192.0.2.1 -> 192.0.2.2) currently in ns a, one per line
  ip -n a xfrm state 2>/dev/null | awk '
    /^src /{out = ($2 == "192.0.2.1" && $4 == "192.0.2.2"); next}
    out && $1 == "proto" && $2 == "esp" {print $4; out = 0}'
}
esp_count() { ip -n a xfrm state 2>/dev/null | grep -c 'proto esp'; }
installed() { sw a --list-sas 2>/dev/null | grep -q 'INSTALLED'; }

poll_until 60 0.5 installed || fail "CHILD_SA not established within 60 s"
log "CHILD_SA established: out SPI $(out_spis | tr '\n' ' ')"

# ---------------------------------------------------------------- traffic + rekeys
start_ping() {
  [ -n "$PING_PID" ] && kill -0 "$PING_PID" 2>/dev/null && return 0
  ip netns exec a ping -I 10.10.1.1 -i 0.2 -W 1 10.20.1.1 >> "$RW/ping-a.log" 2>&1 &
  PING_PID=$!
  log "ping 10.10.1.1 -> 10.20.1.1 started (pid $PING_PID)"
}
stop_ping() {
  [ -n "$PING_PID" ] || return 0
  stop_pid "$PING_PID" INT 3
  wait "$PING_PID" 2>/dev/null
  PING_PID=
  log "ping stopped: $(grep -E 'packets transmitted' "$RW/ping-a.log" | tail -n 1)"
}

SEEN="$WORK/seen-out-spis"
: > "$SEEN"
: > "$RW/rekeys.txt"   # "<epoch> <outbound spi>" each time a new outbound SPI appears in ns a
track_spis() {
  local s
  for s in $(out_spis); do
    if ! grep -qx "$s" "$SEEN"; then
      echo "$s" >> "$SEEN"
      echo "$(date +%s.%N) $s" >> "$RW/rekeys.txt"
      log "outbound SA $s seen (#$(wc -l < "$SEEN"))"
    fi
  done
}
rekeys() { echo $(( $(wc -l < "$SEEN") - 1 )); }
enough_rekeys() { track_spis; [ "$(rekeys)" -ge "$1" ]; }
# "settled": exactly one in + one out ESP SA (old SAs of the last rekey deleted), and a known SPI set
settled() { track_spis; [ "$(esp_count)" -eq 2 ]; }

start_ping
poll_until 30 0.5 grep -q 'bytes from 10.20.1.1' "$RW/ping-a.log" || fail "no ping reply through the tunnel"
log "ping replies through the tunnel"
poll_until 150 0.5 enough_rekeys "$REKEYS_WANTED" || fail "only $(rekeys) rekeys within 150 s"
log "$(rekeys) CHILD_SA rekeys seen"

# ---------------------------------------------------------------- dump point (quiescent counters)
# Take it right after a rekey has fully settled (old SAs gone), so the next rekey is ~10 s away, stop the
# traffic, wait 2.5 s, dump, wait 2.5 s. If anything changed during the window, try again after the next rekey.
snapshot() { ip -n a xfrm state 2>/dev/null | grep -E '^src|proto esp' | tr '\n' ' '; }
DUMP_OK=0
for attempt in 1 2 3; do
  poll_until 30 0.25 settled || { log "dump point: SAs did not settle (attempt $attempt)"; continue; }
  stop_ping
  before=$(snapshot)
  sleep 2.5
  date +%s.%N > "$RW/dumppoint.time"
  ip -s -n a xfrm state > "$RW/xfrm-state-a.txt" 2>&1
  ip -n a xfrm policy > "$RW/xfrm-policy-a.txt" 2>&1
  sw a --list-sas > "$RW/swanctl-a.txt"
  log "dump point at $(cat "$RW/dumppoint.time") (attempt $attempt; dumps took $(awk -v a="$(cat "$RW/dumppoint.time")" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}') s)"
  sleep 2.5
  after=$(snapshot)
  if [ "$before" = "$after" ] && [ "$(esp_count)" -eq 2 ]; then DUMP_OK=1; break; fi
  log "dump point: SAs changed during the quiet window, retrying after the next rekey"
  start_ping
  n=$(rekeys)
  poll_until 40 0.5 enough_rekeys $((n + 1)) || true
done
[ "$DUMP_OK" = 1 ] || fail "no stable dump point after 3 attempts"
echo "stable" > "$RW/dumppoint.stable"
log "dump point stable; $(rekeys) rekeys so far"

# ---------------------------------------------------------------- scenario 2: the peer dies
start_ping
sleep 1
track_spis
cb=$(for p in $(ip netns pids b); do [ "$(cat /proc/"$p"/comm 2>/dev/null)" = charon ] && echo "$p"; done | head -n1)
[ -n "$cb" ] || fail "charon b not found among netns b pids"
kill -9 "$cb"
date +%s.%N > "$RW/peerdeath.time"
ip -n b xfrm state flush
ip -n b xfrm policy flush
CHARON_B_PID=
log "peer death: charon b (pid $cb) SIGKILLed, b's xfrm state+policy flushed"
no_esp() { [ "$(esp_count)" -eq 0 ]; }
poll_until 90 0.5 no_esp || fail "ns a still has ESP SAs 90 s after the peer died"
log "ns a has no ESP SAs left ($(awk -v a="$(cat "$RW/peerdeath.time")" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s after the kill)"
ip -s -n a xfrm state > "$RW/after-peer-death-a.txt" 2>&1
ip -n a xfrm policy > "$RW/after-peer-death-policy-a.txt" 2>&1
sw a --list-sas > "$RW/after-peer-death-swanctl-a.txt"
stop_ping
sleep 1.5   # give the recorder one more interval to see the empty state

log "summary: rekeys=$(rekeys) uptime=$(cut -d' ' -f1 /proc/uptime)s scenario=$(elapsed)s"
trap - EXIT
finish ok
exit 0
