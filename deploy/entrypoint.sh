#!/usr/bin/env bash
# Start tritonserver with only warmup_helper loaded, warm the models of the
# plan file on localhost, then serve until the server exits or a signal
# stops it.
#
# Whatever goes wrong before the models are warm (a bad plan file, a server
# that does not come up, a model that fails to warm) stops the server and
# exits non-zero, so that Kubernetes restarts the container instead of
# sending traffic to a cold replica. Readiness itself is the probes' job
# (triton-warmup-states --wait-ready --plan, deploy/kubernetes/).
#
# Settings, from the environment:
#   MODEL_REPOSITORY   repository to serve; holds warmup_helper
#   WARMUP_PLAN        plan file (YAML or JSON, see plans/example.yaml)
#   HTTP_PORT, GRPC_PORT, METRICS_PORT
#   STARTUP_TIMEOUT_S  seconds for the server to get warmup_helper READY
#   WARMUP_TIMEOUT_S   seconds for the whole warmup
#   WARMUP_ARGS        more triton-warmup flags, e.g. "-H admin-key=secret"
#   OMP_NUM_THREADS    kept when set; else the libtorch models' intra-op count
#                      where OpenMP would start threads at another
#                      (triton-warmup-threads)
#   TRITONSERVER       the server command; NVIDIA's image has tritonserver on
#                      PATH (the tests use "python -m triton_warmup.embedded")
# The clients are the triton_warmup package's commands (triton-warmup,
# triton-warmup-states, triton-warmup-check-plan), found on PATH.
# Arguments go to tritonserver unchanged (--log-verbose=1, --exit-timeout-secs=...).
#
# Exit codes: 0 the server stopped cleanly after a signal; 1 the server did
# not come up, a model failed to warm or the server exited; 2 a bad plan.
set -euo pipefail

readonly MODEL_REPOSITORY=${MODEL_REPOSITORY:-/opt/warmup/model_repository}
readonly WARMUP_PLAN=${WARMUP_PLAN:-/opt/warmup/plans/example.yaml}
readonly HTTP_PORT=${HTTP_PORT:-8000}
readonly GRPC_PORT=${GRPC_PORT:-8001}
readonly METRICS_PORT=${METRICS_PORT:-8002}
readonly STARTUP_TIMEOUT_S=${STARTUP_TIMEOUT_S:-120}
readonly WARMUP_TIMEOUT_S=${WARMUP_TIMEOUT_S:-900}
read -r -a server_command <<< "${TRITONSERVER:-tritonserver}"
read -r -a warmup_args <<< "${WARMUP_ARGS:-}"

server_pid=""
server_status=""
client_pid=""
stopping=0

log() {
  printf 'entrypoint: %s\n' "$*" >&2
}

# shellcheck disable=SC2329 # called by the trap below
on_signal() {
  stopping=1
  log "signal received: stopping tritonserver"
  if [[ -n "$client_pid" ]]; then
    kill -TERM "$client_pid" 2>/dev/null || true
  fi
  kill -TERM "$server_pid" 2>/dev/null || true
}

# Wait for tritonserver to exit and keep its exit code in server_status.
# A trap interrupts `wait`; waiting again resumes it.
wait_for_server() {
  while [[ -z "$server_status" ]]; do
    local status=0
    wait "$server_pid" || status=$?
    if ! kill -0 "$server_pid" 2>/dev/null; then
      server_status=$status
    fi
  done
}

# Run a client command in the background and wait for it or for the server,
# whichever ends first: a server that dies mid-warmup ends the wait at once,
# and a signal is handled at once instead of after the client ends.
run_beside_server() {
  "$@" &
  client_pid=$!
  local finished="" status=0
  while [[ -z "${finished:-}" ]]; do
    status=0
    wait -n -p finished "$server_pid" "$client_pid" || status=$?
    # 127: neither is a child any more (cannot happen while both run).
    if [[ -z "${finished:-}" && $status -eq 127 ]]; then
      log "lost track of tritonserver and $1"
      return 1
    fi
  done
  if [[ "$finished" == "$server_pid" ]]; then
    server_status=$status
    kill -TERM "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
    client_pid=""
    log "tritonserver exited with code $status"
    return 1
  fi
  client_pid=""
  return "$status"
}

# Stop the server (unless it has exited) and exit with the given code.
stop_and_exit() {
  local code=$1
  kill -TERM "$server_pid" 2>/dev/null || true
  wait_for_server
  log "tritonserver stopped (exit code $server_status)"
  exit "$code"
}

# After a step failed: after a signal, stop quietly; else say why, stop and
# exit 1. $1 says when (for a server that exited), $2 what went wrong otherwise.
step_failed() {
  ((stopping)) && stop_and_exit 0
  if [[ -n "$server_status" ]]; then
    log "FAILED: tritonserver exited (code $server_status) $1"
  else
    log "FAILED: $2"
  fi
  stop_and_exit 1
}

# A bad plan is refused before a server starts.
triton-warmup-check-plan "$WARMUP_PLAN" || exit 2

# The libtorch models' warmup and their requests at one OpenMP thread count,
# or oneDNN makes warmed primitives again at the first request
# (docs/warm-stays-warm.md). A count the user set is kept.
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
  openmp_threads=$(triton-warmup-threads "$MODEL_REPOSITORY")
  if [[ -n "$openmp_threads" ]]; then
    export OMP_NUM_THREADS=$openmp_threads
  fi
fi

trap on_signal TERM INT
log "starting ${server_command[*]} on $MODEL_REPOSITORY"
"${server_command[@]}" \
  --model-repository="$MODEL_REPOSITORY" \
  --model-control-mode=explicit \
  --load-model=warmup_helper \
  --http-port="$HTTP_PORT" \
  --grpc-port="$GRPC_PORT" \
  --metrics-port="$METRICS_PORT" \
  "$@" &
server_pid=$!

if ! run_beside_server triton-warmup-states -u "localhost:$HTTP_PORT" \
  --wait-ready warmup_helper --timeout "$STARTUP_TIMEOUT_S"; then
  step_failed "before warmup_helper was READY" "warmup_helper was not READY within ${STARTUP_TIMEOUT_S} s"
fi

if ! run_beside_server triton-warmup -u "localhost:$HTTP_PORT" --plan "$WARMUP_PLAN" \
  --timeout "$WARMUP_TIMEOUT_S" "${warmup_args[@]}"; then
  step_failed "during the warmup of $WARMUP_PLAN" \
    "the warmup of $WARMUP_PLAN did not finish; stopping so that the pod restarts"
fi

log "READY: every model of $WARMUP_PLAN is warm; serving"
wait_for_server
if ((stopping)); then
  log "tritonserver stopped (exit code $server_status)"
  exit "$server_status"
fi
log "FAILED: tritonserver exited by itself with code $server_status"
exit 1
