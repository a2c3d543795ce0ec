"""Serve a model repository on the embedded tritonserver.

Starts the real tritonserver from the nvidia-pytriton wheel in explicit
model-control mode with ``--load-model=warmup_helper``, waits until it is
ready, warms the models of a plan file if ``--warmup PLAN`` is given (or,
with ``--working-copy --warm-on-start all|PLAN``, lets the helper warm at
start by itself and waits for its report), then
either runs COMMAND and stops, or serves until Ctrl-C/SIGTERM. Any other
tritonserver flag passes through, spelled ``--flag value`` or ``--flag=value``
as tritonserver takes it (``--trace-config level=TENSORS``).

Exit codes: COMMAND's own when one is given; 0 after Ctrl-C or SIGTERM; 1
when the server cannot start, exits by itself or a planned model fails to
warm; 2 bad usage or a bad plan file (found here or by the helper).

Examples::

    triton-warmup-serve                               # serve ./model_repository
    triton-warmup-serve --warmup plans/example.yaml   # start, warm, then serve
    triton-warmup-serve --working-copy -- triton-warmup --all
    triton-warmup-serve --working-copy --warm-on-start all   # the server warms itself
    triton-warmup-serve --log-verbose 1 --exit-timeout-secs=10
    triton-warmup-serve --trace-config triton,file=trace.json --trace-config level=TENSORS
"""

import argparse
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile

from triton_warmup.embedded import (
    AUTO_COMPLETE_AUTO,
    AUTO_COMPLETE_CHOICES,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_READY_TIMEOUT_S,
    HELPER_MODEL,
    EmbeddedTriton,
    TritonNotFoundError,
    TritonStartError,
)
from triton_warmup import threads
from triton_warmup.auto_complete import DISABLE_FLAG
from triton_warmup.libtorch_backend import BuildError
from triton_warmup.client.plan_file import PlanFileError, load_plan
from triton_warmup.client import warm
from triton_warmup.client.flags import usage_error
from triton_warmup.helper.repository import is_cloud
from triton_warmup.helper.start_warmup import WARM_ALL
from triton_warmup.helper.watch import DEFAULT_RATE
from triton_warmup.client.install_helper import set_parameters, set_warm_on_start


# tritonserver 2.51 (``tritonserver --help``): every long option takes a
# value, given as ``--flag=value`` or ``--flag value``, except these.
TRITONSERVER_FLAGS_WITHOUT_VALUE = frozenset(("--help", DISABLE_FLAG))


def tritonserver_flags(tokens):
    """tritonserver's own flags among ``tokens``, each as ``--flag=value``.

    Triton spells a value either way (``--trace-config level=TENSORS`` or
    ``--trace-config=level=TENSORS``), and its repeatable flags
    (``--trace-config``, ``--backend-config``, ``--load-model``, ...) come many
    times; the value after a flag is taken as getopt takes it.

    Raises:
        ValueError: a word that belongs to no flag, or a flag without its value.
    """
    flags = []
    tokens = list(tokens)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}; put a command after '--'")
        if "=" in token or token in TRITONSERVER_FLAGS_WITHOUT_VALUE:
            flags.append(token)
            index += 1
            continue
        if index + 1 >= len(tokens):
            raise ValueError(f"tritonserver flag {token} needs a value ({token} VALUE or {token}=VALUE)")
        flags.append(f"{token}={tokens[index + 1]}")
        index += 2
    return flags


