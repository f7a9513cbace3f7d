#!/usr/bin/env bash
# psd consuming NSQ, end to end on one machine: nsqlookupd, nsqd, psd on its embedded store,
# three messages published, their sum read back. Everything it starts it stops on exit.
# Run from the repository after `make deps nsq`:   bash docs/nsq-walkthrough.sh
# The ports and the psd port can be moved with the variables below (the tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
LOOKUPD_TCP=${LOOKUPD_TCP:-4160} LOOKUPD_HTTP=${LOOKUPD_HTTP:-4161}
NSQD_TCP=${NSQD_TCP:-4150} NSQD_HTTP=${NSQD_HTTP:-4151} PSD_PORT=${PSD_PORT:-1155}
work=$(mktemp -d /tmp/psd-nsq-XXXXXX)   # short: the embedded store's unix socket lives here
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$work"' EXIT

wait_for() {  # wait_for URL TEXT: until the answer at URL contains TEXT (at most 30 s)
  for _ in $(seq 300); do
    curl -s "$1" 2>/dev/null | grep -q "$2" && return 0
    sleep 0.1
  done
  echo "timed out waiting for $2 at $1" >&2
  return 1
}

.tools/bin/nsqlookupd --tcp-address=127.0.0.1:$LOOKUPD_TCP --http-address=127.0.0.1:$LOOKUPD_HTTP \
    --broadcast-address=127.0.0.1 >"$work/nsqlookupd.log" 2>&1 &
mkdir -p "$work/nsqd"   # nsqd needs its --data-path to exist
.tools/bin/nsqd --data-path="$work/nsqd" --tcp-address=127.0.0.1:$NSQD_TCP --http-address=127.0.0.1:$NSQD_HTTP \
    --broadcast-address=127.0.0.1 --lookupd-tcp-address=127.0.0.1:$LOOKUPD_TCP >"$work/nsqd.log" 2>&1 &
wait_for "http://127.0.0.1:$NSQD_HTTP/ping" OK
curl -s -XPOST "http://127.0.0.1:$NSQD_HTTP/topic/create?topic=psd"
wait_for "http://127.0.0.1:$LOOKUPD_HTTP/lookup?topic=psd" "\"tcp_port\":$NSQD_TCP"

.venv/bin/twistd -n --pidfile= psd --lookupd "http://127.0.0.1:$LOOKUPD_HTTP" --data-dir "$work/psd" \
    --http "tcp:$PSD_PORT:interface=127.0.0.1" >"$work/psd.log" 2>&1 &
wait_for "http://127.0.0.1:$PSD_PORT/health" '"state":"subscribed"'

pub() { curl -s -d "$1" "http://127.0.0.1:$NSQD_HTTP/pub?topic=psd"; echo; }
pub '{"uid": 1, "atid": 3, "metric": "points", "value": 10, "ts": 1458061005}'
pub '{"command": "metric", "metric": {"steps": 11, "points": 3, "activity_type_id": 3, "timestamp": 1458061005, "user_id": 1}}'
pub 'not json'   # goes to the psd_dead topic, with the reason
wait_for "http://127.0.0.1:$NSQD_HTTP/stats?format=json&topic=psd_dead" '"message_count":1'

sum="http://127.0.0.1:$PSD_PORT/v1/sum?uids=1&metrics=points,steps&atid=3&from=1458061005&to=1458061005"
wait_for "$sum" '"points":13'
curl -s "$sum"; echo
