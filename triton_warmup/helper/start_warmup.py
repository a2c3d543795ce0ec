"""Warm at server start, with no client: the helper's ``warm_on_start``.

``tritonserver --model-repository=R --model-control-mode=explicit
--load-model=warmup_helper`` is all a user on a managed platform controls.
With ``warm_on_start`` set in the helper's config, the helper's
``initialize`` reads and checks the start plan (``read_start_plan``,
``check_start_plan``): a bad one fails the helper's load, so the server does
not come up, and the one line of the error names the file, the line and the
reason. Then ``StartWarmup`` runs the plan on a thread of its own once the
server is ready, as a client's request would.

Why a thread that waits, and not ``initialize`` itself: the Model Loading
API refuses every load until the server's start-up is over ("Server not
ready"), and the start-up is over only once ``initialize`` has returned;
the HTTP endpoint the helper loads through does not even listen before that
(docs/warm-on-start.md cites core and server r24.10).

Pure Python: the readiness probe, the warmup itself, the log and the wait
are passed in, so unit tests drive the thread with fakes.
"""

import dataclasses
import pathlib
import threading
import time
from typing import Callable, Optional, Tuple

from triton_warmup.helper.request import (
    DEFAULT_GROUP_SIZE_MAX,
    DEFAULT_GROUP_SIZE_MIN,
    WarmupRequest,
    WarmupRequestError,
    parse_plan_document,
)

# warm_on_start: "all" warms every model of the repository with the shape
# range of ``triton-warmup --all``; any other value names a plan file in the
# helper's own folder; empty leaves the start alone.
WARM_ALL = "all"
PARAMETER = "warm_on_start"

# The readiness probe is one local HTTP GET; a tenth of a second between
# tries puts the first load within that of the server's readiness.
READY_POLL_INTERVAL_S = 0.1
# While the server is not ready, a line this often says that the helper waits.
WAITING_LOG_INTERVAL_S = 30.0


class StartPlanError(ValueError):
    """A ``warm_on_start`` value or plan that cannot be used. The message is
    one line naming the file, the line and the reason: it fails the helper's
    load, and Triton logs it as the reason the server did not come up."""


def _all_models_request(helper_name: str, allowed_models) -> WarmupRequest:
    document = {
        "all_models": True,
        "defaults": {"group_size_min": DEFAULT_GROUP_SIZE_MIN, "group_size_max": DEFAULT_GROUP_SIZE_MAX},
    }
    return parse_plan_document(document, helper_name, allowed_models)


def read_start_plan(
    value: str, helper_dir: pathlib.Path, helper_name: str, allowed_models=None
) -> Optional[Tuple[str, WarmupRequest]]:
    """The start plan that ``warm_on_start`` names: ``(source, request)``,
    or ``None`` when it is empty.

    Args:
        value: the parameter: ``all``, or a file name relative to ``helper_dir``.
        helper_dir: the helper's own model folder.

    Raises:
        StartPlanError: a file outside the helper's folder, missing, not
            parsing, or breaking a rule of plans (named with its line).
    """
    value = value.strip()
    if not value:
        return None
    if value == WARM_ALL:
        return f"{PARAMETER}: {WARM_ALL}", _all_models_request(helper_name, allowed_models)
    folder = helper_dir.resolve()
    path = (folder / value).resolve()
    if folder not in path.parents:
        raise StartPlanError(
            f"{PARAMETER} {value!r}: the plan file must be in the helper's folder {folder} "
            f"(a name relative to it), or the value must be {WARM_ALL!r}"
        )
    if not path.is_file():
        raise StartPlanError(f"{path}: no such plan file ({PARAMETER} names it in the helper's config.pbtxt)")
    # Imported here: YAML is needed only for a plan file, and every import of
    # the helper's initialize delays the server's READY (and every model's).
    from triton_warmup.helper.plan_file import PlanFileError, load_plan, locate_plan_error  # noqa: PLC0415

    try:
        document, _ = load_plan(path, helper_name)
        # allowed_models is the helper's own rule, which the file's check does not know.
        request = parse_plan_document(document, helper_name, allowed_models)
    except PlanFileError as error:
        raise StartPlanError(str(error)) from None
    except WarmupRequestError as error:
        raise StartPlanError(locate_plan_error(path, error) or f"{path}: {error.message}") from None
    return str(path), request


