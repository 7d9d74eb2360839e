#!/usr/bin/env bash
# A two-node Ray cluster on this one machine, for development and tests:
#   cluster/local.sh start   # head on 127.0.0.1 (GCS port $RAY_PORT, dashboard/job API $DASHBOARD_PORT)
#                            # + a second node on 127.0.0.2 with its own CPUs
#   cluster/local.sh stop    # ray stop --force: stops EVERY Ray process of this machine
# Then, with the same environment (RAY_AUTH_MODE=token is exported below: Ray >= 2.59 turns on token
# authentication for local clusters, and every CLI call must use the same mode):
#   RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       python -m uda_dist.train --recipe synthetic_source_only --set launch.workers=2
# The distinct node IP is what makes Ray Train see two nodes (node_rank 0 and 1); gloo works across them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="$(pwd)/.venv/bin"
export PATH="$VENV_BIN:$PATH"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
RAY_PORT="${RAY_PORT:-6380}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
HEAD_CPUS="${HEAD_CPUS:-2}"
WORKER_CPUS="${WORKER_CPUS:-1}"
TMP="${RAY_TMPDIR:-/tmp/uda_dist_ray}"

case "${1:-}" in
  start)
    ray start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" --num-cpus="$HEAD_CPUS" \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
      --temp-dir="$TMP" --disable-usage-stats
    # its own temp dir: two nodes sharing one would delete each other's runtime-env files (a submitted job's
    # working_dir vanished under its running driver when they shared it)
    ray start --address="127.0.0.1:$RAY_PORT" --node-ip-address=127.0.0.2 --num-cpus="$WORKER_CPUS" \
      --temp-dir="$TMP/node2" --disable-usage-stats
    echo "dashboard and job API: http://127.0.0.1:$DASHBOARD_PORT (export RAY_AUTH_MODE=$RAY_AUTH_MODE)"
    ;;
  stop)
    ray stop --force
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
