# Shared shell helpers for the guest-side VM scenarios (tests/vm/scenarios/*.sh). Source it, then:
#
#   source "$(dirname "$0")/lib.sh"      # the suite copies lib.sh beside each scenario it runs
#   scenario_begin "$@"                  # RW PROJECT_DIR PYTHON; sets RW PROJ PY WORK LOG, traps EXIT
#   ... ; finish ok
#
# A scenario writes every artifact into $RW and its verdict into $RW/done ("ok" or "error: ..."). It must leave
# the guest clean for the next scenario of the same boot: processes started through `bg_start` are stopped by
# `finish`, and a scenario may define `scenario_cleanup` for the rest (its netns, links). Netns names must be
# unique to the scenario (prefix them with its name).

# job control: background jobs get their own process group and do NOT inherit an ignored SIGINT
set -m
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

BG_PIDS=()
DONE_WRITTEN=0

scenario_begin() {
  RW=${1:?RWDIR}; PROJ=${2:?PROJECT_DIR}; PY=${3:-python3}
  [ -d "$RW" ] || { echo "scenario: RWDIR $RW missing" >&2; exit 2; }
  T0=$(date +%s.%N)
  LOG="$RW/scenario.log"
  : > "$LOG"
  rm -f "$RW/done"
  WORK=$(mktemp -d /tmp/monitor-vm-XXXXXX)      # guest tmpfs/overlay: unix sockets work here, not in 9p $RW
  trap 'finish "error: scenario exited early (line $LINENO)"' EXIT
  log "scenario $(basename "$RW"): kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s"
}

elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { local m; m="$(date +%s.%N) [+$(elapsed)s] $*"; echo "$m" >> "$LOG"; echo "scenario: $m"; }

finish() {  # finish "ok" | finish "error: ..."
  [ "$DONE_WRITTEN" = 1 ] && return
  DONE_WRITTEN=1
  log "finish: $1"
  declare -F scenario_cleanup > /dev/null && scenario_cleanup
  local pid
  for pid in "${BG_PIDS[@]}"; do stop_pid "$pid" TERM 5; done
  sync
  echo "$1" > "$RW/done"
}
fail() { log "FAIL: $*"; finish "error: $*"; exit 1; }

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

# bg_start LOGFILE CMD...: start CMD in the background (stopped by finish); its pid is in $BG_PID
bg_start() {
  local out=$1; shift
  "$@" > "$out" 2>&1 &
  BG_PID=$!
  BG_PIDS+=("$BG_PID")
}

# monitor_start NETNS LOGFILE ARGS...: `python -m monitor ARGS` inside NETNS from the read-only checkout
monitor_start() {
  local ns=$1 out=$2; shift 2
  bg_start "$out" ip netns exec "$ns" env PYTHONPATH="$PROJ" "$PY" -m monitor "$@"
  log "monitor $* starting in netns $ns (pid $BG_PID)"
}

# http_ready NETNS URL: the monitor answers (Python start-up takes about a minute under TCG: poll, never sleep)
http_ready() { ip netns exec "$1" curl -fsS -o /dev/null --max-time 2 "$2"; }

# warm_crypto: the kernel's first use of an ESP algorithm takes ~10 s under TCG; pay it once in a scratch netns
# before IKE negotiates (or the responder answers IKE_AUTH too late). Algorithms: cbc(aes)+hmac(sha256), gcm.
warm_crypto() {
  modprobe -a esp4 esp6 xfrm_user xfrm_interface nlmon veth 2>/dev/null
  ip netns add warm 2>/dev/null || return 0          # already warmed in this boot
  local k=0x0123456789abcdef0123456789abcdef
  ip -n warm xfrm state add src 198.51.100.1 dst 198.51.100.2 proto esp spi 0x100 mode tunnel \
    enc 'cbc(aes)' "$k" auth-trunc 'hmac(sha256)' "${k}${k#0x}" 128 2>> "$LOG"
  ip -n warm xfrm state add src 198.51.100.1 dst 198.51.100.2 proto esp spi 0x101 mode tunnel \
    aead 'rfc4106(gcm(aes))' 0x0123456789abcdef0123456789abcdef01234567 128 2>> "$LOG"
  ip -n warm xfrm state flush
  ip netns del warm
  log "crypto warmed (cbc(aes)+hmac(sha256), rfc4106(gcm(aes)))"
}

