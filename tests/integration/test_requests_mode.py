"""A server that cannot load on request (model-control mode ``none``: every
model loaded at start-up) is warmed with inference requests over the plan."""

import json
import time

import pytest

from live_server import (
    EXAMPLE_MODELS,
    load_windows,
    model_states,
    repository_snapshot,
    running_server,
    run_script,
    standin_runs,
)

MODULE_TIMEOUT_S = 240

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

FEATURE_DIMS = {"model-v1": 64, "model-v2": 128, "model-v3": 256}


@pytest.fixture(scope="module")
def server(template_repository, tmp_path_factory):
    with running_server(
        template_repository, tmp_path_factory.mktemp("requests_mode"), model_control_mode="none"
    ) as server:
        yield server


def test_auto_mode_detects_the_server_and_sends_requests_to_loaded_models(server):
    assert [model_states(server)[name] for name in EXAMPLE_MODELS] == ["READY"] * 3
    before = repository_snapshot(server.model_repository)
    loads_before = {name: len(load_windows(server, name)) for name in EXAMPLE_MODELS}
    sent_at = time.time()
    result = run_script("warmup_models.py", "-u", server.http_url, "--group-size-max", "2", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["mode"] == "requests"
    assert "runs in none model-control mode" in report["mode_reason"]
    assert "served traffic while it was warmed" in report["limitation"]
    assert report["loaded"] == EXAMPLE_MODELS
    # Nothing on disk changed and nothing was reloaded.
    assert repository_snapshot(server.model_repository) == before
    assert {name: len(load_windows(server, name)) for name in EXAMPLE_MODELS} == loads_before
    for entry in report["models"]:
        assert entry["served_before_warm"] is True
        assert entry["requests_sent"] == entry["warmup_samples"] * entry["count"]
        runs = standin_runs(server, entry["name"], (sent_at, time.time()))
        shapes = sorted(tuple(run["shapes"]["x"]) for run in runs)
        expected = sorted(
            (batch, group, FEATURE_DIMS[entry["name"]])
            for group in (1, 2) for batch in (1, 2, 4, 8) for _ in range(entry["count"])
        )
        assert shapes == expected, entry["name"]


def test_load_mode_is_refused_with_the_reason_and_changes_nothing(server):
    before = repository_snapshot(server.model_repository)
    result = run_script("warmup_models.py", "-i", "grpc", "-u", server.grpc_url, "--mode", "load",
                        "--models", "model-v1", "--group-size-max", "2")
    assert result.returncode == 1
    assert "MODE: load needs a server in explicit model-control mode" in result.stderr
    assert "use MODE requests" in result.stderr
    assert repository_snapshot(server.model_repository) == before


def test_plan_file_works_in_requests_mode_too(server):
    sent_at = time.time()
    result = run_script("warmup_models.py", "-i", "grpc", "-u", server.grpc_url, "--plan",
                        str(server.model_repository.parent.parent / "plan.yaml"))
    # The plan file does not exist: a usage error before any request.
    assert result.returncode == 2 and "cannot read the plan" in result.stderr
    plan = server.workdir / "plan.yaml"
    plan.write_text(
        "models:\n  model-v1:\n    group_size_max: 3\n    batch_sizes: [2]\n"
        "    data:\n      mask: {file: mask_all_items.bin}\n"
    )
    result = run_script("warmup_models.py", "-i", "grpc", "-u", server.grpc_url, "--plan", str(plan))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warmed with inference requests: ['model-v1']" in result.stdout
    runs = standin_runs(server, "model-v1", (sent_at, time.time()))
    assert sorted(tuple(run["shapes"]["mask"]) for run in runs) == [(2, group) for group in (1, 2, 3) for _ in range(3)]
    # The file's ones, read the way Triton reads input_data_file.
    assert all(run["sums"]["mask"] == 2 * run["shapes"]["mask"][1] for run in runs)
