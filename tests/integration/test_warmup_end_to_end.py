"""One warmup request brings model-v1..v3 from UNAVAILABLE to READY, warm.

One server for the module: the CLI warms the three example models over HTTP
once (the ``warmed`` fixture); the tests then check what the server and the
files say, and send further requests over gRPC.
"""

import json
import threading

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from triton_warmup.helper.config_rewrite import read_config
from triton_warmup.client import warm as warm_cli, states as states_cli
from triton_warmup.report import WarmupReport
from live_server import (
    EXAMPLE_MODELS,
    load_windows,
    model_states,
    send_warmup,
    model_statistics,
    warmup_inputs,
    warmup_runs,
)
from triton_warmup.helper.warmup_plan import DEFAULT_WARMUP_COUNT, GENERATED_PREFIX

FEATURE_DIMS = {"model-v1": 64, "model-v2": 128, "model-v3": 256}
GROUP_SIZES = [1, 2, 3]
# model-v1..v3 have max_batch_size 8 and no preferred sizes of their own.
DEFAULT_BATCH_SIZES = [1, 2, 4, 8]

# Server start (~3 s) plus three models loaded with 12 samples each (well
# under a second each); the margin is for a loaded CI machine.
MODULE_SETUP_TIMEOUT_S = 240
# A reload of one model and a few inferences.
SINGLE_LOAD_TIMEOUT_S = 120

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_SETUP_TIMEOUT_S)]


@pytest.fixture(scope="module")
def server(start_server):
    return start_server("end_to_end")


@pytest.fixture(scope="module")
def states_before(server):
    return model_states(server)


@pytest.fixture(scope="module")
def warmed(run_cli, server, states_before):
    """The CLI's warmup of model-v1..v3 over HTTP, as a user runs it."""
    result = run_cli(warm_cli.main, "-u", server.http_url,
        "--models", *EXAMPLE_MODELS,
        "--feature-dims", *(str(FEATURE_DIMS[name]) for name in EXAMPLE_MODELS),
        "--group-size-min", str(GROUP_SIZES[0]),
        "--group-size-max", str(GROUP_SIZES[-1]),
    )
    return result


def test_models_are_not_ready_before_the_warmup(states_before):
    for name in EXAMPLE_MODELS:
        assert states_before[name] != "READY"
    assert states_before["warmup_helper"] == "READY"


def test_cli_reports_every_model_warm(warmed):
    assert warmed.returncode == 0, warmed.stdout + warmed.stderr
    assert f"model loaded: {EXAMPLE_MODELS}" in warmed.stdout
    assert f"PASS: Warmup done for models: {EXAMPLE_MODELS}" in warmed.stdout
    table_rows = [line for line in warmed.stdout.splitlines() if line.startswith("model-v")]
    assert len(table_rows) == 3 and all(" READY " in row for row in table_rows)


def test_models_are_ready_after_the_warmup(run_cli, server, warmed):
    states = model_states(server)
    assert [states[name] for name in EXAMPLE_MODELS] == ["READY"] * 3
    printed = run_cli(states_cli.main, "-u", server.http_url)
    assert printed.returncode == 0
    for name in EXAMPLE_MODELS:
        assert f"{{'name': '{name}', 'version': '1', 'state': 'READY'}}" in printed.stdout


def test_each_config_holds_exactly_group_sizes_times_batch_sizes_samples(server, warmed):
    for name in EXAMPLE_MODELS:
        _, config = read_config(server.model_repository / name)
        planned = {
            (sample.batch_size, tuple(sample.inputs["x"].dims), tuple(sample.inputs["mask"].dims))
            for sample in config.model_warmup
            if sample.name.startswith(GENERATED_PREFIX)
        }
        expected = {
            (batch, (group, FEATURE_DIMS[name]), (group,))
            for group in GROUP_SIZES
            for batch in DEFAULT_BATCH_SIZES
        }
        assert len(config.model_warmup) == len(expected)
        assert planned == expected


