"""A server that cannot load on request (model-control mode ``none``: every
model loaded at start-up) is warmed with inference requests over the plan."""

import json
import shutil
import time

import pytest

from triton_warmup.client import warm as warm_cli
from triton_warmup.report import WarmupReport
from live_server import (
    EXAMPLE_MODELS,
    executions,
    load_windows,
    model_states,
    recorded_inputs,
    repository_snapshot,
    request_shapes,
)
from target_models import write_recording_model

MODULE_TIMEOUT_S = 240

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

FEATURE_DIMS = {"model-v1": 64, "model-v2": 128, "model-v3": 256}


@pytest.fixture(scope="module")
def server(start_server, template_repository, tmp_path_factory):
    # model-v1 records the data it receives; every model loads at start-up.
    template = shutil.copytree(template_repository, tmp_path_factory.mktemp("requests_mode") / "template")
    write_recording_model(template, "model-v1")
    return start_server("requests_mode", template, model_control_mode="none")


def test_auto_mode_detects_the_server_and_sends_requests_to_loaded_models(run_cli, server):
    assert [model_states(server)[name] for name in EXAMPLE_MODELS] == ["READY"] * 3
    before = repository_snapshot(server.model_repository)
    loads_before = {name: len(load_windows(server, name)) for name in EXAMPLE_MODELS}
    sent_at = time.time()
    result = run_cli(warm_cli.main, "-u", server.http_url, "--group-size-max", "2", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = WarmupReport.from_dict(json.loads(result.stdout))
    assert report.mode == "requests"
    assert "runs in none model-control mode" in report.mode_reason
    assert "served traffic while it was warmed" in report.limitation
    assert report.loaded == EXAMPLE_MODELS
    # Nothing on disk changed and nothing was reloaded.
    assert repository_snapshot(server.model_repository) == before
    assert {name: len(load_windows(server, name)) for name in EXAMPLE_MODELS} == loads_before
    for entry in report.models:
        assert entry.served_before_warm is True
        assert entry.requests_sent == entry.warmup_samples * entry.count
        window = (sent_at, time.time())
        shapes = sorted(tuple(shape["x"]) for shape in request_shapes(server, entry.name, window))
        expected = sorted(
            (batch, group, FEATURE_DIMS[entry.name])
            for group in (1, 2) for batch in (1, 2, 4, 8) for _ in range(entry.count)
        )
        assert shapes == expected, entry.name
        # Each request ran alone: the batcher merged none of them.
        runs = executions(server, entry.name, window)
        assert len(runs) == len(expected) and all(run["requests"] == 1 for run in runs)


def test_load_mode_is_refused_with_the_reason_and_changes_nothing(run_cli, server):
    before = repository_snapshot(server.model_repository)
    result = run_cli(warm_cli.main, "-i", "grpc", "-u", server.grpc_url, "--mode", "load",
                        "--models", "model-v1", "--group-size-max", "2")
    # The helper refused the request as bad (INVALID_ARG): exit 2.
    assert result.returncode == 2
    assert "MODE: load needs a server in explicit model-control mode" in result.stderr
    assert "use MODE requests" in result.stderr
    assert repository_snapshot(server.model_repository) == before


def test_plan_file_works_in_requests_mode_too(run_cli, server):
    sent_at = time.time()
    result = run_cli(warm_cli.main, "-i", "grpc", "-u", server.grpc_url, "--plan",
                        str(server.model_repository.parent.parent / "plan.yaml"))
    # The plan file does not exist: a usage error before any request.
    assert result.returncode == 2 and "cannot read the plan" in result.stderr
    plan = server.workdir / "plan.yaml"
    plan.write_text(
        "models:\n  model-v1:\n    group_size_max: 3\n    batch_sizes: [2]\n"
        "    data:\n      mask: {file: mask_all_items.bin}\n"
    )
    result = run_cli(warm_cli.main, "-i", "grpc", "-u", server.grpc_url, "--plan", str(plan))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warmed with inference requests: ['model-v1']" in result.stdout
    records = recorded_inputs(server, "model-v1", (sent_at, time.time()))
    assert sorted(tuple(record["shapes"]["mask"]) for record in records) == [
        (2, group) for group in (1, 2, 3) for _ in range(3)
    ]
    # The file's ones, read the way Triton reads input_data_file, reached
    # the model's forward.
    assert all(record["sums"]["mask"] == 2 * record["shapes"]["mask"][1] for record in records)