# charon_start NETNS CONFDIR: one charon in NETNS with its own /run (mount ns) and CONFDIR/strongswan.conf,
# whose vici socket must be under $WORK. Sets BG_PID.
charon_start() {
  local ns=$1 dir=$2
  bg_start "$RW/charon-$ns.stdout" ip netns exec "$ns" unshare -m sh -c \
    "mount -t tmpfs tmpfs /run && STRONGSWAN_CONF=$dir/strongswan.conf exec /usr/lib/ipsec/charon"
  log "charon starting in netns $ns (pid $BG_PID)"
}

# two_gateways A B INNER_A INNER_B: netns A and B joined by a veth (gw0 in each), outer addresses 198.51.100.1 (A)
# and .2 (B), INNER_A/INNER_B on each side's loopback, routed to each other over the veth (what the tunnel carries).
two_gateways() {
  local a=$1 b=$2 ia=$3 ib=$4
  ip netns add "$a" || fail "netns add $a"
  ip netns add "$b" || fail "netns add $b"
  ip link add gw0 netns "$a" type veth peer name gw0 netns "$b" || fail "veth"
  ip -n "$a" addr add 198.51.100.1/24 dev gw0
  ip -n "$b" addr add 198.51.100.2/24 dev gw0
  for ns in "$a" "$b"; do ip -n "$ns" link set lo up; ip -n "$ns" link set gw0 up; done
  ip -n "$a" addr add "$ia/32" dev lo
  ip -n "$b" addr add "$ib/32" dev lo
  ip -n "$a" route add "$ib/32" via 198.51.100.2 dev gw0 src "$ia" || fail "route $a"
  ip -n "$b" route add "$ia/32" via 198.51.100.1 dev gw0 src "$ib" || fail "route $b"
}

# psk_conn NAME CHILD LOCAL REMOTE LOCAL_TS REMOTE_TS START_ACTION [CONN_LINES [CHILD_LINES]]: one connection of a
# swanctl.conf `connections {}` block: IKEv2 with PSK (the outer addresses are the ids), aes128-sha256, one
# tunnel-mode child CHILD; CONN_LINES and CHILD_LINES (options, one per line) are added to each.
psk_conn() {
  cat <<EOT
  $1 {
    version = 2
    local_addrs = $3
    remote_addrs = $4
    proposals = aes128-sha256-ecp256
${8:-}
    local {
      auth = psk
      id = $3
    }
    remote {
      auth = psk
      id = $4
    }
    children {
      $2 {
        mode = tunnel
        local_ts = $5
        remote_ts = $6
        esp_proposals = aes128-sha256
        start_action = $7
${9:-}
      }
    }
  }
EOT
}

# strongswan_conf SIDE [CHARON_LINES]: $WORK/SIDE/strongswan.conf for a charon with only the plugins a PSK tunnel
# needs (fast start under TCG), its vici socket at $WORK/SIDE.vici, and CHARON_LINES (options) added in `charon {}`.
strongswan_conf() {
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/strongswan.conf" <<EOT
charon {
  load_modular = no
  load = random nonce openssl aes sha1 sha2 hmac kdf gmp kernel-netlink socket-default vici
  install_routes = no
${2:-}
  plugins {
    vici {
      socket = unix://$WORK/$1.vici
    }
  }
}
EOT
}

# charon_up SIDE NETNS: start SIDE's charon in NETNS and load $WORK/SIDE/swanctl.conf through its vici socket
charon_up() {
  charon_start "$2" "$WORK/$1"
  poll_until 30 0.2 test -S "$WORK/$1.vici" || fail "charon $1: no vici socket"
  sw "$WORK/$1.vici" --load-all --file "$WORK/$1/swanctl.conf" >> "$RW/swanctl-load-$1.log" \
    || fail "swanctl --load-all for $1"
}

# sw VICI_SOCKET ARGS...: swanctl against one charon, without loading crypto plugins (slow under TCG)
sw() {
  local sock=$1; shift
  [ -f "$WORK/swanctl-client.conf" ] || printf 'swanctl {\n  load = random\n}\n' > "$WORK/swanctl-client.conf"
  STRONGSWAN_CONF="$WORK/swanctl-client.conf" swanctl "$@" --uri "unix://$sock" 2>> "$RW/swanctl-stderr.log"
}
