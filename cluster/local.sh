#!/usr/bin/env bash
# A two-node Ray cluster on this one machine, for development and tests:
#   cluster/local.sh start   # head on 127.0.0.1 (GCS port $RAY_PORT, dashboard/job API $DASHBOARD_PORT)
#                            # + a second node on 127.0.0.2 with its own CPUs; waits (up to
#                            # $RAY_READY_TIMEOUT s, default 120) until both nodes are alive and the job API
#                            # answers; on a failure it prints what failed (ray status, log tails), stops the
#                            # processes it started and exits non-zero
#   cluster/local.sh stop    # ray stop --force: stops EVERY Ray process of this machine
#   cluster/local.sh stop-session  # stops only this cluster: the processes of the Ray session in $RAY_TMPDIR
# Then, with the same environment (RAY_AUTH_MODE=token is exported below: Ray >= 2.59 turns on token
# authentication for local clusters, and every CLI call must use the same mode):
#   RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       python -m uda_dist.train --recipe synthetic_source_only --set launch.workers=2
# The distinct node IP is what makes Ray Train see two nodes (node_rank 0 and 1); gloo works across them.
#
# Listening sockets: Ray binds its gRPC servers (GCS, raylet, object manager, workers, agents) and its
# metrics endpoints to 127.0.0.1 only when the node IP is exactly 127.0.0.1 (or localhost/::1), else to all
# interfaces. `ray start` replaces a --node-ip-address of 127.0.0.1 by the machine's routable IP unless
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (a Ray flag that, on Linux, only keeps that replacement off and drops
# the "add another node" hint), so the head is started with it and then listens on loopback only. The
# second node cannot have that IP too (it would not be a distinct node, and `ray start --address` refuses to
# run with the flag); on 127.0.0.2 its raylet (node manager, object manager), workers and dashboard agent
# (gRPC, metrics) listen on all interfaces: Ray has no bind-address knob for them (its runtime-env agent and
# agent HTTP port bind the node IP, 127.0.0.2). Token auth guards the gRPC servers. Drivers that connect with
# ray.init(address="127.0.0.1:$RAY_PORT") need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 too (`ray job submit`
# talks to the dashboard only, and a job's driver runs on the head, which exports it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="$(pwd)/.venv/bin"
export PATH="$VENV_BIN:$PATH"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
RAY_PORT="${RAY_PORT:-6380}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
HEAD_CPUS="${HEAD_CPUS:-2}"
WORKER_CPUS="${WORKER_CPUS:-1}"
# the dashboard agents' HTTP ports (the job API submits through the head's): Ray's default is 52365 on every
# node; a taken port (another Ray instance on this machine) leaves that agent without HTTP, and then every
# `ray job submit` fails with "No available agent to submit job"
HEAD_AGENT_PORT="${HEAD_AGENT_PORT:-52365}"
WORKER_AGENT_PORT="${WORKER_AGENT_PORT:-52365}"
TMP="${RAY_TMPDIR:-/tmp/uda_dist_ray}"
READY_TIMEOUT="${RAY_READY_TIMEOUT:-120}"        # s: both nodes alive and the job API up, after `ray start`
START_TIMEOUT="${RAY_START_TIMEOUT:-300}"        # s: each `ray start` command
STOP_GRACE="${RAY_STOP_GRACE:-15}"               # s: SIGTERM, then SIGKILL (stop-session, failed start)

session_of() {  # the session name a temp dir's session_latest points to ("" if none)
  local link="$1/session_latest"
  if [[ -L "$link" ]]; then basename "$(readlink "$link")"; fi
}

# Stop the processes of one Ray session (both nodes share its name: $TMP/session_X, $TMP/node2/session_X):
# those naming the session dir on their command line (gcs_server, raylet, dashboard, monitor, log monitor)
# and all their descendants (workers, agents, job drivers: their command lines are rewritten to ray::...).
stop_session() {
  local session="$1"
  [[ -n "$session" ]] || return 0
  python - "$TMP" "$session" "$STOP_GRACE" <<'EOF'
import os, sys, psutil
tmp, session, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])
dirs = (os.path.join(tmp, session), os.path.join(tmp, "node2", session))
procs = {}
for p in psutil.process_iter(["cmdline"]):
    try:
        if p.pid != os.getpid() and any(d in a for a in (p.info["cmdline"] or []) for d in dirs):
            procs[p.pid] = p
            for c in p.children(recursive=True):
                procs[c.pid] = c
    except psutil.Error:
        pass
for p in procs.values():
    try:
        p.terminate()
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
psutil.wait_procs(alive, timeout=grace)
print(f"local.sh: stopped {len(procs)} processes of Ray session {session} ({len(alive)} needed SIGKILL)")
EOF
}

