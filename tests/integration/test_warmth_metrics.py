"""Warmth on Triton's own metrics endpoint (docs/metrics.md), on the real
server: the helper's families read back with prometheus_client's parser, a
known mix of warm and cold requests counted exactly at watch_rate 1, the
helper's own requests left out, a user's server-wide trace setting left as
it was, and the helper's tracing turned off when it is unloaded."""

import json
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from live_server import client_for, send_warmup, served_config, template_with_helper_parameters, wait_for_log, warmup_inputs
from triton_warmup.client import states
from triton_warmup.helper.watch import trace_parts

# One server; a few warmups and some tens of requests.
MODULE_TIMEOUT_S = 300
# How long a count may take to reach the metrics port before the test gives
# up; the figure measured is reported, not asserted (docs/metrics.md: about
# two watch cycles, 1 s each).
COUNT_TIMEOUT_S = 60

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

GROUP_MAX = 3
BATCH_SIZES = [1, 2]


@pytest.fixture(scope="module")
def traced(start_server, template_repository, tmp_path_factory):
    """A server with a trace file in a private folder and the helper's
    watch_rate 1, with model-v1 warmed (groups 1..3, batches 1 and 2)."""
    folder = tmp_path_factory.mktemp("traces")
    folder.chmod(0o700)
    template = template_with_helper_parameters(
        template_repository, tmp_path_factory.mktemp("watched") / "model_repository", watch_rate="1"
    )
    trace_file = folder / "trace.json"
    server = start_server("watched", template=template, extra_args=[f"--trace-config=triton,file={trace_file}"])
    send_warmup(server, "http", warmup_inputs(["model-v1"], 1, GROUP_MAX, batch_sizes=BATCH_SIZES))
    wait_for_log(server, ["traffic watch on for 'model-v1'"], timeout=COUNT_TIMEOUT_S)
    return server, trace_file


