#!/usr/bin/env bash
# History across a kill -9 (issue 13): one strongSwan tunnel hist-a <-> hist-b rekeying every ~10 s under ping
# traffic, `monitor serve` in hist-a with its history store in $WORK/state.
#
#   1. serve sees >= 1 rekey; REST tunnels and /healthz saved (before-*.json); serve is killed with SIGKILL;
#   2. the tunnel rekeys while nobody watches (a new outbound SPI appears); serve restarts on the same store;
#      after its first dumps REST, /healthz and the events since the old seq are saved (after-*.json);
#   3. the peer deletes the IKE SA and initiates it again: one flap; its history is saved (history.json), serve
#      is stopped cleanly and the database copied out (history.sqlite3) for the host to check.
# Meanwhile every SA's keys are polled into xfrm-keys.txt: scenarios/history.py looks for them in every output.
# Times of each step are in scenario.log ("killed", "restarted", "peer terminates", "re-established").
source "$(dirname "$0")/lib.sh"
scenario_begin "$@"

A=hist-a
B=hist-b
PORT=8788
URL="http://127.0.0.1:$PORT"
STATE="$WORK/state"
scenario_cleanup() {
  ip netns del "$A" 2>/dev/null
  ip netns del "$B" 2>/dev/null
}

warm_crypto
two_gateways "$A" "$B" 10.30.1.1 10.40.1.1
log "network up"

mkdir -p "$STATE"
cat > "$WORK/serve.toml" <<EOT
[health]
idle_after = 60
expiring_margin = 3
EOT
serve_start() {
  monitor_start "$A" "$RW/serve-$1.log" serve --source kernel --interval 1 --host 127.0.0.1 --port "$PORT" \
    --state-dir "$STATE" --config "$WORK/serve.toml"
  SERVE_PID=$BG_PID
}
serve_start 1   # Python's start-up overlaps charon's

write_conf() {  # write_conf SIDE LOCAL REMOTE LOCAL_TS REMOTE_TS START_ACTION REKEY_TIME
  local s=$1
  strongswan_conf "$s" "  delete_rekeyed_delay = 2
  retransmit_tries = 2
  retransmit_timeout = 1.0"
  {
    echo "connections {"
    psk_conn tun net "$2" "$3" "$4" "$5" "$6" "" "        rekey_time = $7
        life_time = 40s
        rand_time = 1s"
    cat <<EOT
}
secrets {
  ike-tun {
    id-a = 198.51.100.1
    id-b = 198.51.100.2
    secret = "monitor-vm-history-psk"
  }
}
EOT
  } > "$WORK/$s/swanctl.conf"
}
write_conf a 198.51.100.1 198.51.100.2 10.30.1.1/32 10.40.1.1/32 start 10s
write_conf b 198.51.100.2 198.51.100.1 10.40.1.1/32 10.30.1.1/32 none 30s
charon_up b "$B"
charon_up a "$A"

installed() { sw "$WORK/a.vici" --list-sas 2>/dev/null | grep -q 'INSTALLED'; }
out_spis() {
  ip -n "$A" xfrm state 2>/dev/null | awk '
    /^src /{out = ($2 == "198.51.100.1" && $4 == "198.51.100.2"); next}
    out && $1 == "proto" && $2 == "esp" {print $4; out = 0}' | sort | tr '\n' ' '
}
# every SA's keys, every second, for the host's key check (scenarios/history.py; the file is redacted after it)
bg_start "$RW/key-poll.log" sh -c "while :; do ip -n $A xfrm state >> '$RW/xfrm-keys.txt'; sleep 1; done"
poll_until 60 0.5 installed || fail "CHILD_SA not established within 60 s"
log "CHILD_SA established: out SPI $(out_spis)"
bg_start "$RW/ping.log" ip netns exec "$A" ping -I 10.30.1.1 -i 0.2 -W 1 10.40.1.1