def check_start_plan(source: str, request: WarmupRequest, plan: Callable[[WarmupRequest], object]) -> None:
    """Plan ``request`` against the repository (``plan``, for example
    ``job_planning.plan_jobs`` on the repository), as the start warmup will:
    an unknown model, an input the model lacks, a missing data file.

    Raises:
        StartPlanError: naming the plan file's line where the error has a path in it.
    """
    try:
        plan(request)
    except WarmupRequestError as error:
        from triton_warmup.helper.plan_file import locate_plan_error  # noqa: PLC0415 - see read_start_plan

        path = pathlib.Path(source)
        where = locate_plan_error(path, error) if path.is_file() else None
        raise StartPlanError(where or f"{source}: {error.message}") from None


@dataclasses.dataclass
class StartProgress:
    """Where the start warmup is; read by the request path, written by the thread."""

    total: Optional[int] = None
    done: int = 0
    finished: bool = False
    # The report of the start warmup (a ``report.WarmupReport``), or why there is none.
    report: object = None
    error: Optional[str] = None

    def summary(self) -> str:
        if self.total is None:
            return "waiting for the server to be ready"
        return f"{self.done} of {self.total} models done"


class StartWarmup:
    """Runs the start plan once, on a daemon thread, when the server is ready.

    Args:
        source: what the plan is, for the log (``warm_on_start: all`` or the file).
        server_live: True once the server's start-up is over (its
            ``/v2/health/live``); errors count as not yet.
        warm: runs the plan as a request would: called with a progress
            callback ``(total, done)`` and a ``stopping`` function, returns
            the report; raises on a bug, which the log gets.
        log_info, log_error: the server's log.
        poll_interval_s: between readiness probes.
        clock: ``time.monotonic``, or a fake.
    """

    def __init__(
        self,
        source: str,
        server_live: Callable[[], bool],
        warm: Callable[[Callable[[int, int], None], Callable[[], bool]], object],
        log_info: Callable[[str], None],
        log_error: Callable[[str], None],
        poll_interval_s: float = READY_POLL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.source = source
        self._server_live = server_live
        self._warm = warm
        self._log_info = log_info
        self._log_error = log_error
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self.progress = StartProgress()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        # Daemon: a thread still waiting or warming never holds the stub's
        # exit, and so never Triton's shutdown.
        self._thread = threading.Thread(target=self.run, name="warm-on-start", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to stop: no model is started after this, and a
        model in its load finishes or fails (and is put back) on its own.
        Waits at most ``timeout_s``; returns whether the thread ended."""
        self._stopping.set()
        return self.join(timeout_s)

    def join(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for the thread to end; whether it did."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self._thread is None or not self._thread.is_alive()

    def stopping(self) -> bool:
        return self._stopping.is_set()

    def snapshot(self) -> StartProgress:
        with self._lock:
            return dataclasses.replace(self.progress)

    def _set(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.progress, key, value)

    def wait_for_server(self) -> bool:
        """Poll until the server is ready; False when asked to stop first."""
        started = self._clock()
        next_note = started + WAITING_LOG_INTERVAL_S
        while not self._stopping.is_set():
            try:
                if self._server_live():
                    return True
            except Exception:  # noqa: BLE001 - a probe that fails is a server not ready yet
                pass
            if self._clock() >= next_note:
                self._log_info(
                    f"{self.source}: still waiting for the server to be ready "
                    f"({self._clock() - started:.0f} s); the warmup starts then"
                )
                next_note += WAITING_LOG_INTERVAL_S
            self._stopping.wait(self._poll_interval_s)
        return False

    def run(self) -> None:
        try:
            if not self.wait_for_server():
                self._set(finished=True, error="the server stopped before it was ready")
                return
            self._log_info(f"{self.source}: the server is ready; warming at start")
            report = self._warm(lambda total, done: self._set(total=total, done=done), self.stopping)
            self._set(finished=True, report=report)
        except Exception as error:  # noqa: BLE001 - the thread's last word goes to the log
            self._log_error(f"{self.source}: the warmup at start failed: {error!r}")
            self._set(finished=True, error=f"the warmup at start failed: {error!r}")
