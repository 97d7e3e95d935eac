#!/usr/bin/env bash
# `make demo`: start a server on a scratch database, run a multi-phase job under --watch,
# cancel one, retry it, and stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBWIRE=.venv/bin/jobwire
PORT=${JOBWIRE_DEMO_PORT:-50061}
export JOBWIRE_TARGET=127.0.0.1:$PORT
scratch=$(mktemp -d)
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$scratch"' EXIT

$JOBWIRE serve --listen "$JOBWIRE_TARGET" --http-listen off --db "$scratch/demo.db" --log-level warning &
server=$!
for _ in $(seq 100); do  # wait until it answers (a gRPC call, no fixed sleep)
  $JOBWIRE stats >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "server failed to start"; exit 1; }
  sleep 0.1
done

echo "== a three-phase job, watched until it ends"
$JOBWIRE enqueue sleep --payload '{"seconds": 3, "phases": 3}' --label demo=yes --watch

echo; echo "== a job scheduled for later, then cancelled"
id=$($JOBWIRE enqueue sleep --payload '{"seconds": 1, "phases": 2}' --delay 3600 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["id"])')
$JOBWIRE cancel "$id" --reason "changed my mind"

echo; echo "== the cancelled job retried and watched to the end"
$JOBWIRE retry "$id"
$JOBWIRE watch "$id"

echo; echo "== queues"
$JOBWIRE stats
