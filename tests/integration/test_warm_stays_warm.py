"""Warmed shapes stay warm: no oneDNN primitive is made again at the first
request after READY (docs/warm-stays-warm.md).

Read from the server, not timed: tritonserver runs with ``ONEDNN_VERBOSE=all``
and its log says, for every primitive a forward asks for, whether oneDNN's
cache held it. model-v1's GELU is one oneDNN primitive per input shape, cached
under the shape and the thread count it was made for.

The probes are the small shapes warmed first: those that libtorch runs before
it switches the backend thread to the model's intra-op count, so they are the
ones a mismatched server makes again.
"""

import re

import numpy as np
import pytest
import tritonclient.http as httpclient

from triton_warmup import threads
from triton_warmup.client import warm as warm_cli
from triton_warmup.helper.config_rewrite import read_config, render_config
from triton_warmup.helper.warmup_plan import plan_warmup
from live_server import send_warmup, warmup_inputs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MODEL = "model-v1"
FEATURE_DIM = 64
BATCH_SIZES = [1, 2, 4, 8]
# Up to 48: the largest shapes are large enough for libtorch to switch the
# thread count during the warmup, as real traffic would.
GROUP_MAX = 48
PROBED_GROUPS = range(1, 9)
VERBOSE = {"ONEDNN_VERBOSE": "all"}
CACHE_LINE = re.compile(r"onednn_verbose,[^,]*,primitive,create:(cache_hit|cache_miss)")


def model_threads(server) -> int:
    _, config = read_config(server.model_repository / MODEL)
    return int(config.parameters[threads.THREAD_COUNT_PARAMETER].string_value)


def probe(server):
    """First requests at the probed warmed shapes; oneDNN's cache hits and
    misses they caused, from the server's log."""
    start = len(server.log_path.read_bytes())
    rng = np.random.default_rng(0)
    with httpclient.InferenceServerClient(server.http_url) as client:
        for group in PROBED_GROUPS:
            for batch in BATCH_SIZES:
                x = httpclient.InferInput("x", [batch, group, FEATURE_DIM], "FP32")
                x.set_data_from_numpy(rng.standard_normal((batch, group, FEATURE_DIM)).astype(np.float32))
                mask = httpclient.InferInput("mask", [batch, group], "INT64")
                mask.set_data_from_numpy(np.ones((batch, group), dtype=np.int64))
                client.infer(MODEL, [x, mask])
    text = server.log_path.read_bytes()[start:].decode(errors="replace")
    found = CACHE_LINE.findall(text)
    return found.count("cache_hit"), found.count("cache_miss")


def warm_with_helper(server):
    _, report = send_warmup(server, "http", warmup_inputs(
        [MODEL], group_max=GROUP_MAX, feature_dims=[FEATURE_DIM], batch_sizes=BATCH_SIZES))
    (entry,) = report.models
    assert entry.status.value == "READY", entry
    return entry


PROBES = len(PROBED_GROUPS) * len(BATCH_SIZES)


def test_the_launcher_keeps_every_warmed_shape_warm(start_server, monkeypatch):
    # The launcher keeps a count the environment sets; this test is of its own.
    monkeypatch.delenv(threads.OPENMP_VARIABLE, raising=False)
    server = start_server("threads_launcher", extra_env=VERBOSE)
    # The launcher set OpenMP's count to the model's intra-op count.
    assert server.openmp_setting.value == model_threads(server)
    entry = warm_with_helper(server)
    assert entry.threads is None
    hits, misses = probe(server)
    assert (hits, misses) == (PROBES, 0)


def test_a_mismatched_server_makes_warmed_primitives_again(start_server):
    """The control: OpenMP at another count than the model's, and Triton's
    own warmup in ascending order (a config written by hand)."""
    server = start_server("threads_mismatch", extra_env={**VERBOSE, threads.OPENMP_VARIABLE: "2"})
    assert model_threads(server) != 2
    folder = server.model_repository / MODEL
    _, config = read_config(folder)
    plan = plan_warmup(config, group_sizes=range(1, GROUP_MAX + 1), batch_sizes=BATCH_SIZES)
    config.model_warmup.extend(plan.samples)
    (folder / "config.pbtxt").write_bytes(render_config(config))
    with httpclient.InferenceServerClient(server.http_url) as client:
        client.load_model(MODEL)
    hits, misses = probe(server)
    assert hits + misses == PROBES
    assert misses > 0


def test_the_helper_warms_the_largest_sample_first_on_a_mismatched_server(start_server, run_cli):
    server = start_server("threads_helper", extra_env={**VERBOSE, threads.OPENMP_VARIABLE: "2"})
    result = run_cli(warm_cli.main, "-u", server.http_url, "--models", MODEL, "--feature-dims", str(FEATURE_DIM),
                     "--group-size-max", str(GROUP_MAX), "--batch-sizes", *map(str, BATCH_SIZES))
    assert result.returncode == 0, result.stdout + result.stderr
    # The user is told, with the setting that fixes it.
    assert f"NOTE: {MODEL}: {threads.OPENMP_VARIABLE} is 2 on the server" in result.stdout
    assert f"{threads.OPENMP_VARIABLE}={model_threads(server)}" in result.stdout
    _, config = read_config(server.model_repository / MODEL)
    first = config.model_warmup[0]
    assert (first.batch_size, list(first.inputs["x"].dims)) == (max(BATCH_SIZES), [GROUP_MAX, FEATURE_DIM])
    hits, misses = probe(server)
    assert (hits, misses) == (PROBES, 0)
