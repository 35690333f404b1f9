#!/usr/bin/env bash
# The IKE view (issue 14) against a real charon: `monitor serve --vici` in ns ike-a, two strongSwan gateways.
#
#   bash scenario.sh RWDIR PROJECT_DIR PYTHON      (run by suite.sh; helpers in lib.sh)
#
# Side a loads five connections to b (192.0.2.2) once serve is connected to its VICI socket, so serve sees
# every log line of their negotiation:
#   gw/net        PSK right, start_action = start: a kernel tunnel whose ike block must name gw/net
#   badpsk/bad    PSK differs from b's: auth_failed
#   badesp/esp    ESP proposals b does not accept: no_proposal (the IKE_SA comes up, the CHILD_SA does not)
#   dead/void     peer 192.0.2.99, nobody there: peer_unreachable (retransmits exhausted)
#   idle/never    start_action = none: down / not_initiated
# Then charon a is stopped (serve must say so and keep serving), started and loaded again (the view recovers).
# Artifacts: tunnels-1.json, ike-1.json, swanctl-sas-1.txt, swanctl-conns-1.txt (taken together once every
# expectation showed or after 150 s; view-1.result says which), ike-down.json, tunnels-down.json,
# tunnels-2.json, ike-2.json, swanctl-sas-2.txt (view-2.result), serve.log, charon-*.log.
source "$(dirname "$0")/lib.sh"
scenario_begin "$@"

A=ike-a; B=ike-b; PORT=8788
URL=http://127.0.0.1:$PORT
scenario_cleanup() { ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null; }

warm_crypto
ip netns add $A || fail "netns add $A"
ip netns add $B || fail "netns add $B"
ip link add veth-ia netns $A type veth peer name veth-ib netns $B || fail "veth"
ip -n $A addr add 192.0.2.1/24 dev veth-ia
ip -n $B addr add 192.0.2.2/24 dev veth-ib
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set veth-ia up; ip -n $B link set veth-ib up
log "network up"

conf() {  # conf SIDE: strongswan.conf with its vici socket under $WORK and a line-flushed file log
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/strongswan.conf" <<EOT
charon {
  load_modular = no
  load = random nonce openssl aes sha1 sha2 hmac kdf gmp kernel-netlink socket-default vici
  install_routes = no
  retransmit_tries = 3
  retransmit_timeout = 2.0
  retransmit_base = 1.4
  plugins {
    vici {
      socket = unix://$WORK/$1.vici
    }
  }
  filelog {
    $1 {
      path = $RW/charon-$1.log
      time_format = %T
      ike_name = yes
      flush_line = yes
      default = 1
    }
  }
}
EOT
}
conn() {  # conn NAME REMOTE LID RID CHILD LTS RTS ESP START LOCAL [MORE_CHILDREN]
  cat <<EOT
  $1 {
    version = 2
    local_addrs = ${10}
    remote_addrs = $2
    proposals = aes128-sha256-ecp256
    dpd_delay = 3s
    local {
      auth = psk
      id = $3
    }
    remote {
      auth = psk
      id = $4
    }
    children {
      $5 {
        local_ts = $6
        remote_ts = $7
        esp_proposals = $8
        dpd_action = restart
        start_action = $9
      }
${11:-}
    }
  }
EOT
}
secret() { printf '  ike-%s {\n    id-1 = %s\n    id-2 = %s\n    secret = "%s"\n  }\n' "$1" "$2" "$3" "$4"; }
conf a; conf b
vti() {  # vti START: a route-based child in the gw IKE_SA (xfrm interface id 42, 0.0.0.0/0 selectors)
  printf '      vti {\n        local_ts = 0.0.0.0/0\n        remote_ts = 0.0.0.0/0\n        esp_proposals = aes128-sha256\n        if_id_in = 42\n        if_id_out = 42\n        start_action = %s\n      }\n' "$1"
}
{
  echo "connections {"
  conn gw 192.0.2.2 gw-a gw-b net 10.10.1.1/32 10.20.1.1/32 aes128-sha256 start 192.0.2.1 "$(vti start)"
  conn badpsk 192.0.2.2 bad-a bad-b bad 10.10.2.1/32 10.20.2.1/32 aes128-sha256 start 192.0.2.1
  conn badesp 192.0.2.2 esp-a esp-b esp 10.10.4.1/32 10.20.4.1/32 aes256-sha512 start 192.0.2.1
  conn dead 192.0.2.99 dead-a dead-b void 10.10.5.1/32 10.20.5.1/32 aes128-sha256 start 192.0.2.1
  conn idle 192.0.2.2 idle-a idle-b never 10.10.3.1/32 10.20.3.1/32 aes128-sha256 none 192.0.2.1
  echo "}"; echo "secrets {"
  secret gw gw-a gw-b right-gw; secret bad bad-a bad-b wrong-on-a; secret esp esp-a esp-b right-esp
  secret dead dead-a dead-b x; secret idle idle-a idle-b right-idle
  echo "}"
} > "$WORK/a/swanctl.conf"
{
  echo "connections {"
  conn gw 192.0.2.1 gw-b gw-a net 10.20.1.1/32 10.10.1.1/32 aes128-sha256 none 192.0.2.2 "$(vti none)"
  conn badpsk 192.0.2.1 bad-b bad-a bad 10.20.2.1/32 10.10.2.1/32 aes128-sha256 none 192.0.2.2
  conn badesp 192.0.2.1 esp-b esp-a esp 10.20.4.1/32 10.10.4.1/32 aes128-sha256 none 192.0.2.2
  echo "}"; echo "secrets {"
  secret gw gw-b gw-a right-gw; secret bad bad-b bad-a right-on-b; secret esp esp-b esp-a right-esp
  echo "}"
} > "$WORK/b/swanctl.conf"
cp "$WORK/a/swanctl.conf" "$RW/swanctl-a.conf"; cp "$WORK/b/swanctl.conf" "$RW/swanctl-b.conf"
sed -i 's/secret = "[^"]*"/secret = "<redacted>"/' "$RW"/swanctl-?.conf

