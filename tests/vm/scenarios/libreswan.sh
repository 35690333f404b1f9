#!/usr/bin/env bash
# libreswan (issue 12 item 7, issue 14 item 6): a real pluto pair; the monitor must show exactly one tunnel per
# connection after pluto's negotiation (no ghost from its placeholder policy or a replaced first Child SA), named
# from `whack --showstates`.
#
#   bash scenario.sh RWDIR PROJECT_DIR PYTHON      (run by suite.sh; helpers in lib.sh)
#
# libreswan's package conflicts with strongSwan's, so scripts/vm-setup.sh unpacks it into
# $MONITOR_VM_CACHE/libreswan; each pluto runs from there in a mount namespace of its own (tmpfs /run, and its
# libexec folder bound on /usr/libexec/ipsec, where pluto looks for its helpers): nothing of strongSwan is touched.
# Netns lsw-a (192.0.2.1, site 10.10.1.1) and lsw-b (192.0.2.2, site 10.20.1.1); IKEv2 PSK connection `net`,
# a initiates (auto=start), b only responds (auto=add). `monitor serve --whack` runs in lsw-a and answers before
# a's connection is loaded, so it sees pluto's whole negotiation.
# Artifacts: tunnels.json, ike.json, events.json, whack-states.txt, whack-traffic.txt (taken together once serve
# shows exactly one tunnel named `net` and whack shows its Child SA, or after 150 s: view.result says which),
# xfrm-monitor.txt (`ip xfrm monitor` in lsw-a, keys redacted after the run), pluto-a.log, pluto-b.log, serve.log.
source "$(dirname "$0")/lib.sh"
scenario_begin "$@"

A=lsw-a; B=lsw-b; PORT=8789
URL=http://127.0.0.1:$PORT
LS=${MONITOR_VM_CACHE:-/opt/monitor-vm}/libreswan
LX=$LS/usr/libexec/ipsec
scenario_cleanup() { ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null; }

[ -x "$LX/pluto" ] || fail "libreswan is not unpacked in $LS (run scripts/vm-setup.sh)"
command -v certutil > /dev/null || fail "certutil missing (libnss3-tools; scripts/vm-setup.sh)"
warm_crypto
ip netns add $A || fail "netns add $A"
ip netns add $B || fail "netns add $B"
ip link add veth-la netns $A type veth peer name veth-lb netns $B || fail "veth"
ip -n $A addr add 192.0.2.1/24 dev veth-la
ip -n $B addr add 192.0.2.2/24 dev veth-lb
ip -n $A addr add 10.10.1.1/32 dev lo; ip -n $B addr add 10.20.1.1/32 dev lo
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set veth-la up; ip -n $B link set veth-lb up
ip -n $A route add 10.20.1.1/32 via 192.0.2.2 src 10.10.1.1
ip -n $B route add 10.10.1.1/32 via 192.0.2.1 src 10.20.1.1
log "network up"

side() {  # side NAME LEFT LEFTID LEFTSUBNET RIGHT RIGHTID RIGHTSUBNET AUTO: ipsec.conf, secrets, NSS db
  local d=$WORK/$1
  mkdir -p "$d/nss" "$d/run"
  certutil -N -d "sql:$d/nss" --empty-password >> "$LOG" 2>&1 || fail "certutil $1"
  cat > "$d/ipsec.conf" <<EOT
config setup
    dnssec-enable=no
    uniqueids=yes
conn net
    left=$2
    leftid=$3
    leftsubnet=$4
    right=$5
    rightid=$6
    rightsubnet=$7
    authby=secret
    ikev2=yes
    ike=aes128-sha2_256;dh19
    esp=aes128-sha2_256
    dpddelay=3
    retransmit-timeout=60
    leftupdown=/bin/true
    auto=$8
EOT
  printf '%s %s : PSK "%s"\n' "$3" "$6" "vm-test-psk-not-secret" > "$d/ipsec.secrets"
  chmod 600 "$d/ipsec.secrets"
  cp "$d/ipsec.conf" "$RW/ipsec-$1.conf"
}
side a 192.0.2.1 @a 10.10.1.1/32 192.0.2.2 @b 10.20.1.1/32 start
side b 192.0.2.2 @b 10.20.1.1/32 192.0.2.1 @a 10.10.1.1/32 add

pluto_start() {  # pluto_start SIDE NETNS: pluto from the unpacked package, its control socket in $WORK/SIDE/run
  local d=$WORK/$1
  bg_start "$RW/pluto-$1.stdout" ip netns exec "$2" unshare -m sh -c \
    "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /usr/libexec && mkdir /usr/libexec/ipsec &&
     mount --bind $LX /usr/libexec/ipsec &&
     exec $LX/pluto --config $d/ipsec.conf --nofork --rundir $d/run --nssdir $d/nss --ipsecdir $d \
       --secretsfile $d/ipsec.secrets --logfile $RW/pluto-$1.log"
  log "pluto starting in netns $2 (pid $BG_PID)"
  poll_until 120 0.5 test -S "$d/run/pluto.ctl" || fail "pluto $1: no control socket"
}
wh() { local s=$1; shift; ip netns exec "lsw-$s" "$LX/whack" --ctlsocket "$WORK/$s/run/pluto.ctl" "$@"; }
load() { ip netns exec "lsw-$1" "$LX/addconn" --config "$WORK/$1/ipsec.conf" --ctlsocket "$WORK/$1/run/pluto.ctl" \
           --autoall >> "$RW/addconn-$1.log" 2>&1 || fail "addconn $1"; }

bg_start "$RW/xfrm-monitor.txt" ip netns exec $A ip xfrm monitor
pluto_start b $B; load b
pluto_start a $A
log "plutos up; a's connection not loaded yet"

export PATH="$LX:$PATH"   # serve finds `whack` on PATH
monitor_start $A "$RW/serve.log" serve --source kernel --interval 1 --host 127.0.0.1 --port $PORT \
  --whack "$WORK/a/run/pluto.ctl" --no-vici --no-history
poll_until 240 0.5 http_ready $A "$URL/healthz" || fail "serve did not answer within 240 s"
get() { ip netns exec $A curl -fsS --max-time 5 "$URL$1"; }
connected() { get /api/v1/ike | grep -q '"connected":true'; }
poll_until 30 0.5 connected || fail "serve does not read pluto a (see /api/v1/ike)"
log "serve answers and reads pluto a"
load a
log "a's connection loaded (auto=start initiates it)"

# pluto's Child SA is up, serve names it, and the placeholder/replaced tunnels are gone: exactly one tunnel
settled() {
  local t; t=$(get /api/v1/tunnels) || return 1
  wh a --trafficstatus 2>/dev/null | grep -q '"net", type=ESP' &&
  grep -q '"conn":"net","child":"net"' <<< "$t" && [ "$(grep -o '"id":' <<< "$t" | wc -l)" = 1 ]
}
if poll_until 150 1 settled; then echo ok > "$RW/view.result"; else echo timeout > "$RW/view.result"; fi
get /api/v1/tunnels > "$RW/tunnels.json"; get /api/v1/ike > "$RW/ike.json"
wh a --showstates > "$RW/whack-states.txt" 2>&1; wh a --trafficstatus > "$RW/whack-traffic.txt" 2>&1
get "/api/v1/events?since=0" > "$RW/events.json"
ip netns exec $A ping -c 3 -i 0.3 -W 2 -I 10.10.1.1 10.20.1.1 >> "$LOG" 2>&1 || log "ping through the tunnel failed"
log "view: $(cat "$RW/view.result")"
finish ok
