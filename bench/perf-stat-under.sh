#!/usr/bin/env bash
# Runs a command and counts its CPU time and context switches with `perf stat` until it
# exits: a wrapper for the bench's --relay-under and --agent-under, e.g.
#
#   target/release/outpost-bench a --no-peers --rounds 1 --calls 3000 \
#     --targets "outpost → HTTP" --relay-under "bench/perf-stat-under.sh relay.stat"
#
# `perf stat` itself as the wrapper would not pass the bench's SIGTERM on, and the relay
# or agent would outlive the run. This script passes it on once perf has written its
# counts to the file named first. perf attaches just after the command starts.
set -u
out=$1
shift
"$@" &
pid=$!
perf stat -e task-clock,context-switches,cpu-migrations -p "$pid" -o "$out" &
perf_pid=$!
stop() {
  kill -INT "$perf_pid" 2>/dev/null
  wait "$perf_pid" 2>/dev/null
  kill -TERM "$pid" 2>/dev/null
}
trap stop TERM INT
wait "$pid"
status=$?
# A trapped signal ends the first wait early: wait for the command itself.
if kill -0 "$pid" 2>/dev/null; then
  wait "$pid"
  status=$?
fi
wait "$perf_pid" 2>/dev/null
exit "$status"