start_charon() {  # start_charon SIDE NETNS: charon, its socket, its pid in CHARON_PID
  charon_start "$2" "$WORK/$1"
  CHARON_PID=$BG_PID
  poll_until 60 0.2 test -S "$WORK/$1.vici" || fail "charon $1: no vici socket"
}
load_once() { sw "$WORK/$1.vici" --load-all --file "$WORK/$1/swanctl.conf" >> "$RW/swanctl-load-$1.log"; }
load() { poll_until 30 1 load_once "$1" || fail "load $1"; }  # a fresh charon may not listen yet
start_charon b $B; load b
start_charon a $A; CHARON_A=$CHARON_PID
log "charons up; a's connections not loaded yet"

monitor_start $A "$RW/serve.log" serve --source kernel --interval 1 --host 127.0.0.1 --port $PORT \
  --vici "$WORK/a.vici"
poll_until 240 0.5 http_ready $A "$URL/healthz" || fail "serve did not answer within 240 s"
get() { ip netns exec $A curl -fsS --max-time 5 "$URL$1"; }
connected() { get /api/v1/ike | grep -q '"connected":true'; }
poll_until 30 0.5 connected || fail "serve did not connect to charon a's VICI socket"
log "serve answers and is connected to charon a"
load a
log "a's connections loaded (start_action = start initiates gw, badpsk, badesp, dead)"

# every expectation of view 1, read from serve's JSON without Python (a start costs a minute under TCG)
view1() {
  local t; t=$(get /api/v1/tunnels) || return 1
  sw "$WORK/a.vici" --list-sas 2>/dev/null | grep -q 'net: #.*INSTALLED' &&
  grep -q '"conn":"gw","child":"net"' <<< "$t" && grep -q '"conn":"gw","child":"vti"' <<< "$t" &&
  grep -q '"id":"ike:idle:never"' <<< "$t" &&
  grep -q '"code":"auth_failed"' <<< "$t" && grep -q '"code":"no_proposal"' <<< "$t" &&
  grep -q '"code":"peer_unreachable"' <<< "$t"
}
snap() {  # snap N: serve's tunnels and IKE view, then swanctl's, at (about) the same instant
  get /api/v1/tunnels > "$RW/tunnels-$1.json"; get /api/v1/ike > "$RW/ike-$1.json"
  sw "$WORK/a.vici" --list-sas > "$RW/swanctl-sas-$1.txt"; sw "$WORK/a.vici" --list-conns > "$RW/swanctl-conns-$1.txt"
}
if poll_until 150 1 view1; then echo ok > "$RW/view-1.result"; else echo timeout > "$RW/view-1.result"; fi
snap 1
log "view 1: $(cat "$RW/view-1.result")"

# charon a stops: serve says so (one status) and keeps serving
stop_pid "$CHARON_A" TERM 15
disconnected() { get /api/v1/ike | grep -q '"connected":false'; }
poll_until 30 0.5 disconnected || fail "serve still says connected 30 s after charon a stopped"
get /api/v1/ike > "$RW/ike-down.json"; get /api/v1/tunnels > "$RW/tunnels-down.json" || fail "REST down"
log "charon a stopped; serve reports it"

rm -f "$WORK/a.vici"   # or the restarted charon's socket is "there" before it listens
start_charon a $A; load a
view2() { connected && sw "$WORK/a.vici" --list-sas 2>/dev/null | grep -q 'net: #.*INSTALLED' &&
          get /api/v1/tunnels | grep -q '"conn":"gw","child":"net"'; }
if poll_until 120 1 view2; then echo ok > "$RW/view-2.result"; else echo timeout > "$RW/view-2.result"; fi
snap 2
log "charon a restarted; view 2: $(cat "$RW/view-2.result")"
finish ok
