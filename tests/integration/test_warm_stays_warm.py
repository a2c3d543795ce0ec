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

import pathlib
import re
import shutil

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


def probe(server, model=MODEL, feature_dim=FEATURE_DIM, groups=PROBED_GROUPS, batch_sizes=BATCH_SIZES):
    """First requests at the probed warmed shapes; oneDNN's cache hits and
    misses they caused, from the server's log."""
    start = len(server.log_path.read_bytes())
    rng = np.random.default_rng(0)
    with httpclient.InferenceServerClient(server.http_url) as client:
        for group in groups:
            for batch in batch_sizes:
                x = httpclient.InferInput("x", [batch, group, feature_dim], "FP32")
                x.set_data_from_numpy(rng.standard_normal((batch, group, feature_dim)).astype(np.float32))
                mask = httpclient.InferInput("mask", [batch, group], "INT64")
                mask.set_data_from_numpy(np.ones((batch, group), dtype=np.int64))
                client.infer(model, [x, mask])
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


# A repository whose libtorch models disagree: model-v1 at 1 intra-op thread
# (as every example), model-v2 at 2. Batch sizes 1 and 8 up to group 48: the
# largest sample (8 x 48 x 128 GELU inputs) is large enough for ATen to switch
# model-v2's thread up to its count.
LARGER = "model-v2"
LARGER_FEATURE_DIM = 128
MIXED_BATCH_SIZES = [1, 8]


def server_environ(server) -> dict:
    """tritonserver's own environment, as the kernel holds it."""
    raw = pathlib.Path(f"/proc/{server.pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode(errors="replace").split("\0") if "=" in entry)


def test_a_disagreeing_repository_starts_at_the_smallest_count_and_every_model_stays_warm(
        start_server, template_repository, tmp_path, monkeypatch):
    # The launcher keeps a count the environment sets; this test is of its own.
    monkeypatch.delenv(threads.OPENMP_VARIABLE, raising=False)
    monkeypatch.delenv(threads.MKL_VARIABLE, raising=False)
    mixed = tmp_path / "model_repository"
    shutil.copytree(template_repository, mixed, symlinks=True)
    _, config = read_config(mixed / LARGER)
    config.parameters[threads.THREAD_COUNT_PARAMETER].string_value = "2"
    (mixed / LARGER / "config.pbtxt").write_bytes(render_config(config))
    server = start_server("threads_mixed", template=mixed, extra_env=VERBOSE)
    assert model_threads(server) == 1
    # The launcher's policy: OpenMP at the smallest count, and the server runs with it.
    assert server.openmp_setting.value == 1
    assert "smallest" in server.openmp_setting.reason
    assert server_environ(server)[threads.OPENMP_VARIABLE] == "1"

    groups = range(1, GROUP_MAX + 1)
    _, report = send_warmup(server, "http", warmup_inputs(
        [MODEL, LARGER], group_max=GROUP_MAX, feature_dims=[FEATURE_DIM, LARGER_FEATURE_DIM],
        batch_sizes=MIXED_BATCH_SIZES))
    entries = {entry.name: entry for entry in report.models}
    assert all(entry.status.value == "READY" for entry in entries.values()), report
    # The report says what the server does: model-v1 runs OpenMP's count;
    # model-v2 switches up, after its largest sample, which went first.
    assert entries[MODEL].threads is None
    assert "switches its backend thread to 2" in entries[LARGER].threads
    _, config = read_config(server.model_repository / LARGER)
    first = config.model_warmup[0]
    assert (first.batch_size, list(first.inputs["x"].dims)) == (max(MIXED_BATCH_SIZES), [GROUP_MAX, LARGER_FEATURE_DIM])

    # Every warmed shape of both models, smallest first: oneDNN made nothing again.
    shapes = len(groups) * len(MIXED_BATCH_SIZES)
    assert probe(server, MODEL, FEATURE_DIM, groups, MIXED_BATCH_SIZES) == (shapes, 0)
    assert probe(server, LARGER, LARGER_FEATURE_DIM, groups, MIXED_BATCH_SIZES) == (shapes, 0)


def test_on_the_policys_server_a_larger_count_model_switches_up_so_ascending_order_misses(
        start_server, template_repository, tmp_path):
    """The control for the test above: OpenMP at 1 (as the launcher sets it
    for that repository), model-v2 at 2, and Triton's own warmup in ascending
    order (a config written by hand). ATen does switch model-v2's thread up
    at its first large loop: the primitives warmed before it were made for 1
    thread, and their first requests make them again."""
    server = start_server("threads_switch_up", extra_env={**VERBOSE, threads.OPENMP_VARIABLE: "1"})
    folder = server.model_repository / LARGER
    _, config = read_config(folder)
    config.parameters[threads.THREAD_COUNT_PARAMETER].string_value = "2"
    plan = plan_warmup(config, group_sizes=range(1, GROUP_MAX + 1), batch_sizes=MIXED_BATCH_SIZES)
    config.model_warmup.extend(plan.samples)
    (folder / "config.pbtxt").write_bytes(render_config(config))
    with httpclient.InferenceServerClient(server.http_url) as client:
        client.load_model(LARGER)
    hits, misses = probe(server, LARGER, LARGER_FEATURE_DIM, PROBED_GROUPS, MIXED_BATCH_SIZES)
    assert hits + misses == len(PROBED_GROUPS) * len(MIXED_BATCH_SIZES)
    assert misses > 0