get() { ip netns exec "$A" curl -fsS --max-time 5 "$URL$1"; }
tunnel_field() {  # tunnel_field JQ: the only tunnel's field (empty if none)
  get /api/v1/tunnels 2>/dev/null | jq -r ".tunnels[0] | $1 // empty" 2>/dev/null
}
poll_until 240 1 http_ready "$A" "$URL/healthz" || fail "serve 1 did not answer within 240 s ($(tail -n 3 "$RW/serve-1.log"))"
log "serve 1 ready"
rekeyed() { [ "$(tunnel_field .rekeys)" -ge 1 ] 2>/dev/null; }
poll_until 90 1 rekeyed || fail "serve 1 counted no rekey within 90 s"

# ---------------------------------------------------------------- 1. kill -9
get /api/v1/tunnels > "$RW/before-tunnels.json" || fail "GET tunnels"
get /healthz > "$RW/before-healthz.json" || fail "GET healthz"
sleep 1   # one flush interval (0.5 s) of the history writer after what was just read: the read values are stored
kill -9 "$SERVE_PID"
wait "$SERVE_PID" 2>/dev/null
SPIS_AT_KILL=$(out_spis)
log "killed serve 1 with SIGKILL (out SPIs $SPIS_AT_KILL)"

# ---------------------------------------------------------------- 2. a rekey while nobody watches, restart
rekeyed_unseen() { s=$(out_spis); [ -n "$s" ] && [ "$s" != "$SPIS_AT_KILL" ]; }
poll_until 60 0.5 rekeyed_unseen || fail "no rekey within 60 s of the kill"
poll_until 20 0.5 sh -c "[ \$(ip -n $A xfrm state | grep -c 'proto esp') -le 2 ]" \
  || log "old SAs still present after 20 s"
log "rekeyed while stopped: out SPIs $(out_spis)"
serve_start 2
log "restarted serve (pid $SERVE_PID)"
poll_until 240 1 http_ready "$A" "$URL/healthz" || fail "serve 2 did not answer within 240 s ($(tail -n 3 "$RW/serve-2.log"))"
loaded() { [ -n "$(tunnel_field .id)" ]; }
poll_until 30 0.5 loaded || fail "serve 2 shows no tunnel"
log "serve 2 ready"
SEQ0=$(jq -r .seq "$RW/before-healthz.json")
get /api/v1/tunnels > "$RW/after-tunnels.json" || fail "GET tunnels after"
get /healthz > "$RW/after-healthz.json" || fail "GET healthz after"
get "/api/v1/events?since=$SEQ0&limit=10000" > "$RW/after-events.json" || fail "GET events after"

# ---------------------------------------------------------------- 3. the peer deletes and re-establishes
TID=$(jq -r '.tunnels[0].id' "$RW/before-tunnels.json")
state_of() { get "/api/v1/tunnels/$TID" 2>/dev/null | jq -r '.tunnel.state // empty' 2>/dev/null; }
log "peer terminates"
sw "$WORK/b.vici" --terminate --ike tun >> "$RW/swanctl-terminate.log" || fail "terminate on b"
is_down() { [ "$(state_of)" = down ]; }
poll_until 30 0.5 is_down || fail "serve 2 never showed the tunnel down"
log "monitor shows down"
sw "$WORK/b.vici" --initiate --child net >> "$RW/swanctl-initiate.log" || fail "initiate on b"
is_up() { s=$(state_of); [ -n "$s" ] && [ "$s" != down ]; }
poll_until 60 0.5 is_up || fail "serve 2 never showed $TID up again: $(get /api/v1/tunnels | jq -c '[.tunnels[] | [.id, .state]]')"
log "re-established"
sleep 1   # one history flush
get "/api/v1/tunnels/$TID/history?from=1h" > "$RW/history.json" || fail "GET history"
get "/api/v1/events?since=0&limit=10000" > "$RW/final-events.json" || fail "GET events final"
stop_pid "$SERVE_PID" INT 20
wait "$SERVE_PID" 2>/dev/null
log "serve 2 stopped"
cp "$STATE/history.sqlite3" "$RW/history.sqlite3" || fail "copy the database"
finish ok
