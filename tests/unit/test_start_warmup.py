"""The warmup at server start (``helper.start_warmup``) without a server: the
start plan's checks, one line per mistake, and the thread driven by fakes."""

import threading

import pytest

from triton_warmup import HELPER_MODEL
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.request import DEFAULT_GROUP_SIZE_MAX, DEFAULT_GROUP_SIZE_MIN
from triton_warmup.helper.start_warmup import (
    WARM_ALL,
    StartPlanError,
    StartWarmup,
    check_start_plan,
    read_start_plan,
)

# The thread's fakes answer at once; this bounds a test that would hang.
JOIN_TIMEOUT_S = 10


def helper_dir(repository):
    folder = repository / HELPER_MODEL
    folder.mkdir(exist_ok=True)
    return folder


def read_and_check(repository, value):
    start = read_start_plan(value, helper_dir(repository), HELPER_MODEL)
    if start is not None:
        check_start_plan(*start, lambda request: plan_jobs(repository, request))
    return start


def test_empty_means_no_warmup_at_start(repository):
    assert read_start_plan("  ", helper_dir(repository), HELPER_MODEL) is None


def test_all_warms_every_model_with_the_clients_defaults(repository):
    source, request = read_and_check(repository, WARM_ALL)
    assert request.all_models and not request.plans
    assert request.default_plan.group_sizes == range(DEFAULT_GROUP_SIZE_MIN, DEFAULT_GROUP_SIZE_MAX + 1)
    assert source == "warm_on_start: all"


def test_a_plan_file_in_the_helpers_folder_is_read(repository):
    (helper_dir(repository) / "start.yaml").write_text("models:\n  model-v1: {group_size_max: 3}\n")
    source, request = read_and_check(repository, "start.yaml")
    assert source == str(helper_dir(repository) / "start.yaml")
    assert request.models == ("model-v1",) and request.plans[0].group_sizes == range(1, 4)


# (file text, or None for no file; value; what the one line must say)
BAD_START_PLANS = {
    "missing file": (None, "start.yaml", "start.yaml: no such plan file"),
    "not YAML": ("models:\n  model-v1: {group_size_max: [1\n", "start.yaml", "line 3: not valid YAML"),
    "rule of plans": ("models:\n  model-v1:\n    group_size_max: 0\n", "start.yaml", "line 3: models.model-v1.group_size_max"),
    "unknown model": (
        "defaults: {group_size_max: 2}\nmodels:\n  model-v1: {}\n  no-such-model: {}\n",
        "start.yaml",
        "line 4: models.no-such-model",
    ),
    "outside the folder": ("models: {}\n", "../start.yaml", "must be in the helper's folder"),
}


@pytest.mark.parametrize("text, value, words", BAD_START_PLANS.values(), ids=BAD_START_PLANS.keys())
def test_a_bad_start_plan_is_one_line_naming_file_line_and_reason(repository, text, value, words):
    if text is not None:
        (helper_dir(repository) / value).write_text(text)
    with pytest.raises(StartPlanError) as caught:
        read_and_check(repository, value)
    message = str(caught.value)
    assert "\n" not in message
    assert "start.yaml" in message and words in message, message


def test_allowed_models_is_the_helpers_rule_for_the_start_plan_too(repository):
    (helper_dir(repository) / "start.yaml").write_text("models:\n  model-v2: {group_size_max: 2}\n")
    with pytest.raises(StartPlanError, match=r"start.yaml, line 2: models.model-v2"):
        read_start_plan("start.yaml", helper_dir(repository), HELPER_MODEL, frozenset({"model-v1"}))


class FakeServer:
    """Ready after ``not_ready`` probes; the first probe raises, as an
    endpoint that does not listen yet would."""

    def __init__(self, not_ready):
        self.not_ready = not_ready
        self.probes = 0

    def ready(self):
        self.probes += 1
        if self.probes == 1:
            raise ConnectionRefusedError("not listening yet")
        return self.probes > self.not_ready


def start(server, warm, lines):
    return StartWarmup(
        "warm_on_start: all",
        server_live=server.ready,
        warm=warm,
        log_info=lines.append,
        log_error=lines.append,
        poll_interval_s=0,
    )


def test_the_warmup_waits_for_the_server_then_runs_once_and_reports_progress():
    server, lines, seen = FakeServer(not_ready=3), [], []

    def warm(progress, stopping):
        seen.append(server.probes)
        progress(2, 0)
        seen.append(warmup.snapshot().summary())
        progress(2, 1)
        seen.append(warmup.snapshot().summary())
        return "the report"

    warmup = start(server, warm, lines)
    assert warmup.snapshot().summary() == "waiting for the server to be ready"
    warmup.start()
    assert warmup.join(JOIN_TIMEOUT_S)
    assert seen == [4, "0 of 2 models done", "1 of 2 models done"]
    progress = warmup.snapshot()
    assert progress.finished and progress.report == "the report" and progress.error is None
    assert "the server is ready; warming at start" in lines[-1]


def test_stopping_before_the_server_is_ready_warms_nothing():
    lines, warmed = [], []
    warmup = start(FakeServer(not_ready=10**9), lambda progress, stopping: warmed.append(1), lines)
    warmup.start()
    assert warmup.stop(JOIN_TIMEOUT_S)
    assert warmed == []
    progress = warmup.snapshot()
    assert progress.finished and progress.report is None
    assert progress.error == "the server stopped before it was ready"


def test_a_failing_warmup_is_logged_and_ends_the_start():
    lines = []

    def warm(progress, stopping):
        raise RuntimeError("a bug")

    warmup = start(FakeServer(not_ready=0), warm, lines)
    warmup.start()
    assert warmup.join(JOIN_TIMEOUT_S)
    progress = warmup.snapshot()
    assert progress.finished and "RuntimeError('a bug')" in progress.error
    assert "the warmup at start failed" in lines[-1]


def test_stop_is_seen_by_the_warmup_between_models():
    release, seen = threading.Event(), []

    def warm(progress, stopping):
        seen.append(stopping())
        release.wait(JOIN_TIMEOUT_S)
        seen.append(stopping())
        return "partial report"

    warmup = start(FakeServer(not_ready=0), warm, [])
    warmup.start()
    while not seen:
        threading.Event().wait(0.01)
    stopped = threading.Thread(target=warmup.stop, args=(JOIN_TIMEOUT_S,))
    stopped.start()
    while not warmup.stopping():
        threading.Event().wait(0.01)
    release.set()
    stopped.join(JOIN_TIMEOUT_S)
    assert warmup.join(JOIN_TIMEOUT_S)
    assert seen == [False, True]
