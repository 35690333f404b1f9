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
SERVE_PID=
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
stop_serve() {
  [ -n "$SERVE_PID" ] || return 0
  stop_pid "$SERVE_PID" INT 10
  wait "$SERVE_PID" 2>/dev/null; log "monitor serve exited with status $?"
  SERVE_PID=
}
cleanup() {
  stop_pid "$PING_PID" INT 3; PING_PID=
  stop_serve
  [ -n "$TAIL_PID" ] && stop_pid "$TAIL_PID" INT 5; TAIL_PID=
  [ -n "$WITNESS_PID" ] && stop_pid "$WITNESS_PID" INT 15; WITNESS_PID=
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
# ---------------------------------------------------------------- our own recorder, if the package has one
# Started as soon as ns a exists: Python's start-up under TCG takes 10-40 s (imports over 9p), so it runs
# while the network, nlmon and tcpdump are set up. No separate "does it exist" probe: each Python start costs
# seconds. Before charon starts, the scenario waits until the recorder is either listening (an XFRM netlink
# socket bound to multicast groups exists in ns a: nothing else opens one before charon starts) or has
# exited (e.g. no "record" command yet: argparse exits 2).
if [ -n "$PROJ" ] && [ -f "$PROJ/monitor/cli.py" ]; then
  (cd "$PROJ" && exec ip netns exec a env PYTHONPATH="$PROJ" "$PY" -m monitor record \
      --out "$RW/monitor-a.pcap" --interval 1) > "$RW/monitor-a.log" 2>&1 &
  REC_PID=$!
  log "recorder starting (pid $REC_PID): $PY -m monitor record --out $RW/monitor-a.pcap --interval 1"
else
  log "no $PROJ/monitor/cli.py; recorder not started"
fi

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

# ---------------------------------------------------------------- wait for the recorder, then start serve
xfrm_listener() {  # /proc/net/netlink columns: sk Eth Pid Groups ...; Eth 6 = NETLINK_XFRM
  ip netns exec a awk 'NR > 1 && $2 == 6 && $4 != "00000000" {f = 1} END {exit !f}' /proc/net/netlink
}
rec_ready() { xfrm_listener || ! kill -0 "$REC_PID" 2>/dev/null; }
if [ -n "$REC_PID" ]; then
  poll_until 150 0.25 rec_ready || log "recorder: no XFRM listener after 150 s, starting charon anyway"
  if ! kill -0 "$REC_PID" 2>/dev/null; then
    wait "$REC_PID"; rc=$?
    log "recorder exited at start with status $rc (no usable 'monitor record'?): $(tail -n 2 "$RW/monitor-a.log" | tr '\n' ' ')"
    REC_PID=
  else
    log "recorder listening"
  fi
fi

# `monitor serve` with the keepalive prober (issue 7), started now so that its Python start-up overlaps
# charon's start and the first rekey; its prober phase comes later (see "prober phase"). The prober only
# acts on idle tunnels, and the pings keep the tunnel busy until then. [health] idle_after = 8 s: without
# probes the tunnel would turn idle during the phase; the prober probes after 2 s of flat counters.
# expiring_margin = 5 s: the default (120 s) exceeds the scenario's 25 s CHILD_SA lifetime, so every tunnel
# would always be "expiring"; rekeys come 10+ s before the hard expiry.
SERVE_PORT=8787
WITNESS_PORT=8790
http_ok() { ip netns exec a curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/healthz"; }
WITNESS_PID=
TAIL_PID=
if [ -n "$PROJ" ] && [ -f "$PROJ/monitor/commands/serve.py" ]; then
  cat > "$WORK/serve.toml" <<EOT
[health]
idle_after = 8
expiring_margin = 5
[prober]
enabled = true
idle_after = 2
interval = 2
timeout = 1
[[prober.targets]]
target = "10.20.1.1"
EOT
  cp "$WORK/serve.toml" "$RW/serve.toml"
  (cd "$PROJ" && exec ip netns exec a env PYTHONPATH="$PROJ" "$PY" -m monitor serve --source kernel \
      --interval 1 --host 127.0.0.1 --port "$SERVE_PORT" --config "$WORK/serve.toml" --state-dir "$WORK/state") > "$RW/serve-a.log" 2>&1 &
  SERVE_PID=$!
  log "monitor serve starting (pid $SERVE_PID) in ns a on 127.0.0.1:$SERVE_PORT with the prober (serve.toml)"
  # The key witness (issue 17 item 1): a second serve that runs from here to the end, across every SA the
  # scenario creates, with debug logs and its history store; at the end every face it has is saved into RW
  # (REST, /metrics, events, a `monitor tail --json` stream, `monitor check --json`, the history database) and
  # the host's key check (tests/vm/conftest.py) greps all of them for every key of the run.
  (cd "$PROJ" && exec ip netns exec a env PYTHONPATH="$PROJ" "$PY" -m monitor serve --source kernel \
      --interval 1 --host 127.0.0.1 --port "$WITNESS_PORT" --log-level debug --state-dir "$WORK/witness-state") \
      > "$RW/witness-serve.log" 2>&1 &
  WITNESS_PID=$!
  log "witness serve starting (pid $WITNESS_PID) on 127.0.0.1:$WITNESS_PORT"
else
  log "no $PROJ/monitor/commands/serve.py; prober phase skipped"
fi

# ---------------------------------------------------------------- strongSwan, one charon per netns
write_conf() {  # write_conf SIDE LOCAL REMOTE LOCAL_TS REMOTE_TS START_ACTION REKEY_TIME LIFE_TIME
  local s=$1
  mkdir -p "$WORK/$s"
  cat > "$WORK/$s/strongswan.conf" <<EOT
charon {
  load_modular = no
  load = random nonce openssl aes sha1 sha2 hmac kdf gmp kernel-netlink socket-default vici
  install_routes = no
  # old inbound SAs are deleted 2 s (default 5 s) after a rekey, so the state settles well before the next
  # rekey (every 16-18 s) and the quiet dump-point window fits in between
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
        life_time = $8
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
# Only a (the monitored side) initiates rekeys: a at 18 s - [0, 2) s jitter, b's own 24 s never comes
# (each rekey by a replaces b's SAs too). Both rekeying at the same time made rekey collisions and 2 s rekey
# gaps. 16-18 s between rekeys (15 s was tried: on a busy host the dump-point window of ~7-10 s after a
# rekey did not fit before the next one).
write_conf a 192.0.2.1 192.0.2.2 10.10.1.1/32 10.20.1.1/32 start 18s 28s
write_conf b 192.0.2.2 192.0.2.1 10.20.1.1/32 10.10.1.1/32 none 24s 28s
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
poll_until 60 0.5 enough_rekeys 1 || fail "no CHILD_SA rekey within 60 s"
log "first CHILD_SA rekey seen"

# ---------------------------------------------------------------- prober phase (issue 7)
# The pings stop; `monitor serve` (started earlier) with the keepalive prober on must keep the idle tunnel
# up ([health] idle_after = 8 s) and show answered probes. Lasts >= PROBER_SECONDS; then serve is stopped
# (before the dump point: its probes would move the counters) and the pings resume. A prober failure does
# not fail the scenario (prober.result says what happened; the host-side test judges it).
PROBER_SECONDS=12
api() { ip netns exec a curl -s -m 5 "http://127.0.0.1:$SERVE_PORT$1"; }
serve_up() {  # the prober tracks the tunnel (its "probe" field is set), or serve has died (then stop polling)
  ! kill -0 "$SERVE_PID" 2>/dev/null && return 0
  track_spis
  api /api/v1/tunnels > "$WORK/tunnels.json" 2>/dev/null || return 1
  jq -e '[.tunnels[] | select(.probe != null)] | length > 0' "$WORK/tunnels.json" > /dev/null 2>&1
}
since_prober_start() { awk -v a="$PROBER_T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
probes_answered() {  # the prober's answers on the tunnel towards 10.20.1.1 (0 if none)
  jq '[.tunnels[] | select(.probe != null) | .probe.answered] | max // 0' "$WORK/tunnels.json" 2>/dev/null || echo 0
}
prober_done() {
  track_spis
  api /api/v1/tunnels > "$WORK/tunnels.json.new" 2>/dev/null && mv "$WORK/tunnels.json.new" "$WORK/tunnels.json"
  kill -0 "$SERVE_PID" 2>/dev/null || return 0
  awk -v e="$(since_prober_start)" -v m="$PROBER_SECONDS" 'BEGIN{exit !(e >= m)}' || return 1
  [ "$(probes_answered)" -ge 2 ]
}
prober_phase() {
  [ -n "$SERVE_PID" ] || return 0
  # the prober finds new tunnels at its rescans (every 15 s): wait until it tracks ours
  poll_until 150 1 serve_up
  if ! kill -0 "$SERVE_PID" 2>/dev/null; then
    wait "$SERVE_PID" 2>/dev/null
    echo "error: monitor serve exited with status $?: $(tail -n 3 "$RW/serve-a.log" | tr '\n' ' ')" > "$RW/prober.result"
    SERVE_PID=
    log "prober phase skipped: $(cat "$RW/prober.result")"
    return 0
  fi
  if ! serve_up; then
    echo "error: monitor serve not answering, or its prober not tracking the tunnel, after 150 s: $(tail -n 3 "$RW/serve-a.log" | tr '\n' ' ')" > "$RW/prober.result"
    log "prober phase skipped: $(cat "$RW/prober.result")"
    stop_serve
    return 0
  fi
  log "monitor serve answers on 127.0.0.1:$SERVE_PORT and its prober tracks the tunnel"
  if [ -n "$WITNESS_PID" ] && poll_until 90 1 http_ok "$WITNESS_PORT"; then
    (cd "$PROJ" && exec ip netns exec a env PYTHONPATH="$PROJ" "$PY" -m monitor tail --json -n 100000 \
        --url "ws://127.0.0.1:$WITNESS_PORT/ws") > "$RW/witness-tail.jsonl" 2> "$RW/witness-tail.log" &
    TAIL_PID=$!
    log "witness tail started (pid $TAIL_PID)"
  else
    log "witness serve not answering yet: no tail stream"
  fi
  stop_ping
  date +%s.%N > "$RW/prober.start"
  PROBER_T0=$(cat "$RW/prober.start")
  : > "$WORK/tunnels.json"
  if poll_until 60 1 prober_done && kill -0 "$SERVE_PID" 2>/dev/null; then
    echo ok > "$RW/prober.result"
  elif ! kill -0 "$SERVE_PID" 2>/dev/null; then
    echo "error: monitor serve died during the prober phase: $(tail -n 3 "$RW/serve-a.log" | tr '\n' ' ')" > "$RW/prober.result"
  else
    echo "timeout: $(probes_answered) probe answers after $(since_prober_start) s" > "$RW/prober.result"
  fi
  date +%s.%N > "$RW/prober.end"
  cp "$WORK/tunnels.json" "$RW/prober-tunnels.json"
  api "/api/v1/events?limit=10000" > "$RW/prober-events.json" 2>/dev/null
  log "prober phase: $(cat "$RW/prober.result"); $(probes_answered) answers in $(since_prober_start) s; state $(jq -r '[.tunnels[].state] | join(",")' "$WORK/tunnels.json" 2>/dev/null)"
  stop_serve
  start_ping
}
prober_phase

# a fresh rekey after the prober phase, so that the dump point comes right after one
track_spis   # the phase polls slowly: an SA installed since its last poll is not counted yet
n=$(rekeys)
want=$(( n + 1 > REKEYS_WANTED ? n + 1 : REKEYS_WANTED ))
poll_until 150 0.5 enough_rekeys "$want" || fail "only $(rekeys) rekeys within 150 s (wanted $want)"
log "$(rekeys) CHILD_SA rekeys seen"

# ---------------------------------------------------------------- dump point (quiescent counters)
# Taken right after a rekey (the next one is >= 16 s away): with the pings still running, wait until the old
# SAs are gone (delete_rekeyed_delay = 2 s), so the new pair has carried traffic; stop the pings, 1 s, dump,
# wait 2.5 s (the recorder dumps every 1 s). The rekey is judged by the kernel's add time of the newest
# outbound SA (on a busy host, polling notices a rekey seconds late). If the newest SA is already older than
# DUMP_MAX_AGE when settled, or any SA changed during the window, try again after the next rekey.
DUMP_MAX_AGE=6
newest_out_age() {  # seconds since the newest outbound ESP SA of ns a was installed (kernel "add" time)
  local t
  t=$(ip -s -n a xfrm state 2>/dev/null | awk '
    /^src /{out = ($2 == "192.0.2.1" && $4 == "192.0.2.2"); next}
    out && $1 == "add" {print $2 " " $3; out = 0}' | sort | tail -n 1)
  if [ -z "$t" ]; then echo 999; return; fi
  echo $(( $(date +%s) - $(date -d "$t" +%s) ))
}
snapshot() { ip -n a xfrm state 2>/dev/null | grep -E '^src|proto esp' | tr '\n' ' '; }
DUMP_OK=0
for attempt in 1 2 3 4; do
  if [ "$attempt" -gt 1 ]; then
    start_ping
    n=$(rekeys)
    poll_until 40 0.25 enough_rekeys $((n + 1)) || true
  fi
  poll_until 30 0.25 settled || { log "dump point: SAs did not settle (attempt $attempt)"; continue; }
  age=$(newest_out_age)
  if [ "$age" -gt "$DUMP_MAX_AGE" ]; then
    log "dump point: newest outbound SA is already ${age} s old (attempt $attempt), waiting for the next rekey"
    continue
  fi
  stop_ping
  sleep 1
  before=$(snapshot)
  date +%s.%N > "$RW/dumppoint.time"
  ip -s -n a xfrm state > "$RW/xfrm-state-a.txt" 2>&1
  ip -n a xfrm policy > "$RW/xfrm-policy-a.txt" 2>&1
  sw a --list-sas > "$RW/swanctl-a.txt"
  log "dump point at $(cat "$RW/dumppoint.time") (attempt $attempt; newest outbound SA ${age} s old when settled; dumps took $(awk -v a="$(cat "$RW/dumppoint.time")" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}') s)"
  sleep 2.5
  after=$(snapshot)
  if [ "$before" = "$after" ] && [ "$(esp_count)" -eq 2 ]; then DUMP_OK=1; break; fi
  log "dump point: SAs changed during the quiet window, retrying after the next rekey"
done
[ "$DUMP_OK" = 1 ] || fail "no stable dump point after 4 attempts"
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
track_spis   # a rekey that completed between the last poll and the kill
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

witness_faces() {  # every face of the witness serve into RW, for the key check
  [ -n "$WITNESS_PID" ] || return 0
  local w="http://127.0.0.1:$WITNESS_PORT" id
  ip netns exec a curl -s -m 10 "$w/api/v1/tunnels" > "$RW/witness-tunnels.json"
  for id in $(jq -r '.tunnels[].id' "$RW/witness-tunnels.json" 2>/dev/null); do
    ip netns exec a curl -s -m 10 "$w/api/v1/tunnels/$id" >> "$RW/witness-tunnel-detail.json"
    ip netns exec a curl -s -m 10 "$w/api/v1/tunnels/$id/history?from=1h" >> "$RW/witness-tunnel-history.json"
  done
  ip netns exec a curl -s -m 10 "$w/metrics" > "$RW/witness-metrics.txt"
  ip netns exec a curl -s -m 10 "$w/api/v1/events?since=0&limit=100000" > "$RW/witness-events.json"
  ip netns exec a curl -s -m 10 "$w/api/v1/netns" > "$RW/witness-netns.json"
  (cd "$PROJ" && ip netns exec a env PYTHONPATH="$PROJ" timeout 120 "$PY" -m monitor check --json) \
    > "$RW/witness-check.json" 2> "$RW/witness-check.log"
  [ -n "$TAIL_PID" ] && stop_pid "$TAIL_PID" INT 5; TAIL_PID=
  stop_pid "$WITNESS_PID" INT 15
  wait "$WITNESS_PID" 2>/dev/null; log "witness serve exited with status $?"
  WITNESS_PID=
  cp "$WORK/witness-state/history.sqlite3" "$RW/witness-history.sqlite3" 2>/dev/null
  log "witness faces saved: $(ls "$RW" | grep -c '^witness-') files, $(wc -l < "$RW/witness-tail.jsonl" 2>/dev/null || echo 0) tail lines"
}
witness_faces

log "summary: rekeys=$(rekeys) uptime=$(cut -d' ' -f1 /proc/uptime)s scenario=$(elapsed)s"
trap - EXIT
finish ok
exit 0
