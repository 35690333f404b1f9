#!/usr/bin/env bash
# vm-timeout: 900
# A rekey storm with forced overruns (issue 18, issue 17 item 2): two charons in storm-a/storm-b over a veth,
# 10 IKE_SAs x 21 CHILD_SAs = 210 tunnels, side a rekeying every child every 50-75 s (about 3 rekeys/s in all),
# ping through 3 children, `monitor serve` in storm-a for the whole run with a small event socket buffer
# (MONITOR_RCVBUF=32768; the kernel doubles it).
#
#   bash scenario.sh RWDIR PROJECT_DIR PYTHON      (run by suite.sh; helpers in lib.sh)
#
#   1. serve starts; once it answers, a's connections are loaded: the monitor sees every CHILD_SA come up;
#   2. storm: >= STORM_CHANGES outbound SPI changes; burst 1: serve is stopped (SIGSTOP, a CPU-starved monitor)
#      while `ip -batch` makes 600 policy changes and >= 20 rekeys happen, so its event socket overruns and real
#      rekey events are lost; serve continues (the overrun's end); >= STORM_CHANGES more SPI changes;
#   3. freeze: pings stop, charons and serve get SIGSTOP (no more rekeys), burst 2 (policies, plus 20 SA pairs
#      that stay) overruns the event socket again; the kernel reference is taken, serve continues (the overrun's
#      end), then serve's REST snapshot is polled until it holds exactly the reference's SAs and counters (30 s);
#   4. the final point: `ip -s xfrm state`, `ip xfrm policy`, REST tunnels, /metrics, every event, and a second
#      `ip -s xfrm state` (the point is stable only if nothing changed).
# The scenario fails only when the set-up fails (charon, IKE, the network); what the monitor did is recorded
# and judged by tests/vm/test_storm_vm.py, so the same script also runs against an older monitor.
#
# Artifacts (RW): spis.txt (`<epoch> <reqid> <out SPI>` per outbound SA when first seen, polled each second),
# healthz.log (`<epoch> <http code> <json>` every 2 s), netlink.log (`<epoch> <port id> <groups> <rmem> <dump> <drops>`
# of every NETLINK_XFRM socket in storm-a, every 2 s), burst1.* / burst2.* (start/end epochs), metrics-*.txt,
# xfrm-state-ref.txt / xfrm-policy-ref.txt (right after burst 2), conv/NNN.json + conv/times.txt (the REST polls),
# convergence.result, xfrm-state-a.txt, xfrm-policy-a.txt, tunnels-final.json, xfrm-state-a-after.txt,
# dumppoint.stable, events-N.json, healthz-final.json, serve.log, charon-*.log, times in scenario.log.
source "$(dirname "$0")/lib.sh"
scenario_begin "$@"

A=storm-a; B=storm-b; PORT=8789
URL=http://127.0.0.1:$PORT
LA=203.0.113.1; LB=203.0.113.2
NCONN=10; NCHILD=21; NTUN=$((NCONN * NCHILD))
# LIFE: from the freeze to the final point the charons are stopped, minutes in a starved guest; with 180 s the
# kernel hard-expired the newest SAs meanwhile (real downs, run 13: 23 children, 113-130 s after the freeze)
REKEY=75; RAND=25; LIFE=600
CHANGES=${STORM_CHANGES:-60}
BUSY="0:0 3:5 7:10"   # conn:child pairs that carry pings
scenario_cleanup() {
  local p
  for p in $SERVE_PID $CHARON_A $CHARON_B; do kill -CONT "$p" 2>/dev/null; done
  cp "$WORK"/charon-*.log "$RW/" 2>/dev/null
  ps -eo pid,comm,time,etime,args > "$RW/ps-end.txt" 2>/dev/null
  ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null
}

modprobe -a esp4 xfrm_user veth 2>/dev/null   # before serve opens its NETLINK_XFRM sockets
ip netns add $A || fail "netns add $A"
ip -n $A link set lo up
# ---------------------------------------------------------------- serve first: its Python start-up (1-3 min under TCG) overlaps the rest
mkdir -p "$WORK/state"
cat > "$WORK/serve.toml" <<EOT
[health]
idle_after = 900
expiring_margin = 10
EOT
export MONITOR_RCVBUF=32768 MONITOR_RING_SIZE=500000 MONITOR_VICI=off MONITOR_STATE_DIR="$WORK/state"
monitor_start $A "$RW/serve.log" serve --source kernel --interval 5 --host 127.0.0.1 --port $PORT \
  --config "$WORK/serve.toml"
