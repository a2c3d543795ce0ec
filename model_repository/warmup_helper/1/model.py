"""warmup_helper: Triton glue around the ``triton_warmup`` package.

One request names target models; for each one the helper writes a
``model_warmup`` sample per shape into its ``config.pbtxt`` and loads it
through Triton's Model Loading API, so Triton runs the samples on every
instance before it marks the model READY. The logic lives in
``triton_warmup.helper`` and the answer's schema in ``triton_warmup.report``;
the package must be installed into the Python this backend runs
(README, "Use it with your own Triton").
"""

import json
import os
import pathlib
import threading
import time
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_warmup.helper.model_loading import (
    HttpModelControl,
    choose_model_control,
    choose_warmup_mode,
    http_url_from_argv,
    model_control_mode_from_argv,
    process_start_time,
    restricted_headers_from_argv,
    server_argv,
    trace_file_from_argv,
)
from triton_warmup.helper.adapt import DEFAULT_MIN_REQUESTS, AdaptSettings, ShapeLearner
from triton_warmup.helper.learned_samples import DEFAULT_MAX_LEARNED, plan_learned
from triton_warmup.helper.learning import learn
from triton_warmup.helper.metrics import GAUGE, LAST_WARMUP_SECONDS, WarmupMetrics
from triton_warmup.helper.preflight import DEFAULT_PREFLIGHT_MAX_MODEL_BYTES, Preflight
from triton_warmup.helper.preflight_record import identity_from_argv
from triton_warmup.helper.repository import LocalRepository, RepositoryError, choose_repository
from triton_warmup.helper.repository_guard import DEFAULT_LOCK_TIMEOUT_S, clean_repository
from triton_warmup.helper.job_planning import PlanSettings, plan_jobs
from triton_warmup.helper.load_jobs import build_report, run_jobs
from triton_warmup.helper.model_kind import InferRequest
from triton_warmup.helper.warmup_plan import DEFAULT_MAX_SAMPLE_BYTES, DEFAULT_MAX_WARMUP_SAMPLES, DEFAULT_WARMUP_COUNT
from triton_warmup.helper.request import REQUEST_INPUTS, WarmupRequestError, parse_allowed_models, parse_request
from triton_warmup.helper.requests_mode import LIMITATION, run_requests_plan
from triton_warmup.helper.rewarm import DEFAULT_DUTY, Rewarm
from triton_warmup.helper.start_warmup import PARAMETER as WARM_ON_START, StartPlanError, StartWarmup, check_start_plan, read_start_plan
from triton_warmup.helper.watch import OWN_REQUEST_ID, TrafficWatch
from triton_warmup.pytorch2 import CACHE_VARIABLE
from triton_warmup.threads import Machine

# Models loaded at once when the preflight is on. 4 example models warmed from
# unloaded in one request, 1 vs 4 at once on 2 CPUs, medians of 3-5 runs:
# 1.30/1.17, 1.16/1.00, 1.01/1.00, 1.58/1.18, 1.05/1.23 and 1.05/1.11 s; faster
# in four comparisons of six (bench/results/warmup_benchmark.md, "Parallel loads").
DEFAULT_PARALLEL_LOADS = 4
# A request with START_REPORT asks for the start warmup's report (warm_on_start).
START_REPORT_INPUT = "START_REPORT"
# finalize waits this long for the start warmup's thread: a model in its load
# then ends as it would (or is put back); never long enough to hold Triton's
# shutdown, which waits for its models' finalize.
START_STOP_TIMEOUT_S = 5.0
WATCH_STOP_TIMEOUT_S = 5.0
LEARNER_STOP_TIMEOUT_S = 5.0


def _error_code(name: str):
    # TritonError codes are class attributes in recent Python backends; an
    # older stub without them still gets the message.
    return getattr(pb_utils.TritonError, name, None)


def _error_response(message: str, code_name: str) -> "pb_utils.InferenceResponse":
    code = _error_code(code_name)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _parameter(parameters: dict, key: str) -> str:
    return parameters.get(key, {}).get("string_value", "").strip()


