#!/usr/bin/env bash
# Signals of issue 12 on a real kernel with real strongSwan: NAT-T encapsulation, sequence numbers and
# namespace hints. One tunnel sig-a <-> sig-b with `encap = yes` (strongSwan then UDP-encapsulates ESP as if
# behind a NAT: the SAs carry XFRMA_ENCAP espinudp 4500/4500), ping traffic through it; `monitor serve` in sig-a
# with `[health] expected_remote_ranges` naming a device range no strongSwan policy covers; a block policy in
# sig-a that ping hits (the kernel counts XfrmOutPolBlock in /proc/net/xfrm_stat).
# A second connection (`tun6`) runs over IPv6 outer addresses (2001:db8:51::1 <-> ::2, no encap) and carries
# IPv6 (2001:db8:a::1 <-> 2001:db8:b::1): ping6 through it too.
# At a quiet point (ping stopped, the monitor's packet counts equal to the kernel's twice in a row) REST and
# `ip -s xfrm state` are saved together: sig-tunnels.json, sig-xfrm-state.txt; then /api/v1/netns once the
# hints show: sig-netns.json. The host test (test_signals_vm.py) parses the kernel's text itself.
source "$(dirname "$0")/lib.sh"
scenario_begin "$@"

A=sig-a
B=sig-b
PORT=8789
URL="http://127.0.0.1:$PORT"
scenario_cleanup() {
  ip netns del "$A" 2>/dev/null
  ip netns del "$B" 2>/dev/null
}

warm_crypto
two_gateways "$A" "$B" 10.50.1.1 10.60.1.1
ip -n "$A" route add 192.0.2.99/32 via 198.51.100.2 dev gw0 || fail "route to the blocked address"
# IPv6 outer and inner addresses (nodad: usable at once), routed over the same veth
ip -n "$A" addr add 2001:db8:51::1/64 dev gw0 nodad || fail "IPv6 outer a"
ip -n "$B" addr add 2001:db8:51::2/64 dev gw0 nodad || fail "IPv6 outer b"
ip -n "$A" addr add 2001:db8:a::1/128 dev lo nodad
ip -n "$B" addr add 2001:db8:b::1/128 dev lo nodad
ip -n "$A" -6 route add 2001:db8:b::1/128 via 2001:db8:51::2 dev gw0 src 2001:db8:a::1 || fail "IPv6 route a"
ip -n "$B" -6 route add 2001:db8:a::1/128 via 2001:db8:51::1 dev gw0 src 2001:db8:b::1 || fail "IPv6 route b"
log "network up"

cat > "$WORK/serve.toml" <<EOT
interval = 1
[health]
expected_remote_ranges = ["10.60.0.0/16", "100.64.0.0/10"]
EOT
monitor_start "$A" "$RW/serve.log" serve --source kernel --host 127.0.0.1 --port "$PORT" --no-history \
  --config "$WORK/serve.toml"
SERVE_PID=$BG_PID

write_conf() {  # write_conf SIDE LOCAL REMOTE LOCAL_TS REMOTE_TS START_ACTION LOCAL6 REMOTE6 LOCAL_TS6 REMOTE_TS6
  local s=$1
  strongswan_conf "$s" "  retransmit_tries = 3
  retransmit_timeout = 2.0"
  {
    echo "connections {"
    psk_conn tun net "$2" "$3" "$4" "$5" "$6" "    encap = yes" "        rekey_time = 600s"
    psk_conn tun6 net6 "$7" "$8" "$9" "${10}" "$6" "" "        rekey_time = 600s"
    cat <<EOT
}
secrets {
  ike-tun {
    id-a = 198.51.100.1
    id-b = 198.51.100.2
    secret = "monitor-vm-signals-psk"
  }
  ike-tun6 {
    id-a = 2001:db8:51::1
    id-b = 2001:db8:51::2
    secret = "monitor-vm-signals-psk6"
  }
}
EOT
  } > "$WORK/$s/swanctl.conf"
}
write_conf a 198.51.100.1 198.51.100.2 10.50.1.1/32 10.60.1.1/32 start \
  2001:db8:51::1 2001:db8:51::2 2001:db8:a::1/128 2001:db8:b::1/128