SERVE_PID=$BG_PID

warm_crypto
ip netns add $B || fail "netns add $B"
ip link add veth-sa netns $A type veth peer name veth-sb netns $B || fail "veth"
ip -n $A addr add $LA/24 dev veth-sa
ip -n $B addr add $LB/24 dev veth-sb
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set veth-sa up; ip -n $B link set veth-sb up
for p in $BUSY; do
  c=${p%%:*}; k=${p##*:}
  ip -n $A addr add 10.50.$c.$((k + 1))/32 dev lo
  ip -n $B addr add 10.60.$c.$((k + 1))/32 dev lo
done
ip -n $A route add 10.60.0.0/16 via $LB dev veth-sa || fail "route a"
ip -n $B route add 10.50.0.0/16 via $LA dev veth-sb || fail "route b"
log "network up"


# ---------------------------------------------------------------- charons
conf() {  # conf SIDE
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/strongswan.conf" <<EOT
charon {
  load_modular = no
  load = random nonce openssl aes sha1 sha2 hmac kdf gmp kernel-netlink socket-default vici
  install_routes = no
  delete_rekeyed_delay = 2
  retransmit_tries = 5
  retransmit_timeout = 2.0
  retransmit_base = 1.4
  plugins {
    vici {
      socket = unix://$WORK/$1.vici
    }
  }
  filelog {
    $1 {
      path = $WORK/charon-$1.log
      time_format = %T
      default = 0
    }
  }
}
EOT
}
swconf() {  # swconf SIDE LOCAL REMOTE MYNET PEERNET START REKEY LIFE: one awk (forks are slow under TCG)
  awk -v s="$1" -v la="$2" -v ra="$3" -v my="$4" -v peer="$5" -v start="$6" -v rekey="$7" -v life="$8" \
      -v rnd="${RAND}s" -v nconn=$NCONN -v nchild=$NCHILD 'BEGIN {
    o = (s == "a") ? "b" : "a"
    print "connections {"
    for (c = 0; c < nconn; c++) {
      printf "  s%d {\n    version = 2\n    local_addrs = %s\n    remote_addrs = %s\n", c, la, ra
      printf "    proposals = aes128-sha256-ecp256\n"
      printf "    local {\n      auth = psk\n      id = %s%d.storm.example\n    }\n", s, c
      printf "    remote {\n      auth = psk\n      id = %s%d.storm.example\n    }\n    children {\n", o, c
      for (k = 0; k < nchild; k++) {
        printf "      k%d {\n        mode = tunnel\n", k
        printf "        local_ts = %s.%d.%d/32\n        remote_ts = %s.%d.%d/32\n", my, c, k + 1, peer, c, k + 1
        printf "        esp_proposals = aes128-sha256\n        rekey_time = %s\n        rand_time = %s\n", rekey, rnd
        printf "        life_time = %s\n        start_action = %s\n      }\n", life, start
      }
      print "    }\n  }"
    }
    print "}\nsecrets {\n  ike-storm {"
    for (c = 0; c < nconn; c++) printf "    id-a%d = a%d.storm.example\n    id-b%d = b%d.storm.example\n", c, c, c, c
    print "    secret = \"monitor-vm-storm-psk\"\n  }\n}"
  }' > "$WORK/$1/swanctl.conf"
}
conf a; conf b
swconf a $LA $LB 10.50 10.60 start "${REKEY}s" "${LIFE}s"
swconf b $LB $LA 10.60 10.50 none 900s 1200s   # b never starts a rekey
charon_start $B "$WORK/b"; CHARON_B=$BG_PID
charon_start $A "$WORK/a"; CHARON_A=$BG_PID
poll_until 30 0.2 test -S "$WORK/b.vici" || fail "charon b: no vici socket"
poll_until 30 0.2 test -S "$WORK/a.vici" || fail "charon a: no vici socket"
for p in $CHARON_A $CHARON_B; do log "charon pid $p is $(cat /proc/$p/comm 2>/dev/null)"; done
sw "$WORK/b.vici" --load-all --file "$WORK/b/swanctl.conf" >> "$RW/swanctl-load-b.log" || fail "swanctl --load-all b"