def _bool_parameter(parameters: dict, key: str, default: bool) -> bool:
    raw = _parameter(parameters, key).lower()
    if raw == "":
        return default
    if raw in ("true", "on", "yes", "1"):
        return True
    if raw in ("false", "off", "no", "0"):
        return False
    raise pb_utils.TritonModelException(
        f"warmup_helper config parameter {key} must be true or false, got {raw!r}"
    )


def _int_parameter(parameters: dict, key: str, default: int, minimum: int = 1) -> int:
    raw = _parameter(parameters, key)
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise pb_utils.TritonModelException(
            f"warmup_helper config parameter {key} must be an integer, got {raw!r}"
        ) from None
    if value < minimum:
        raise pb_utils.TritonModelException(
            f"warmup_helper config parameter {key} must be at least {minimum}, got {value}"
        )
    return value


def _metric_family(name: str, kind: str, description: str):
    family_kind = pb_utils.MetricFamily.GAUGE if kind == GAUGE else pb_utils.MetricFamily.COUNTER
    return pb_utils.MetricFamily(name=name, description=description, kind=family_kind)


class BlsModelControl:
    """The Model Loading API as the Python backend offers it to a model."""

    description = "pb_utils.load_model"

    @staticmethod
    def load(model_name: str, config=None, files=None) -> None:
        arguments = {"model_name": model_name}
        if config is not None:
            arguments["config"] = config
        if files:
            arguments["files"] = files
        pb_utils.load_model(**arguments)

    @staticmethod
    def unload(model_name: str) -> None:
        pb_utils.unload_model(model_name=model_name)

    @staticmethod
    def is_ready(model_name: str) -> bool:
        return pb_utils.is_model_ready(model_name=model_name)


def bls_infer(request: InferRequest) -> list:
    """Send one inference request from inside Triton (BLS); return each
    response's outputs as arrays. A sequence request carries its correlation
    ID and flags; a decoupled model's stream is read to its final response."""
    flags = (pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if request.start else 0) | (
        pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if request.end else 0
    )
    bls_request = pb_utils.InferenceRequest(
        model_name=request.model,
        model_version=int(request.version) if request.version else -1,
        inputs=[pb_utils.Tensor(name, array) for name, array in request.inputs.items()],
        requested_output_names=list(request.outputs),
        correlation_id=request.correlation_id,
        flags=flags,
        # The traffic watch does not count the helper's own requests.
        request_id=f"{OWN_REQUEST_ID}{request.model}",
    )
    responses = bls_request.exec(decoupled=True) if request.decoupled else [bls_request.exec()]
    outputs = []
    for response in responses:
        if response.has_error():
            raise RuntimeError(response.error().message())
        outputs.append({tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()})
    return outputs