def test_every_planned_shape_ran_on_the_model_before_it_was_ready(server, warmed):
    for name in EXAMPLE_MODELS:
        windows = load_windows(server, name)
        assert len(windows) == 1, f"{name} was loaded {len(windows)} times"
        # Between Triton's "loading" and "successfully loaded" lines.
        runs = warmup_runs(server, name, windows[0])
        for group in GROUP_SIZES:
            for batch in DEFAULT_BATCH_SIZES:
                # Triton hands a batch-N sample over as N requests; the
                # libtorch backend runs them in one execute.
                matching = [
                    run
                    for run in runs
                    if run["requests"] == batch
                    and run["shapes"] == {"x": [batch, group, FEATURE_DIMS[name]], "mask": [batch, group]}
                ]
                assert sorted(run["iteration"] for run in matching) == list(range(1, DEFAULT_WARMUP_COUNT + 1)), (
                    name, group, batch, runs)
        # Triton's statistics agree: every warmup run is an execution of the
        # loaded version (no request has reached it yet), per batch size.
        stats = model_statistics(server, name)
        assert stats["execution_count"] == len(GROUP_SIZES) * len(DEFAULT_BATCH_SIZES) * DEFAULT_WARMUP_COUNT
        assert {entry["batch_size"]: entry["compute_infer"]["count"] for entry in stats["batch_stats"]} == {
            batch: len(GROUP_SIZES) * DEFAULT_WARMUP_COUNT for batch in DEFAULT_BATCH_SIZES
        }


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_warm_models_answer_like_the_torchscript_file(server, warmed, protocol, open_client):
    module = grpcclient if protocol == "grpc" else httpclient
    client = open_client(server, protocol)
    rng = np.random.default_rng(0)
    for name in EXAMPLE_MODELS:
        x = rng.standard_normal((2, 5, FEATURE_DIMS[name])).astype(np.float32)
        mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=np.int64)
        inputs = [module.InferInput("x", list(x.shape), "FP32"), module.InferInput("mask", list(mask.shape), "INT64")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(mask)
        served = client.infer(name, inputs).as_numpy("output")
        local = torch.jit.load(str(server.model_repository / name / "1" / "model.pt"))
        expected = local(torch.from_numpy(x), torch.from_numpy(mask)).detach().numpy()
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(SINGLE_LOAD_TIMEOUT_S)
def test_same_request_again_over_grpc_changes_and_reloads_nothing(server, warmed):
    before = {name: (server.model_repository / name / "config.pbtxt").read_bytes() for name in EXAMPLE_MODELS}
    loads_before = server.log_text().count('"loading: model-v')
    loaded, report = send_warmup(
        server,
        "grpc",
        warmup_inputs(EXAMPLE_MODELS, GROUP_SIZES[0], GROUP_SIZES[-1], [FEATURE_DIMS[n] for n in EXAMPLE_MODELS]),
    )
    assert loaded == EXAMPLE_MODELS
    assert [entry.config_changed for entry in report.models] == [False] * 3
    after = {name: (server.model_repository / name / "config.pbtxt").read_bytes() for name in EXAMPLE_MODELS}
    assert after == before
    assert server.log_text().count('"loading: model-v') == loads_before


@pytest.mark.timeout(SINGLE_LOAD_TIMEOUT_S)
def test_clients_over_grpc_print_json_for_scripts(run_cli, server, warmed):
    result = run_cli(warm_cli.main, "-i", "grpc", "-u", server.grpc_url, "--json",
        "--models", *EXAMPLE_MODELS,
        "--group-size-min", str(GROUP_SIZES[0]), "--group-size-max", str(GROUP_SIZES[-1]),
    )
    assert result.returncode == 0, result.stderr
    report = WarmupReport.from_dict(json.loads(result.stdout))
    assert report.loaded == EXAMPLE_MODELS and report.failed == []
    assert [entry.config_changed for entry in report.models] == [False] * 3
    assert "PASS: Warmup done" in result.stderr

    index = run_cli(states_cli.main, "-i", "grpc", "-u", server.grpc_url, "--json")
    assert index.returncode == 0
    states = {entry["name"]: entry.get("state") for entry in json.loads(index.stdout)}
    assert {name: states[name] for name in EXAMPLE_MODELS} == dict.fromkeys(EXAMPLE_MODELS, "READY")


@pytest.mark.timeout(SINGLE_LOAD_TIMEOUT_S)
def test_new_plan_warms_a_ready_model_in_place_while_it_keeps_serving(server, warmed, open_client):
    """A READY model is not skipped: its new samples run on the serving
    instance, which answers requests throughout, and the file takes them for
    the next load; nothing is reloaded (docs/rewarm.md)."""
    client = open_client(server)
    x = np.ones((1, 3, 64), dtype=np.float32)
    mask = np.ones((1, 3), dtype=np.int64)
    done = threading.Event()
    outcomes = []

    def keep_sending():
        inputs = [httpclient.InferInput("x", [1, 3, 64], "FP32"), httpclient.InferInput("mask", [1, 3], "INT64")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(mask)
        while not done.is_set():
            try:
                client.infer("model-v1", inputs)
                outcomes.append(None)
            except Exception as error:  # noqa: BLE001 - the test counts failures
                outcomes.append(error)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        loaded, report = send_warmup(
            server, "grpc", warmup_inputs(["model-v1"], group_min=5, group_max=6, batch_sizes=[2])
        )
    finally:
        done.set()
        sender.join()

    assert loaded == ["model-v1"]
    (entry,) = report.models
    assert entry.config_changed is True and entry.warmup_samples == 2
    _, config = read_config(server.model_repository / "model-v1")
    assert sorted(sample.name for sample in config.model_warmup) == [
        f"{GENERATED_PREFIX}group5_batch2",
        f"{GENERATED_PREFIX}group6_batch2",
    ]
    assert entry.rewarm == "in place" and entry.in_place_runs == 2 * DEFAULT_WARMUP_COUNT
    assert len(load_windows(server, "model-v1")) == 1
    assert model_states(server)["model-v1"] == "READY"
    failures = [error for error in outcomes if error is not None]
    assert outcomes and not failures, failures[:3]