# ---------------------------------------------------------------- pollers: outbound SPIs, /healthz
: > "$RW/spis.txt"
spi_poll() {  # every 2 s (an outbound SA lives >= 40 s): new "reqid SPI" pairs, two forks a round
  : > "$WORK/seen"
  while :; do
    ip -n $A xfrm state 2>/dev/null | awk -v a=$LA -v b=$LB -v t="$EPOCHREALTIME" -v seen="$WORK/seen" '
      BEGIN {while ((getline l < seen) > 0) old[l] = 1}
      /^src /{out = ($2 == a && $4 == b); next}
      out && $1 == "proto" && $2 == "esp" {k = $6 " " $4; out = 0; if (!(k in old)) {old[k] = 1; print t, k; print k >> seen}}' \
      >> "$RW/spis.txt"
    sleep 2
  done
}
healthz_poll() {  # every 2 s: "<epoch> <http code> <body>" (one fork: curl), and the XFRM sockets' Rmem/Drops
  while :; do
    local now=$EPOCHREALTIME out
    out=$(ip netns exec $A curl -s --max-time 5 -w ' %{http_code}' "$URL/healthz")
    echo "$now ${out##* } ${out% *}" >> "$RW/healthz.log"
    ip netns exec $A awk -v t="$now" '$2 == 6 {print t, $3, $4, $5, $7, $9}' /proc/net/netlink >> "$RW/netlink.log"
    sleep 2
  done
}
bg_start "$RW/spi-poll.log" spi_poll
get() { ip netns exec $A curl -fsS --max-time 10 "$URL$1"; }
changes() { echo $(( $(wc -l < "$RW/spis.txt") - NTUN )); }

poll_until 240 1 http_ready $A "$URL/healthz" || fail "serve did not answer within 240 s ($(tail -n 3 "$RW/serve.log"))"
log "serve ready"
bg_start "$RW/healthz-poll.log" healthz_poll