def parse_args(argv):
    """Split ``argv`` into our options, tritonserver pass-through flags and COMMAND."""
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    else:
        command = []
    parser = argparse.ArgumentParser(
        description=__doc__,
        # tritonserver's flags pass through, so no abbreviation of ours may
        # swallow one of them (--load for --load-model, say).
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] [tritonserver flags] [-- COMMAND ...]",
    )
    parser.add_argument(
        "--model-repository",
        default="model_repository",
        help="Model repository to serve: a folder, or a bucket URL as tritonserver takes it "
        "(s3://, gs://, as://; docs/object-storage.md). Default is ./model_repository.",
    )
    parser.add_argument(
        "--working-copy",
        action="store_true",
        help="Serve a copy of the repository made in the workdir, so warmup rewrites "
        "leave the original untouched. Default is off.",
    )
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                        help=f"HTTP port. Default is {DEFAULT_HTTP_PORT}.")
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT,
                        help=f"gRPC port. Default is {DEFAULT_GRPC_PORT}.")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                        help=f"Metrics port. Default is {DEFAULT_METRICS_PORT}.")
    parser.add_argument(
        "--model-control-mode",
        choices=("explicit", "poll", "none"),
        default="explicit",
        help="tritonserver --model-control-mode. Default is explicit.",
    )
    parser.add_argument(
        "--load-model",
        action="append",
        help=f"Model to load at start-up (repeatable; explicit mode). Default is {HELPER_MODEL}.",
    )
    parser.add_argument("--log-verbose", type=int, default=0,
                        help="tritonserver --log-verbose level. Default is 0.")
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        help="Folder for the assembled backends and tritonserver.log. "
        "Default is a new temporary folder.",
    )
    parser.add_argument(
        "--warmup",
        metavar="PLAN",
        type=pathlib.Path,
        help="Once the server is up, warm the models of this plan file (YAML or JSON, see "
        "plans/example.yaml) and say READY only when every one is warm; stop with exit "
        "code 1 if one fails. Default is no warmup.",
    )
    parser.add_argument(
        "--warm-on-start",
        metavar="all|PLAN",
        help="With --working-copy: set the helper's warm_on_start in the copy ('all', or a plan "
        "file copied into the helper's folder), so the server warms at start with no client; "
        "then wait for that warmup's report as --warmup does. Default is off.",
    )
    parser.add_argument(
        "--watch-traffic",
        action="store_true",
        help="Start tritonserver with a trace file in a private folder of the workdir "
        "(--trace-config triton,file=...), so that the helper's traffic watch counts the requests "
        "that land on cold shapes (docs/metrics.md); with --working-copy, also set its watch_rate, "
        "which Triton before 2.57 needs. Default is off.",
    )
    parser.add_argument(
        "--auto-complete",
        choices=AUTO_COMPLETE_CHOICES,
        default=AUTO_COMPLETE_AUTO,
        help="'auto' adds tritonserver's --disable-auto-complete-config where no model of the repository "
        "needs Triton's config auto-complete, which saves about a second per Python model load (the helper's "
        "included) and per PyTorch 2 model load; 'keep' leaves Triton's default. Either of Triton's own "
        "flags (--disable-auto-complete-config, --strict-model-config) among the tritonserver flags decides "
        "instead (docs/scaling.md). Default is auto.",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT_S,
        help=f"Seconds to wait for the server to be ready. Default is {DEFAULT_READY_TIMEOUT_S:.0f}.",
    )
    args, passthrough = parser.parse_known_args(argv)
    try:
        passthrough = tritonserver_flags(passthrough)
    except ValueError as error:
        parser.error(str(error))
    if args.warm_on_start is not None:
        if args.warmup is not None:
            parser.error("--warm-on-start lets the server warm itself; leave out --warmup")
        if not args.working_copy:
            parser.error("--warm-on-start changes the helper's config: give --working-copy (for your own "
                         "repository, triton-warmup-install-helper --warm-on-start sets it)")
    for plan in (args.warmup, None if args.warm_on_start in (None, WARM_ALL) else pathlib.Path(args.warm_on_start)):
        if plan is None:
            continue
        # A bad plan is refused before a server starts.
        try:
            load_plan(plan)
        except PlanFileError as error:
            usage_error(parser, str(error))
    return args, passthrough, command


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args, passthrough, command = parse_args(sys.argv[1:] if argv is None else argv)
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="embedded-triton-"))
    repository = args.model_repository if is_cloud(args.model_repository) else pathlib.Path(args.model_repository).resolve()
    if args.working_copy and is_cloud(repository):
        print(f"FAILED: --working-copy copies a folder; {repository} is a bucket, which the helper "
              "never writes into anyway", file=sys.stderr)
        return 2
    if args.working_copy:
        copy = workdir / "model_repository"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(repository, copy, symlinks=True)
        print(f"serving a working copy of {repository} at {copy}", flush=True)
        repository = copy
        if args.warm_on_start is not None:
            value = set_warm_on_start(copy / HELPER_MODEL, args.warm_on_start)
            print(f"{HELPER_MODEL} warm_on_start: {value} (in the copy)", flush=True)
        if args.watch_traffic:
            # An explicit rate: the helper's default keeps the watch off on a
            # Triton whose tracing can crash under load (docs/metrics.md).
            set_parameters(copy / HELPER_MODEL, {"watch_rate": str(DEFAULT_RATE)}, "triton-warmup-serve --watch-traffic")
            print(f"{HELPER_MODEL} watch_rate: {DEFAULT_RATE} (in the copy; on Triton before 2.57 tracing can crash "
                  "under load, docs/metrics.md)", flush=True)

    if args.watch_traffic:
        # The traces hold request data until the helper reads and removes them.
        traces = workdir / "traces"
        traces.mkdir(mode=0o700, exist_ok=True)
        passthrough = passthrough + [f"--trace-config=triton,file={traces / 'trace.json'}"]
        print(f"traces for the helper's traffic watch: {traces}", flush=True)
    try:
        server = EmbeddedTriton(
            repository,
            workdir,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            model_control_mode=args.model_control_mode,
            load_models=args.load_model or (HELPER_MODEL,),
            log_verbose=args.log_verbose,
            extra_args=passthrough,
            auto_complete=args.auto_complete,
        )
    except (TritonNotFoundError, BuildError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1

    # SIGTERM (from a container runtime or `kill`) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"tritonserver log: {server.log_path}", flush=True)
    try:
        server.start()
        if server.openmp_setting.value is not None:
            print(f"{threads.OPENMP_VARIABLE}={server.openmp_setting.value} for tritonserver: "
                  f"{server.openmp_setting.reason}", flush=True)
        if server.auto_complete_setting is not None:
            print((f"{DISABLE_FLAG} for tritonserver: " if server.auto_complete_setting.disable
                   else "") + server.auto_complete_setting.reason, flush=True)
        server.wait_ready(args.timeout)
        print(
            f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url}, "
            f"metrics localhost:{args.metrics_port}",
            flush=True,
        )
        if args.warmup is not None:
            code = warm.main(["-u", server.http_url, "--plan", str(args.warmup)])
            if code != 0:
                print(f"FAILED: the warmup of {args.warmup} did not finish (exit code {code}); "
                      "stopping the server", file=sys.stderr, flush=True)
                return code
            print(f"READY: every model of {args.warmup} is warm", flush=True)
        if args.warm_on_start is not None:
            code = warm.main(["-u", server.http_url, "--start-report"])
            if code != 0:
                print(f"FAILED: the warmup at start did not finish (exit code {code}); "
                      "stopping the server", file=sys.stderr, flush=True)
                return code
            print("READY: every model of the warmup at start is warm", flush=True)
        if command:
            return subprocess.call(command)
        print("serving; press Ctrl-C to stop", flush=True)
        code = server.wait()
        print(
            f"FAILED: tritonserver exited with code {code}. Log {server.log_path}:\n{server.log_tail()}",
            file=sys.stderr,
        )
        return 1
    except TritonStartError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        code = server.stop()
        # The working copy and the log stay in the workdir for inspection.
        print(f"tritonserver stopped (exit code {code}); its files are in {workdir}", flush=True)

if __name__ == "__main__":
    sys.exit(main())