report_failure() {  # what failed: ray status and the tails of the GCS/raylet/dashboard logs of both nodes
  echo "local.sh: $1" >&2
  echo "---- ray status --address=127.0.0.1:$RAY_PORT" >&2
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 timeout 60 ray status --address="127.0.0.1:$RAY_PORT" >&2 2>&1 || echo "(ray status failed: rc=$?)" >&2
  local logs f
  for logs in "$TMP/session_latest/logs" "$TMP/node2/session_latest/logs"; do
    [[ -d "$logs" ]] || continue
    for f in gcs_server.out gcs_server.err raylet.out raylet.err dashboard.log dashboard.err \
             dashboard_agent.log runtime_env_agent.log; do
      if [[ -s "$logs/$f" ]]; then
        echo "---- tail -n 25 $logs/$f (without the periodic stats dumps)" >&2
        grep -v -e '^\[state-dump\]' -e '^[[:space:]]' -e 'Event stats:' -e '^Global stats' \
          -e '^Queueing time' -e '^Execution time' "$logs/$f" | tail -n 25 >&2 || true
      fi
    done
  done
  echo "local.sh: $1" >&2
}

fail_start() {  # report, stop what this start started (only the new session, not other Ray processes), exit 1
  report_failure "$1"
  local session
  session="$(session_of "$TMP")"
  if [[ -n "$session" && "$session" != "$OLD_SESSION" ]]; then
    stop_session "$session" >&2 || true
  fi
  exit 1
}

wait_ready() {  # until 2 alive nodes and the job API answers, via the dashboard (token auth as exported)
  python - "http://127.0.0.1:$DASHBOARD_PORT" "$READY_TIMEOUT" <<'EOF'
import sys, time
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_nodes
url, timeout = sys.argv[1], float(sys.argv[2])
deadline, last = time.monotonic() + timeout, "no answer yet"
while True:
    try:
        alive = list_nodes(address=url, filters=[("state", "=", "ALIVE")], timeout=30, raise_on_missing_output=False)
        ips = sorted(n.node_ip for n in alive)
        if len(ips) >= 2:
            JobSubmissionClient(url).list_jobs()
            print(f"local.sh: cluster ready: {len(ips)} alive nodes {ips}")
            sys.exit(0)
        last = f"{len(ips)} alive nodes {ips}"
    except Exception as e:  # dashboard or its modules not up yet
        last = f"{type(e).__name__}: {str(e)[:300]}"
    if time.monotonic() >= deadline:
        print(f"local.sh: not ready after {timeout:.0f} s: {last}", file=sys.stderr)
        sys.exit(1)
    time.sleep(1)
EOF
}

case "${1:-}" in
  start)
    mkdir -p "$TMP"
    OLD_SESSION="$(session_of "$TMP")"
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: keep the node IP 127.0.0.1 (see above), so that all the head's
    # servers listen on loopback only; its processes (workers, job drivers) inherit it
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 timeout "$START_TIMEOUT" \
      ray start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" --num-cpus="$HEAD_CPUS" \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
      --dashboard-agent-listen-port="$HEAD_AGENT_PORT" --temp-dir="$TMP" --disable-usage-stats \
      || fail_start "ray start --head failed (rc=$?)"
    # The head's GCS listens on 127.0.0.1 only, and `ray start --address=127.0.0.1:...` would replace that by
    # the routable IP (where nothing listens now): its IPv4-mapped IPv6 spelling is the same socket, kept as is.
    # its own temp dir: two nodes sharing one would delete each other's runtime-env files (a submitted job's
    # working_dir vanished under its running driver when they shared it)
    timeout "$START_TIMEOUT" \
      ray start --address="[::ffff:127.0.0.1]:$RAY_PORT" --node-ip-address=127.0.0.2 --num-cpus="$WORKER_CPUS" \
      --dashboard-agent-listen-port="$WORKER_AGENT_PORT" --temp-dir="$TMP/node2" --disable-usage-stats \
      || fail_start "ray start of the second node (127.0.0.2) failed (rc=$?)"
    wait_ready || fail_start "the cluster did not report 2 alive nodes and a job API within $READY_TIMEOUT s"
    echo "dashboard and job API: http://127.0.0.1:$DASHBOARD_PORT (export RAY_AUTH_MODE=$RAY_AUTH_MODE)"
    ;;
  stop)
    ray stop --force
    ;;
  stop-session)
    stop_session "$(session_of "$TMP")"
    ;;
  *)
    echo "usage: $0 start|stop|stop-session" >&2
    exit 2
    ;;
esac