# ---------------------------------------------------------------- 1. 210 CHILD_SAs
sw "$WORK/a.vici" --load-all --file "$WORK/a/swanctl.conf" >> "$RW/swanctl-load-a.log" || fail "swanctl --load-all a"
log "a's connections loaded: $NTUN children starting"
out_reqids() { ip -n $A xfrm state 2>/dev/null | awk -v a=$LA -v b=$LB '/^src /{out = ($2 == a && $4 == b); next}
  out && $1 == "proto" && $2 == "esp" {print $6; out = 0}' | sort -u | wc -l; }
all_up() { [ "$(out_reqids)" -ge $NTUN ]; }
poll_until 240 2 all_up || fail "only $(out_reqids) of $NTUN CHILD_SAs installed within 240 s"
log "all $NTUN CHILD_SAs installed"
PINGS=()
for p in $BUSY; do
  c=${p%%:*}; k=${p##*:}
  bg_start "$RW/ping-$c-$k.log" ip netns exec $A ping -I 10.50.$c.$((k + 1)) -i 0.2 -W 1 10.60.$c.$((k + 1))
  PINGS+=("$BG_PID")
done
monitor_tunnels() { get /metrics 2>/dev/null | awk '/^ipsec_tunnels\{/{s += $2} END{printf "%d", s}'; }
log "monitor shows $(monitor_tunnels) tunnels"   # no wait: the storm starts ~50 s after the CHILD_SAs anyway

# ---------------------------------------------------------------- 2. storm, burst 1 during it
metrics() {  # three tries: a starved monitor's /metrics can take longer than get's 10 s (runs 12, 13: empty files)
  local i
  for i in 1 2 3; do
    get /metrics 2>/dev/null | grep -E '^ipsec_monitor_(enobufs|resyncs|last_dump|event_loop)|^ipsec_tunnels\{' \
      > "$RW/metrics-$1.txt"
    [ -s "$RW/metrics-$1.txt" ] && return 0
  done
}
enobufs() { awk '/^ipsec_monitor_enobufs_total/{s += $2} END{printf "%d", s}' "$RW/metrics-$1.txt" 2>/dev/null; }
storm() {  # storm N: wait until N more outbound SPI changes (deadline 120 s)
  local want=$(( $(changes) + $1 )) t0=$EPOCHREALTIME
  enough() { [ "$(changes)" -ge "$want" ]; }
  poll_until 120 1 enough || fail "the storm stalled: $(changes) SPI changes, wanted $want"
  log "storm: $1 SPI changes in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s ($(changes) since all were up)"
}
storm "$CHANGES"
burst() {  # burst N FILE [SA lines...]: policy add/delete lines (no template: no tunnel), SA lines in the middle
  local n=$1 f=$2; shift 2
  {
    awk -v n="$n" 'BEGIN{for (i = 0; i < n / 2; i++) printf "xfrm policy add src 10.99.%d.%d/32 dst 10.98.%d.%d/32 dir out\n", i / 250, i % 250 + 1, i / 250, i % 250 + 1}'
    printf '%s\n' "$@"
    awk -v n="$n" 'BEGIN{for (i = n / 2; i < n; i++) printf "xfrm policy add src 10.99.%d.%d/32 dst 10.98.%d.%d/32 dir out\n", i / 250, i % 250 + 1, i / 250, i % 250 + 1}'
    awk -v n="$n" 'BEGIN{for (i = 0; i < n; i++) printf "xfrm policy delete src 10.99.%d.%d/32 dst 10.98.%d.%d/32 dir out\n", i / 250, i % 250 + 1, i / 250, i % 250 + 1}'
  } > "$f"
}
metrics pre1
ps -eo pid,comm,time,etime,args > "$RW/ps-storm.txt"
burst 300 "$WORK/burst1.batch"
# The monitor must not read while the burst runs (under TCG `ip -batch` is slower than the monitor): SIGSTOP
# serve, as a CPU-starved monitor would be, so its event socket overruns for sure; the storm goes on meanwhile
# and its rekey events are lost as well. The overrun ends when serve continues (burst1.end).
kill -STOP "$SERVE_PID"
echo $EPOCHREALTIME > "$RW/burst1.start"
c0=$(changes)
ip -n $A -force -batch "$WORK/burst1.batch" > "$RW/burst1.log" 2>&1
lost() { [ $(( $(changes) - c0 )) -ge 20 ]; }
poll_until 60 1 lost || log "burst 1: only $(( $(changes) - c0 )) SPI changes while serve was stopped"
kill -CONT "$SERVE_PID"
echo $EPOCHREALTIME > "$RW/burst1.end"
log "burst 1 done (600 policy changes; $(( $(changes) - c0 )) SPI changes while serve was stopped); monitor ENOBUFS before: $(enobufs pre1)"
overran() { metrics "$1"; [ "$(enobufs "$1")" -gt "$(enobufs "$2")" ]; }
poll_until 60 1 overran post1 pre1 || log "burst 1: no overrun counted within 60 s"
log "after burst 1: monitor ENOBUFS $(enobufs post1)"
storm "$CHANGES"
metrics storm-end

# ---------------------------------------------------------------- 3. freeze, burst 2, convergence
for p in "${PINGS[@]}"; do stop_pid "$p" INT 3; done
metrics pre2
sleep 1.5   # packets in flight
kill -STOP "$SERVE_PID" "$CHARON_A" "$CHARON_B"
echo $EPOCHREALTIME > "$RW/freeze.time"
log "pings stopped, charons and serve stopped (SIGSTOP): no more rekeys; $(changes) SPI changes in all"
SA_LINES=()
for ((i = 1; i <= 20; i++)); do
  key=$(printf '0x%032x' $((i * 7919)))
  SA_LINES+=("xfrm state add src $LA dst $LB proto esp spi $(printf '0x7a%06x' $i) reqid $((70000 + i)) mode tunnel enc cbc(aes) $key auth-trunc hmac(sha256) $key${key#0x} 128")
  SA_LINES+=("xfrm state add src $LB dst $LA proto esp spi $(printf '0x7b%06x' $i) reqid $((70000 + i)) mode tunnel enc cbc(aes) $key auth-trunc hmac(sha256) $key${key#0x} 128")
done
burst 300 "$WORK/burst2.batch" "${SA_LINES[@]}"
echo $EPOCHREALTIME > "$RW/burst2.start"
ip -n $A -force -batch "$WORK/burst2.batch" > "$RW/burst2.log" 2>&1
ip -s -n $A xfrm state > "$RW/xfrm-state-ref.txt"
ip -n $A xfrm policy > "$RW/xfrm-policy-ref.txt"
kill -CONT "$SERVE_PID"
echo $EPOCHREALTIME > "$RW/burst2.end"
log "burst 2 done (600 policy changes, 40 SAs added); kernel reference taken"
canon_kernel() { awk '/^src /{spi = ""; alg = 0; cur = 0; next}
  $1 == "proto" {spi = $4; next}
  $1 == "enc" || $1 == "auth-trunc" || $1 == "auth" || $1 == "aead" {alg = 1; next}
  $1 == "lifetime" && $2 == "current:" {cur = 1; next}
  cur && /\(bytes\)/ {sub(/\(bytes\),/, "", $1); sub(/\(packets\)/, "", $2); if (alg) print spi, $1, $2; cur = 0}' "$1" | sort; }
canon_kernel "$RW/xfrm-state-ref.txt" > "$WORK/ref.canon"
mkdir -p "$RW/conv"
: > "$RW/conv/times.txt"
converged=""
n=0
deadline=$(( ${EPOCHREALTIME%.*} + 30 ))
while [ "${EPOCHREALTIME%.*}" -lt $deadline ]; do
  n=$((n + 1))
  f=$(printf '%s/conv/%03d.json' "$RW" $n)
  t1=$EPOCHREALTIME
  rm -f "$WORK/conv.json"
  ip netns exec $A curl -fsS --max-time 10 "$URL/api/v1/tunnels" -o "$WORK/conv.json"
  t2=$EPOCHREALTIME
  jq -c '{ts, seq, tunnels: [.tunnels[] | {id, reqid, state, rekeys, bytes_in, bytes_out, packets_in, packets_out,
          sas: [.sas[] | [.spi, .direction, .bytes, .packets]]}]}' "$WORK/conv.json" > "$f" 2>/dev/null
  echo "$n $t1 $t2" >> "$RW/conv/times.txt"
  jq -r '.tunnels[].sas[] | "\(.[0]) \(.[2]) \(.[3])"' "$f" 2>/dev/null | sort > "$WORK/mon.canon"
  if cmp -s "$WORK/ref.canon" "$WORK/mon.canon"; then
    [ -n "$converged" ] || { converged=$t1; log "REST equals the reference (poll $n)"; }
    [ "$(awk -v a="$converged" -v b="$t1" 'BEGIN{print (b - a >= 2)}')" = 1 ] && break
  else
    converged=""
  fi
  sleep 0.4
