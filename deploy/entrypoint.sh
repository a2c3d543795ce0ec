#!/usr/bin/env bash
# The image's entrypoint: tritonserver on the image's model repository with
# only warmup_helper loaded. The helper warms its start plan by itself once
# the server's start-up is over (warm_on_start in its config.pbtxt, which the
# Dockerfile sets; docs/warm-on-start.md), so this script sends no warmup,
# checks no plan (a bad one fails the helper's load, and tritonserver exits
# non-zero) and waits for nothing. Readiness is the probes' job
# (triton-warmup-states --wait-ready --plan, deploy/kubernetes/).
#
# What it adds to a bare tritonserver command:
#   - OMP_NUM_THREADS, when you set none: the libtorch models' intra-op
#     thread count where OpenMP would start threads at another, and the
#     smallest of their counts where they disagree (triton-warmup-threads).
#     oneDNN keeps warmed shapes warm only when the two agree, and a model
#     whose thread runs more OpenMP threads than its count waits for a
#     sleeping one after every idle pause (docs/warm-stays-warm.md); no
#     tritonserver flag can set its own environment.
#   - --disable-auto-complete-config, when no model of the repository needs
#     Triton's config auto-complete and your arguments choose nothing about
#     it (triton-warmup-auto-complete): Triton's Python backend sleeps a
#     second per Python model load for it, the helper's included, and on a
#     restart every model waits for the helper (docs/scaling.md).
#   - the fixed flags: --model-repository, --model-control-mode=explicit,
#     --load-model=warmup_helper and the three ports; your arguments follow
#     them unchanged (--log-verbose=1, --exit-timeout-secs=..., ...).
# Then it execs tritonserver, so SIGTERM reaches Triton itself and the
# container's exit code is Triton's.
#
# Where you own only the server's flags (a managed platform), stock
# tritonserver with those flags warms the same way, by itself; only
# OMP_NUM_THREADS is then yours to set, where the platform lets you.
#
# Settings, from the environment:
#   MODEL_REPOSITORY   repository to serve; holds warmup_helper, installed
#                      with triton-warmup-install-helper --warm-on-start
#   HTTP_PORT, GRPC_PORT, METRICS_PORT
#   OMP_NUM_THREADS    kept when set
#   AUTO_COMPLETE      auto (default) or keep: keep leaves Triton's default
#   TRITONSERVER       the server command; NVIDIA's image has tritonserver on
#                      PATH (the tests use "python -m triton_warmup.embedded")
set -euo pipefail

readonly MODEL_REPOSITORY=${MODEL_REPOSITORY:-/opt/warmup/model_repository}
readonly HTTP_PORT=${HTTP_PORT:-8000}
readonly GRPC_PORT=${GRPC_PORT:-8001}
readonly METRICS_PORT=${METRICS_PORT:-8002}
readonly AUTO_COMPLETE=${AUTO_COMPLETE:-auto}
read -r -a server_command <<< "${TRITONSERVER:-tritonserver}"

if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
  # Prints nothing when OpenMP's default already matches; says why on stderr.
  openmp_threads=$(triton-warmup-threads "$MODEL_REPOSITORY")
  if [[ -n "$openmp_threads" ]]; then
    export OMP_NUM_THREADS=$openmp_threads
  fi
fi

auto_complete_flags=()
case "$AUTO_COMPLETE" in
  auto)
    # Prints the flag or nothing, given your arguments; says why on stderr.
    read -r -a auto_complete_flags <<< "$(triton-warmup-auto-complete "$MODEL_REPOSITORY" -- "$@")"
    ;;
  keep) ;;
  *)
    printf 'entrypoint: AUTO_COMPLETE must be auto or keep, not %s\n' "$AUTO_COMPLETE" >&2
    exit 2
    ;;
esac

printf 'entrypoint: exec %s on %s (OMP_NUM_THREADS=%s%s)\n' \
  "${server_command[*]}" "$MODEL_REPOSITORY" "${OMP_NUM_THREADS:-unset}" \
  "${auto_complete_flags[*]:+, ${auto_complete_flags[*]}}" >&2
exec "${server_command[@]}" \
  --model-repository="$MODEL_REPOSITORY" \
  --model-control-mode=explicit \
  --load-model=warmup_helper \
  --http-port="$HTTP_PORT" \
  --grpc-port="$GRPC_PORT" \
  --metrics-port="$METRICS_PORT" \
  "${auto_complete_flags[@]}" \
  "$@"