def metrics(server):
    """The helper's samples on the metrics port: (metric, model) -> value."""
    with urllib.request.urlopen(f"http://localhost:{server.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("triton_warmup_"):
                values[(sample.name, sample.labels["model"])] = sample.value
    return values


def send(server, group, batch=1, count=1, request_id=""):
    x = httpclient.InferInput("x", [batch, group, 64], "FP32")
    x.set_data_from_numpy(np.zeros((batch, group, 64), np.float32))
    mask = httpclient.InferInput("mask", [batch, group], "INT64")
    mask.set_data_from_numpy(np.ones((batch, group), np.int64))
    with client_for(server, "http") as client:
        for _ in range(count):
            client.infer("model-v1", [x, mask], request_id=request_id)


def wait_for_count(server, name, model, value):
    started = time.monotonic()
    while True:
        now = metrics(server)
        if now.get((name, model)) == value:
            return time.monotonic() - started, now
        assert time.monotonic() - started < COUNT_TIMEOUT_S, (name, model, value, now)
        time.sleep(0.2)


def test_warmed_shapes_equal_the_distinct_shapes_of_the_samples(traced):
    server, _ = traced
    samples = served_config(server, "model-v1")["model_warmup"]
    shapes = {(sample["batch_size"], tuple(sample["inputs"]["x"]["dims"])) for sample in samples}
    values = metrics(server)
    assert values[("triton_warmup_warmed_shapes", "model-v1")] == len(shapes) == GROUP_MAX * len(BATCH_SIZES)
    assert values[("triton_warmup_last_warmup_seconds", "model-v1")] > 0


def test_a_known_mix_is_counted_exactly_at_watch_rate_1(traced, measured):
    server, trace_file = traced
    before = metrics(server)
    seen0 = before.get(("triton_warmup_requests_seen_total", "model-v1"), 0)
    cold0 = before.get(("triton_warmup_cold_requests_total", "model-v1"), 0)
    send(server, 2, count=9)  # warmed
    send(server, 3, batch=2, count=5)  # warmed
    send(server, GROUP_MAX + 2, count=3)  # a group size the warmup never ran
    send(server, 1, batch=4, count=2)  # a batch size it never ran
    sent_at = time.monotonic()
    waited, values = wait_for_count(server, "triton_warmup_requests_seen_total", "model-v1", seen0 + 19)
    assert values[("triton_warmup_cold_requests_total", "model-v1")] == cold0 + 5
    measured(f"watch_rate 1: 19 requests on the metrics port {time.monotonic() - sent_at:.1f} s after the last was answered")
    # Read and removed: no request data stays on disk.
    deadline = time.monotonic() + COUNT_TIMEOUT_S
    while trace_parts(trace_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert trace_parts(trace_file) == []


def test_the_helpers_own_requests_are_not_traffic(traced):
    server, _ = traced
    seen = metrics(server)[("triton_warmup_requests_seen_total", "model-v1")]
    # A wider plan on the READY model: the preflight and the in-place runs
    # send the new shapes to the serving model.
    _, report = send_warmup(server, "http", warmup_inputs(["model-v1"], 1, GROUP_MAX + 1, batch_sizes=BATCH_SIZES))
    assert report.models[0].in_place_runs, report.models[0]
    send(server, 1, count=1)
    waited, values = wait_for_count(server, "triton_warmup_requests_seen_total", "model-v1", seen + 1)
    assert values[("triton_warmup_warmed_shapes", "model-v1")] == (GROUP_MAX + 1) * len(BATCH_SIZES)


def test_triton_warmup_states_prints_the_figures_per_model(traced, capsys):
    server, _ = traced
    # Read the page before and after the command: a trace the watch counts
    # meanwhile (a loaded machine is slower to read them) moves the figures.
    for _ in range(10):
        values = metrics(server)
        assert states.main(["-u", server.http_url, "--metrics", "--metrics-url",
                            f"localhost:{server.metrics_port}"]) == 0
        out = capsys.readouterr().out
        if metrics(server) == values:
            break
        time.sleep(1)
    (line,) = [line for line in out.splitlines() if line.startswith("model-v1 ")]
    seen = values[("triton_warmup_requests_seen_total", "model-v1")]
    cold = values[("triton_warmup_cold_requests_total", "model-v1")]
    assert line.split()[:7] == ["model-v1", "1", str((GROUP_MAX + 1) * len(BATCH_SIZES)),
                                f"{values[('triton_warmup_last_warmup_seconds', 'model-v1')]:.2f}",
                                f"{seen:.0f}", f"{cold:.0f}", f"{cold / seen:.1%}"]


def test_a_server_wide_trace_setting_turns_the_watch_off_and_stays_as_the_user_made_it(traced):
    server, _ = traced
    url = f"http://{server.http_url}/v2/trace/setting"

    def server_setting(body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    try:
        theirs = server_setting({"trace_level": ["TIMESTAMPS"], "trace_rate": "100"})
        wait_for_log(server, ["traffic watch off: Triton traces every model already"], timeout=COUNT_TIMEOUT_S)
        time.sleep(2)  # two more watch cycles
        assert server_setting() == theirs
    finally:
        server_setting({"trace_level": ["OFF"], "trace_rate": "1000"})


def test_unloading_the_helper_turns_its_tracing_off(traced):
    server, trace_file = traced
    with httpclient.InferenceServerClient(server.http_url) as client:
        server_wide = client.get_trace_settings()
        # The watch traces model-v1 (again, after the test before).
        deadline = time.monotonic() + COUNT_TIMEOUT_S
        while client.get_trace_settings("model-v1") == server_wide:
            assert time.monotonic() < deadline, "the watch never turned tracing on for model-v1"
            time.sleep(0.2)
        client.unload_model("warmup_helper")
        deadline = time.monotonic() + COUNT_TIMEOUT_S
        while client.is_model_ready("warmup_helper") and time.monotonic() < deadline:
            time.sleep(0.2)
        wait_for_log(server, ["warmup_helper: finalized"], timeout=COUNT_TIMEOUT_S)
        for model in ("model-v1",):
            assert client.get_trace_settings(model) == server_wide
        send(server, 2, count=2)
        time.sleep(2)
        assert trace_parts(trace_file) == []