done
if [ -n "$converged" ]; then
  echo "converged $converged $(awk -v a="$(cat "$RW/burst2.end")" -v b="$converged" 'BEGIN{printf "%.2f", b - a}')" > "$RW/convergence.result"
else
  echo "not converged after $n polls" > "$RW/convergence.result"
fi
log "convergence: $(cat "$RW/convergence.result")"

# ---------------------------------------------------------------- 4. the final point
ip -s -n $A xfrm state > "$RW/xfrm-state-a.txt"
ip -n $A xfrm policy > "$RW/xfrm-policy-a.txt"
get /api/v1/tunnels > "$RW/tunnels-final.json" || log "GET tunnels failed"
get /healthz > "$RW/healthz-final.json"
get /api/v1/netns > "$RW/netns-final.json"
metrics final
sleep 1
ip -s -n $A xfrm state > "$RW/xfrm-state-a-after.txt"
if cmp -s <(canon_kernel "$RW/xfrm-state-a.txt") <(canon_kernel "$RW/xfrm-state-a-after.txt"); then
  echo stable > "$RW/dumppoint.stable"
else
  echo changed > "$RW/dumppoint.stable"
fi
since=0; page=0
while :; do
  page=$((page + 1))
  get "/api/v1/events?since=$since&limit=10000" > "$RW/events-$page.json" || { log "GET events failed"; break; }
  [ "$(jq -r .more "$RW/events-$page.json")" = true ] || break
  since=$(jq -r '.events[-1].seq' "$RW/events-$page.json")
  [ $page -lt 100 ] || break
done
log "final point taken ($(cat "$RW/dumppoint.stable")); $page event pages; summary: changes=$(changes) tunnels=$NTUN"
stop_pid "$SERVE_PID" INT 20
finish ok