write_conf b 198.51.100.2 198.51.100.1 10.60.1.1/32 10.50.1.1/32 none \
  2001:db8:51::2 2001:db8:51::1 2001:db8:b::1/128 2001:db8:a::1/128
charon_up b "$B"
charon_up a "$A"
installed() { [ "$(sw "$WORK/a.vici" --list-sas 2>/dev/null | grep -c 'INSTALLED')" -ge 2 ]; }
poll_until 90 0.5 installed || fail "both CHILD_SAs (IPv4, IPv6) not established within 90 s"
log "CHILD_SAs established"
sw "$WORK/a.vici" --list-sas > "$RW/swanctl-sas.txt" 2>&1
ip -n "$A" xfrm policy add src 10.50.1.1/32 dst 192.0.2.99/32 dir out action block priority 10 \
  || fail "block policy"

get() { ip netns exec "$A" curl -fsS --max-time 5 "$URL$1"; }
poll_until 240 1 http_ready "$A" "$URL/healthz" || fail "serve did not answer within 240 s ($(tail -n 3 "$RW/serve.log"))"
log "serve ready"
# the first xfrm_stat reading is the baseline: traffic into the block policy only after it
has_stat() { get /api/v1/netns 2>/dev/null | jq -e '.netns[0].xfrm_stat != null' >/dev/null 2>&1; }
poll_until 30 0.5 has_stat || fail "no xfrm_stat reading"
ip netns exec "$A" ping -c 20 -i 0.2 -W 1 -I 10.50.1.1 10.60.1.1 > "$RW/ping-tunnel.log" 2>&1 \
  || log "ping through the tunnel: $(tail -n 2 "$RW/ping-tunnel.log" | tr '\n' ' ')"
ip netns exec "$A" ping -6 -c 10 -i 0.2 -W 1 -I 2001:db8:a::1 2001:db8:b::1 > "$RW/ping6-tunnel.log" 2>&1 \
  || log "ping6 through the IPv6 tunnel: $(tail -n 2 "$RW/ping6-tunnel.log" | tr '\n' ' ')"
ip netns exec "$A" ping -c 3 -i 0.2 -W 1 -I 10.50.1.1 192.0.2.99 > "$RW/ping-blocked.log" 2>&1
log "pings done"

# a quiet point: the monitor's packet counts equal the kernel's, twice in a row
kernel_packets() {
  ip -n "$A" -s xfrm state | awk '/\(bytes\), .*\(packets\)/ {gsub(/\(packets\)/, "", $2); s += $2} END {print s+0}'
}
monitor_packets() { get /api/v1/tunnels 2>/dev/null | jq '[.tunnels[].sas[].packets] | add // 0' 2>/dev/null; }
agree() { [ "$(kernel_packets)" = "$(monitor_packets)" ] && sleep 1.5 && [ "$(kernel_packets)" = "$(monitor_packets)" ]; }
poll_until 30 0.5 agree || log "monitor and kernel packet counts never agreed: $(kernel_packets) vs $(monitor_packets)"
get /api/v1/tunnels > "$RW/sig-tunnels.json" || fail "GET tunnels"
ip -n "$A" -s xfrm state > "$RW/sig-xfrm-state.txt"
ip -n "$A" xfrm policy > "$RW/sig-xfrm-policy.txt"
ip netns exec "$A" cat /proc/net/xfrm_stat > "$RW/sig-xfrm-stat.txt"
hinted() { get /api/v1/netns 2>/dev/null | jq -e '[.netns[].hints[].code] | index("XfrmOutPolBlock")' >/dev/null 2>&1; }
poll_until 30 0.5 hinted || log "no XfrmOutPolBlock hint within 30 s"
get /api/v1/netns > "$RW/sig-netns.json" || fail "GET netns"
stop_pid "$SERVE_PID" INT 20
finish ok
