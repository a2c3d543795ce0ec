"""Triggers at the same time: many on one server, two servers sharing one
repository (replicas on a shared volume, warmed by one fan-out call), and a trigger while a model is
still loading. Every request is answered, no config ends with duplicated
entries, and the files equal what a single request writes."""

import collections
import concurrent.futures
import json
import shutil
import threading
import time

import pytest
import tritonclient.http as httpclient

from triton_warmup.helper.config_rewrite import read_config
from triton_warmup.client import warm as warm_cli
from triton_warmup.report import WarmupReport
from live_server import (
    EXAMPLE_MODELS,
    load_windows,
    model_states,
    repository_snapshot,
    send_warmup,
    warmup_inputs,
)
from target_models import write_python_target
from triton_warmup.helper.warmup_plan import GENERATED_PREFIX

# Two servers start; each loads three models once; the slow model loads twice.
MODULE_TIMEOUT_S = 300

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

GROUP_MAX = 2
BATCH_SIZES = [1, 2]
PARALLEL_REQUESTS = 8
SLOW_INITIALIZE_S = 4


def plan(models):
    return warmup_inputs(models, 1, GROUP_MAX, batch_sizes=BATCH_SIZES)


@pytest.fixture(scope="module")
def shared_repository(template_repository, tmp_path_factory):
    repository = tmp_path_factory.mktemp("shared") / "model_repository"
    shutil.copytree(template_repository, repository)
    write_python_target(repository, "slow-to-load", initialize_seconds=SLOW_INITIALIZE_S)
    return repository


@pytest.fixture(scope="module")
def servers(start_server, shared_repository):
    """Two servers, as two replicas, on the same repository folder."""
    return start_server("replica-a", shared=shared_repository), start_server("replica-b", shared=shared_repository)


def assert_configs_hold_one_plan(repository, models):
    """Each config parses and holds every planned sample exactly once."""
    for model in models:
        _, config = read_config(repository / model)
        names = [sample.name for sample in config.model_warmup]
        duplicated = [name for name, seen in collections.Counter(names).items() if seen > 1]
        assert not duplicated, f"{model}: {duplicated}"
        generated = [name for name in names if name.startswith(GENERATED_PREFIX)]
        assert len(generated) == GROUP_MAX * len(BATCH_SIZES), f"{model}: {names}"


def test_two_servers_on_one_volume_take_turns_per_model(run_cli, servers, shared_repository):
    """Replicas on a shared volume, warmed at once by one fan-out call
    (triton-warmup with a -u per server, one thread each)."""
    urls = [word for server in servers for word in ("-u", server.http_url)]
    result = run_cli(warm_cli.main, *urls, "--models", *EXAMPLE_MODELS, "--group-size-max", str(GROUP_MAX),
        "--batch-sizes", *map(str, BATCH_SIZES), "--json",
    )

    assert result.returncode == 0, result.stderr
    reports = [WarmupReport.from_dict(entry["report"]) for entry in json.loads(result.stdout)["servers"]]
    for report in reports:
        assert [entry.name for entry in report.models] == EXAMPLE_MODELS, report
    for index, model in enumerate(EXAMPLE_MODELS):
        entries = [report.models[index] for report in reports]
        # Both servers planned the same samples. The lock file serialized
        # the writers: one server's hold ended before the other's began;
        # the second writer found the plan written and wrote nothing.
        assert entries[0].warmup_samples == entries[1].warmup_samples
        holds = sorted((entry.lock for entry in entries), key=lambda hold: hold.held_from)
        assert holds[0].held_until <= holds[1].held_from, (model, holds)
        assert sorted(entry.config_written for entry in entries) == [False, True], entries
    assert_configs_hold_one_plan(shared_repository, EXAMPLE_MODELS)
    for server in servers:
        states = model_states(server)
        assert all(states[model] == "READY" for model in EXAMPLE_MODELS)
    assert not list(shared_repository.glob("*/.config.pbtxt.*.tmp"))


def test_parallel_triggers_on_one_server_all_get_answers(servers, shared_repository):
    server = servers[0]
    # Overlapping subsets of the models, over both protocols.
    subsets = [EXAMPLE_MODELS[index % 3 :] + EXAMPLE_MODELS[: index % 3] for index in range(PARALLEL_REQUESTS)]
    subsets = [subset[: 1 + index % 3] for index, subset in enumerate(subsets)]
    protocols = ["http", "grpc"] * (PARALLEL_REQUESTS // 2)

    with concurrent.futures.ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        futures = [
            pool.submit(send_warmup, server, protocol, plan(subset))
            for subset, protocol in zip(subsets, protocols)
        ]
        results = [future.result() for future in futures]

    for subset, (loaded, report) in zip(subsets, results):
        assert loaded == subset and not report.failed, report
    assert_configs_hold_one_plan(shared_repository, EXAMPLE_MODELS)
    # The files are what a single request writes: one more changes nothing.
    before = repository_snapshot(shared_repository)
    loaded, report = send_warmup(server, "http", plan(EXAMPLE_MODELS))
    assert not any(entry.config_changed for entry in report.models)
    assert repository_snapshot(shared_repository) == before


def test_trigger_while_the_model_is_loading_waits_then_loads_its_plan(servers, shared_repository):
    """Triton loads one model at a time: the trigger's load starts when the
    load in progress ends, and the model becomes READY with the plan."""
    server = servers[1]
    first_load = {}

    def load_directly():
        with httpclient.InferenceServerClient(server.http_url, network_timeout=120) as client:
            client.load_model("slow-to-load")
        first_load["ended"] = time.time()

    loading_line = '"loading: slow-to-load:1"'
    loads_before = server.log_text().count(loading_line)
    loader = threading.Thread(target=load_directly)
    loader.start()
    # Triton's own log line, not the repository index: on a busy machine the
    # index call can block for the whole load and never show LOADING.
    deadline = time.monotonic() + 60
    while server.log_text().count(loading_line) == loads_before:
        assert time.monotonic() < deadline, "the direct load never started"
        time.sleep(0.05)

    triggered = time.time()
    loaded, report = send_warmup(server, "grpc", plan(["slow-to-load"]))
    answered = time.time()
    loader.join()

    assert loaded == ["slow-to-load"] and report.models[0].config_written is True
    first, second = load_windows(server, "slow-to-load")
    # The trigger came while the direct load was under way (its initialize
    # sleeps SLOW_INITIALIZE_S), and its own load began only after that one.
    assert first[0] <= triggered < first[1], (first, triggered)
    assert first[1] <= second[0] <= second[1] <= answered
    assert first_load["ended"] <= answered
    with httpclient.InferenceServerClient(server.http_url) as client:
        served = client.get_model_config("slow-to-load")
    assert len(served["model_warmup"]) == GROUP_MAX * len(BATCH_SIZES)