class TritonPythonModel:
    """Rewrites target configs with warmup samples and loads the targets."""

    def initialize(self, args):
        self.model_name = args["model_name"]
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.settings = PlanSettings(
            count=_int_parameter(parameters, "warmup_count", DEFAULT_WARMUP_COUNT),
            max_samples=_int_parameter(parameters, "max_warmup_samples", DEFAULT_MAX_WARMUP_SAMPLES),
            max_sample_bytes=_int_parameter(parameters, "max_sample_bytes", DEFAULT_MAX_SAMPLE_BYTES),
            # The stub inherits tritonserver's environment and CPUs.
            machine=Machine.here(),
        )
        self.lock_timeout_s = _int_parameter(
            parameters, "lock_timeout_s", int(DEFAULT_LOCK_TIMEOUT_S)
        )
        self.allowed_models = parse_allowed_models(_parameter(parameters, "allowed_models"))
        self.logger = pb_utils.Logger

        # The stub's parent process is the tritonserver that runs it.
        try:
            argv = server_argv(os.getppid())
        except OSError as error:
            self.logger.log_warn(f"{self.model_name}: cannot read the server's command line: {error}")
            argv = None
        self.server_mode = model_control_mode_from_argv(argv)
        # args["model_repository"] is this model's own folder: in a local
        # repository its parent holds the target models; for a bucket it is
        # Triton's temporary download, and the server's flags say where.
        try:
            server_cwd = pathlib.Path(os.readlink(f"/proc/{os.getppid()}/cwd"))
        except OSError:
            server_cwd = None
        try:
            self.repository = choose_repository(
                pathlib.Path(args["model_repository"]), argv, _parameter(parameters, "model_repository"), server_cwd
            )
        except RepositoryError as error:
            raise pb_utils.TritonModelException(f"warmup_helper: {error}") from None
        self.preflight = None
        preflight_on = _bool_parameter(parameters, "preflight", True)
        # Parallel by default only while no sample can fail in Triton's warmup
        # (docs/safety.md, "Known Triton issues"); bench/results measured the gain.
        self.max_parallel_loads = _int_parameter(
            parameters, "max_parallel_loads", DEFAULT_PARALLEL_LOADS if preflight_on else 1
        )
        if preflight_on:
            try:
                # Whole seconds of boot time make this a second off either
                # way; earlier only means more scratch copies.
                server_started_at = process_start_time(os.getppid()) - 2.0
            except (OSError, ValueError, StopIteration):
                server_started_at = None
            self.preflight = Preflight(
                infer=bls_infer,
                # Samples that passed are recorded beside each model and not
                # run again while its files, config and this server stay the same.
                server_identity=identity_from_argv(argv),
                max_model_bytes=_int_parameter(
                    parameters, "preflight_max_model_bytes", DEFAULT_PREFLIGHT_MAX_MODEL_BYTES
                ),
                server_started_at=server_started_at,
            )
        rewarm = _parameter(parameters, "rewarm").lower() or "in_place"
        if rewarm not in ("in_place", "reload"):
            raise pb_utils.TritonModelException(
                f"warmup_helper config parameter rewarm must be in_place or reload, got {rewarm!r}"
            )
        duty_percent = _int_parameter(parameters, "rewarm_duty_percent", round(DEFAULT_DUTY * 100))
        if duty_percent > 100:
            raise pb_utils.TritonModelException(
                f"warmup_helper config parameter rewarm_duty_percent must be 1-100, got {duty_percent}"
            )
        if self.preflight is not None:
            # Its runs on a serving model are paced as the in-place re-warm's.
            self.preflight.serving_duty = duty_percent / 100
        # Only with the preflight: it tells whether the serving version runs the files on disk.
        self.rewarm = Rewarm(
            infer=bls_infer, in_place=rewarm == "in_place" and self.preflight is not None, duty=duty_percent / 100
        )
        http_url = _parameter(parameters, "http_url") or (
            http_url_from_argv(argv) if argv is not None else None
        )
        try:
            self.control = choose_model_control(
                _parameter(parameters, "load_api") or "auto",
                http_url,
                BlsModelControl(),
                headers=restricted_headers_from_argv(argv or []),
            )
        except ValueError as error:
            raise pb_utils.TritonModelException(f"warmup_helper config parameter: {error}") from None
        if isinstance(self.control, BlsModelControl):
            # pb_utils.load_model calls from one stub ran one after another
            # anyway; the HTTP endpoint is what loads models in parallel.
            self.max_parallel_loads = 1

        removed, restored = (
            clean_repository(self.repository.root) if isinstance(self.repository, LocalRepository) else ([], [])
        )
        if removed:
            self.logger.log_warn(
                f"{self.model_name}: removed temporary files a killed writer left: {removed}"
            )
        if restored:
            self.logger.log_warn(
                f"{self.model_name}: put back the original of {restored}: the load after "
                "their rewrite never finished (the server was killed or crashed)"
            )
        self.logger.log_info(
            f"{self.model_name}: repository {self.repository.location}, {self.settings}, "
            f"allowed_models {sorted(self.allowed_models) if self.allowed_models else 'all'}, "
            f"max_parallel_loads {self.max_parallel_loads}, "
            f"preflight {'on' if self.preflight else 'OFF'}, "
            f"rewarm {'in place where it can, duty ' + str(duty_percent) + '%' if self.rewarm.in_place else 'reload'}, "
            f"loads through {self.control.description}, "
            f"server model-control mode {self.server_mode or 'unknown'}"
        )
        # Empty: the watch's default, which depends on the server's version.
        watch_rate = (
            _int_parameter(parameters, "watch_rate", 0, minimum=0) if _parameter(parameters, "watch_rate") else None
        )
        # The start plan is checked first: a bad one fails this load before
        # any thread or metric family exists (a family alive at the stub's
        # exit crashes it, see WarmupMetrics.close). Its thread warms only
        # once the server is live, which is after this initialize returns.
        self.metrics = self.watch = self.learner = None
        # Held while a request or the start warmup runs: learning waits for it.
        self.busy = threading.Lock()
        self.start_warmup = self._start_warmup(
            _parameter(parameters, WARM_ON_START), pathlib.Path(args["model_repository"]), http_url, argv
        )
        # Kept on the instance: a family that is dropped leaves the metrics port.
        # Labelled with this stub's pid: see metrics.INSTANCE_LABEL.
        self.metrics = WarmupMetrics(_metric_family, instance=str(os.getpid()))
        self.learner = self._shape_learner(parameters)
        self.watch = self._traffic_watch(watch_rate, http_url, argv, server_cwd)
        if self.learner is not None:
            if self.watch is None or self.watch.off_reason is not None:
                self.logger.log_warn(
                    f"{self.model_name}: adapt is on, but the traffic watch is off, so no shape can be "
                    "learned (docs/adapt.md)"
                )
            self.learner.start()

    def _shape_learner(self, parameters):
        """Learning shapes from traffic (docs/adapt.md), when ``adapt`` is on."""
        adapt = _parameter(parameters, "adapt").lower() or "off"
        if adapt not in ("on", "off"):
            raise pb_utils.TritonModelException(f"warmup_helper config parameter adapt must be on or off, got {adapt!r}")
        if adapt == "off":
            return None
        settings = AdaptSettings(
            min_requests=_int_parameter(parameters, "adapt_min_requests", DEFAULT_MIN_REQUESTS),
            max_learned=_int_parameter(parameters, "adapt_max_samples", DEFAULT_MAX_LEARNED),
        )
        self.logger.log_info(
            f"{self.model_name}: adapt on: a cold shape seen {settings.min_requests} times is learned, "
            f"up to {settings.max_learned} per model"
        )
        return ShapeLearner(
            self._learn,
            settings,
            self.busy,
            self.metrics,
            log_info=lambda line: self.logger.log_info(f"{self.model_name}: {line}"),
            log_warn=lambda line: self.logger.log_warn(f"{self.model_name}: {line}"),
        )

    def _learn(self, model, shape):
        """Learn one shape of one model (``learning.learn``), in a copy of a bucket's repository."""
        workspace = self.repository.mirror()
        try:
            if self.preflight is not None:
                # A bucket's copy: the preflight reads the model's files.
                workspace.fetch_model_files([model])
            return learn(
                workspace.root / model,
                lambda: plan_learned(workspace.root, model, [shape], self.settings, self.learner.settings.max_learned),
                self.control,
                self.rewarm,
                self.preflight,
                self.lock_timeout_s,
                stopping=lambda: self.learner.stopping,
            )
        finally:
            workspace.close()
            if self.watch is not None:
                self.watch.refresh()

    def _traffic_watch(self, rate, http_url, argv, server_cwd):
        """The watch of live traffic (docs/metrics.md); it needs the HTTP endpoint."""
        if http_url is None:
            self.logger.log_warn(f"{self.model_name}: no HTTP endpoint: warmth metrics and the traffic watch are off")
            return None
        trace_file = trace_file_from_argv(argv or [])
        watch = TrafficWatch(
            HttpModelControl(http_url, headers=restricted_headers_from_argv(argv or [])),
            self.metrics,
            rate,
            # Triton opens a relative trace file from its own working folder.
            str(server_cwd / trace_file) if trace_file and server_cwd and not os.path.isabs(trace_file) else trace_file,
            self.model_name,
            log_info=lambda line: self.logger.log_info(f"{self.model_name}: {line}"),
            log_warn=lambda line: self.logger.log_warn(f"{self.model_name}: {line}"),
            compile_cache_dir=os.environ.get(CACHE_VARIABLE),
            in_place_samples=lambda name: self.rewarm.ran.get(name, []),
            on_cold=self.learner.observe if self.learner is not None else None,
        )
        watch.start()
        return watch

    def _start_warmup(self, value: str, helper_dir: pathlib.Path, http_url, argv):
        """The warmup at server start that ``warm_on_start`` asks for, checked
        now: a bad plan fails this load, so the server never comes up cold."""
        try:
            start = read_start_plan(value, helper_dir, self.model_name, self.allowed_models)
            if start is None:
                return None
            source, start_request = start
            if http_url is None:
                raise StartPlanError(
                    f"{WARM_ON_START} needs the server's HTTP endpoint, to know when the server is ready "
                    "(tritonserver runs with --allow-http=false, or set the helper's http_url parameter)"
                )
            workspace = self.repository.mirror()
            try:
                check_start_plan(
                    source,
                    start_request,
                    lambda request: plan_jobs(
                        workspace.root, request, self.settings, self.model_name, self.allowed_models
                    ),
                )
            finally:
                workspace.close()
        except (StartPlanError, RepositoryError) as error:
            raise pb_utils.TritonModelException(f"warmup_helper {WARM_ON_START}: {error}") from None
        liveness = HttpModelControl(http_url, headers=restricted_headers_from_argv(argv or []))
        start_warmup = StartWarmup(
            source,
            server_live=liveness.server_live,
            # The server going away (SIGTERM) stops the warmup before finalize
            # does: Triton closes its endpoints first.
            warm=lambda progress, stopping: self._warm_at_start(
                start_request, progress, lambda: stopping() or liveness.server_stopping()
            ),
            log_info=lambda line: self.logger.log_info(f"{self.model_name}: {line}"),
            log_error=lambda line: self.logger.log_error(f"{self.model_name}: {line}"),
        )
        # The Model Loading API refuses loads until the server's start-up,
        # this initialize included, is over: the thread waits for it.
        start_warmup.start()
        self.logger.log_info(
            f"{self.model_name}: {source}: checked; warming once the server is ready "
            f"(requests to the helper get UNAVAILABLE until then)"
        )
        return start_warmup

    def _warm_at_start(self, start_request, progress, stopping):
        """Run the start plan as a request would; log its outcome; keep the report."""
        done = []

        def on_done(entry):
            done.append(entry.name)
            progress(total[0], len(done))

        total = [None]

        def on_plan(plan):
            total[0] = len(plan.order)
            progress(total[0], 0)

        report, refused = self._run(start_request, time.monotonic(), on_plan=on_plan, on_done=on_done, stopping=stopping)
        if refused is not None:
            raise RuntimeError(refused[0])
        summary = f"{len(report.loaded)} of {len(report.models)} model(s) READY in {report.seconds_total} s"
        if report.failed:
            self.logger.log_warn(f"{self.model_name}: warmed at start: {summary}; not warmed: {report.failed}")
        else:
            self.logger.log_info(f"{self.model_name}: warmed at start: {summary}")
        return report

    def execute(self, requests):
        return [self._handle(request) for request in requests]

    def _handle(self, request):
        plan_started = time.monotonic()
        start = self.start_warmup.snapshot() if self.start_warmup is not None else None
        if pb_utils.get_input_tensor_by_name(request, START_REPORT_INPUT) is not None:
            return self._start_report(start)
        if start is not None and not start.finished:
            # Refused at once rather than queued: the start warmup holds every
            # model's turn, and a queued request would warm them a second time.
            return _error_response(f"{self.model_name} is warming at start: {start.summary()}", "UNAVAILABLE")
        try:
            inputs = {}
            for name in REQUEST_INPUTS:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                inputs[name] = None if tensor is None else tensor.as_numpy()
            warmup_request = parse_request(inputs, self.model_name, self.allowed_models)
        except WarmupRequestError as error:
            self.logger.log_warn(f"{self.model_name}: refused request: {error}")
            return _error_response(error.response_message(), error.code)
        report, refused = self._run(warmup_request, plan_started)
        if refused is not None:
            return _error_response(*refused)
        return self._report_response(report)

    def _start_report(self, start):
        """The answer to START_REPORT: the start warmup's report once it is done."""
        if start is None:
            return _error_response(
                f"{self.model_name} has no warmup at start: its config sets no {WARM_ON_START}", "NOT_FOUND"
            )
        if not start.finished:
            return _error_response(f"{self.model_name} is warming at start: {start.summary()}", "UNAVAILABLE")
        if start.report is None:
            return _error_response(f"{self.model_name}: {start.error}", "INTERNAL")
        return self._report_response(start.report)

    @staticmethod
    def _report_response(report):
        loaded = np.array([name.encode("utf-8") for name in report.loaded], dtype=np.object_)
        report_json = np.array([json.dumps(report.to_dict()).encode("utf-8")], dtype=np.object_)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("LOADED_MODELS", loaded),
                pb_utils.Tensor("REPORT", report_json),
            ]
        )

    def _run(self, warmup_request, plan_started, on_plan=None, on_done=None, stopping=None):
        """Plan and warm ``warmup_request``: ``(report, None)``, or ``(None,
        (message, code))`` when it is refused or the helper fails."""
        # A learning in progress ends within seconds; none starts meanwhile.
        with self.busy:
            return self._run_alone(warmup_request, plan_started, on_plan, on_done, stopping)

    def _run_alone(self, warmup_request, plan_started, on_plan, on_done, stopping):
        workspace = None
        try:
            try:
                mode, mode_reason = choose_warmup_mode(warmup_request.mode, self.server_mode)
            except ValueError as error:
                field = "PLAN" if warmup_request.from_plan else "MODE"
                raise WarmupRequestError(field, str(error), path=("mode",)) from None
            # A bucket is read into a local copy for this request only.
            workspace = self.repository.mirror()
            plan = plan_jobs(workspace.root, warmup_request, self.settings, self.model_name, self.allowed_models)
            if mode == "load" and self.preflight is not None:
                workspace.fetch_model_files(job.name for job in plan.jobs)
        except RepositoryError as error:
            self.logger.log_warn(f"{self.model_name}: {error}")
            self._close(workspace)
            return None, (str(error), "UNAVAILABLE")
        except WarmupRequestError as error:
            message = self._public(workspace, error.response_message())
            self.logger.log_warn(f"{self.model_name}: refused request: {self._public(workspace, str(error))}")
            self._close(workspace)
            return None, (message, error.code)
        except Exception:  # noqa: BLE001 - answer the request, log the traceback
            self.logger.log_error(f"{self.model_name}: {traceback.format_exc()}")
            message = self._public(
                workspace, f"{self.model_name} failed to plan the warmup: {traceback.format_exc(limit=1)}"
            )
            self._close(workspace)
            return None, (message, "INTERNAL")
        if on_plan is not None:
            on_plan(plan)
        try:
            return self._warm(plan, mode, mode_reason, workspace, plan_started, on_done, stopping)
        finally:
            self._close(workspace)

    @staticmethod
    def _public(workspace, text: str) -> str:
        """Messages name the repository's URL, never a bucket's local copy."""
        return text if workspace is None else workspace.public(text)

    @staticmethod
    def _close(workspace) -> None:
        if workspace is not None:
            workspace.close()

    def _warm(self, plan, mode, mode_reason, workspace, plan_started, on_done=None, stopping=None):
        plan_s = round(time.monotonic() - plan_started, 6)
        started = time.monotonic()
        self._log_plan(plan, mode, workspace)
        try:
            if mode == "load":
                # Loads run in worker threads; logging stays on this thread.
                entries = run_jobs(
                    plan,
                    self.control,
                    self.lock_timeout_s,
                    self.max_parallel_loads,
                    self.preflight,
                    infer=bls_infer,
                    rewarm=self.rewarm,
                    on_done=on_done,
                    stopping=stopping,
                )
            else:
                entries = run_requests_plan(plan, bls_infer, self.control.is_ready)
        except Exception:  # noqa: BLE001 - a bug of the helper's: answer, and log the traceback
            self.logger.log_error(f"{self.model_name}: {traceback.format_exc()}")
            return None, (
                workspace.public(f"{self.model_name} failed while warming: {traceback.format_exc(limit=1)}"),
                "INTERNAL",
            )
        for entry in entries:
            self._log_entry(entry, workspace)
            if entry.ready and entry.seconds_to_ready is not None and self.metrics is not None:
                for version in entry.versions or [""]:
                    self.metrics.set(LAST_WARMUP_SECONDS, entry.name, version, plan_s + entry.seconds_to_ready)
        if self.watch is not None:
            self.watch.refresh()
        report = build_report(entries, round(time.monotonic() - started, 3), plan_s)
        report.mode = mode
        report.mode_reason = mode_reason
        report.limitation = LIMITATION if mode == "requests" else None
        # Messages name the repository's URL, never a bucket's local copy.
        return type(report).from_dict(json.loads(workspace.public(json.dumps(report.to_dict())))), None

    def _log_plan(self, plan, mode: str, workspace) -> None:
        fed = {member for ensemble in plan.ensembles for member in ensemble.members}
        for job in plan.jobs:
            if mode == "load" and job.name in fed:
                how = "and the shapes its ensembles send it, learned once they run"
            elif mode != "load" or job.rewrite.changed:
                how = ""
            else:
                how = "(config unchanged)"
            kind = "" if job.kind.label == "plain" else f", a {job.kind.label} model,"
            self.logger.log_info(
                f"{self.model_name}: {'loading' if mode == 'load' else 'sending requests to'} "
                f"'{job.name}' with {job.samples} warmup samples "
                f"x {job.count} runs on {job.instances} instance(s){kind} {how}".rstrip(" ,")
            )
        for ensemble in plan.ensembles:
            self.logger.log_info(
                f"{self.model_name}: ensemble '{ensemble.name}': {ensemble.samples} samples through "
                f"{ensemble.members + ensemble.nested}, loaded once they are warm"
            )
        for entry in plan.failed:
            self.logger.log_warn(workspace.public(f"{self.model_name}: '{entry.name}' left out: {entry.error}"))

    def _log_entry(self, entry, workspace) -> None:
        checked = entry.preflight
        if checked is not None and checked.passed:
            self.logger.log_info(
                f"{self.model_name}: '{entry.name}' preflight passed: {checked.samples_checked} "
                f"sample(s) checked by {checked.how} in {checked.seconds} s"
            )
        if entry.fallback:
            self.logger.log_warn(workspace.public(f"{self.model_name}: '{entry.name}': {entry.fallback}"))
        if entry.rewarm is not None:
            runs = f", {entry.in_place_runs} run(s) on the serving instances" if entry.in_place_runs else ""
            self.logger.log_info(
                workspace.public(f"{self.model_name}: '{entry.name}' re-warmed {entry.rewarm}{runs}: {entry.rewarm_reason}")
            )
        if entry.error:
            self.logger.log_error(
                workspace.public(f"{self.model_name}: '{entry.name}' failed: {entry.detail or entry.error}")
            )
        elif entry.mode == "load":
            self.logger.log_info(f"{self.model_name}: '{entry.name}' READY after {entry.seconds_to_ready} s")
        else:
            self.logger.log_info(
                f"{self.model_name}: '{entry.name}' warmed with {entry.requests_sent} "
                f"requests in {entry.seconds_warming} s"
            )

    def finalize(self):
        if self.learner is not None:
            self.learner.stop(LEARNER_STOP_TIMEOUT_S)
        if self.watch is not None:
            self.watch.stop(WATCH_STOP_TIMEOUT_S)
        # While the stub can still tell Triton: see WarmupMetrics.close.
        if self.metrics is not None:
            self.metrics.close()
        if self.start_warmup is not None and not self.start_warmup.stop(START_STOP_TIMEOUT_S):
            self.logger.log_warn(
                f"{self.model_name}: the warmup at start was still in a load at shutdown; a config it "
                "rewrote is put back by the helper's next start if that load never ended"
            )
        self.logger.log_info(f"{self.model_name}: finalized")
