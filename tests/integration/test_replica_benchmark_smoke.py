"""bench/replica_benchmark.py runs end to end (``--smoke``: two small plan
sizes, up to two replicas) and reports every figure it promises. The times
are for `make bench` to report, not for tests to judge."""

import json

import pytest
import yaml

from live_server import PROJECT_ROOT, run_module

# Four replica starts one after another, two at once, two fan-out re-warms:
# about a minute here.
MODULE_TIMEOUT_S = 400

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    output = tmp_path_factory.mktemp("replica-bench")
    finished = run_module("bench.replica_benchmark", "--smoke", "--output-dir", str(output),
                          timeout=MODULE_TIMEOUT_S - 30)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return output, json.loads((output / "replica_benchmark.json").read_text())


def test_each_plan_size_is_timed_from_the_start_to_a_ready_pod(results):
    _, data = results
    runs = data["plan_sizes"]["runs"]
    assert [run["group_size_max"] for run in runs] == data["settings"]["group_sizes"]
    for run in runs:
        assert 0 < run["server_up_s"] < run["pod_ready_s"]
        assert set(run["load_s"]) == set(run["samples_per_model"]) == {"model-v1", "model-v2", "model-v3"}
    # Twice the group sizes, twice the samples: the samples come from the helper's own log.
    small, large = runs
    assert large["samples"] == small["samples"] * large["group_size_max"] // small["group_size_max"]
    assert data["plan_sizes"]["fit"]["r_squared"] <= 1


def test_replicas_at_once_fan_out_and_probe_are_reported(results):
    _, data = results
    together = data["together"]
    assert [row["replicas"] for row in together["together"]] == [1, 2]
    assert all(len(row["pod_ready_s"]) == row["replicas"] for row in together["together"])
    # The changed count reaches every model of every replica the call names.
    (plan,) = yaml.safe_load((PROJECT_ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())["data"].values()
    models = len(yaml.safe_load(plan)["models"])
    assert [(row["servers"], row["reloaded"]) for row in together["fan_out"]] == [(2, 2 * models), (1, models)]
    assert together["probe"]["runs"] > 0 and together["probe"]["median_s"] > 0


def test_markdown_is_written(results):
    output, _ = results
    text = (output / "replica_benchmark.md").read_text()
    for heading in ("Time to a ready pod vs plan size", "Replicas started at once", "fan-out", "readiness probe"):
        assert heading in text, heading
