"""The tools as a user runs them on a server in explicit mode: a plan file with
real sample data, --all, the readiness probe, the requests mode on demand, and
triton-warmup-serve --warmup. Each test runs the scripts as subprocesses."""

import json
import subprocess
import threading
import time

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from triton_warmup.helper.config_rewrite import read_config
from triton_warmup.client import flags as client_flags, warm as warm_cli, states as states_cli
from triton_warmup.report import WarmupReport
from live_server import (
    COMMANDS,
    EXAMPLE_MODELS,
    PROJECT_ROOT,
    free_port,
    load_windows,
    model_states,
    recorded_inputs,
    request_shapes,
)
from target_models import write_corrupt_model, write_recording_model

EXAMPLE_PLAN = PROJECT_ROOT / "plans" / "example.yaml"
# Server start plus a few loads of three models; the margin is for a busy machine.
MODULE_TIMEOUT_S = 240
# Index calls per client while hidden entries come and go as fast as this
# process can: without the retry, 1-20% of HTTP calls and about 20% of gRPC
# calls failed (2 CPUs).
INDEX_READS = 200

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]


@pytest.fixture(scope="module")
def server(start_server):
    server = start_server("using_it")
    # model-v1 (not loaded yet) records the data its forward receives.
    write_recording_model(server.model_repository, "model-v1")
    return server


@pytest.fixture(scope="module")
def planned(run_cli, server):
    """The example plan file, warmed through the CLI over HTTP."""
    return run_cli(warm_cli.main, "-u", server.http_url, "--plan", str(EXAMPLE_PLAN), "--json")


def test_plan_file_warms_each_model_with_its_own_plan(server, planned):
    assert planned.returncode == 0, planned.stdout + planned.stderr
    report = WarmupReport.from_dict(json.loads(planned.stdout))
    assert report.mode == "load" and report.loaded == EXAMPLE_MODELS
    entries = {entry.name: entry for entry in report.models}
    # plans/example.yaml: model-v1 groups 1..8, model-v2 batch sizes 1, 4, 8,
    # model-v3 the defaults (groups 1..4, batch sizes from its config).
    assert entries["model-v1"].group_sizes == list(range(1, 9))
    assert entries["model-v2"].batch_sizes == [1, 4, 8]
    assert entries["model-v3"].group_sizes == [1, 2, 3, 4]
    assert [entries[name].warmup_samples for name in EXAMPLE_MODELS] == [8 * 4, 4 * 3, 4 * 4]
    assert all(entry.count == 3 for entry in entries.values())
    # Plain progress lines on stderr (not a terminal), one per state change.
    assert "model-v1 READY" in planned.stderr


def test_real_sample_data_from_the_warmup_folder_reached_the_model(server, planned):
    _, config = read_config(server.model_repository / "model-v1")
    assert {sample.inputs["mask"].input_data_file for sample in config.model_warmup} == {"mask_all_items.bin"}
    # Every forward model-v1's file ran so far: each sample once in the
    # preflight's scratch copy, then count times in Triton's warmup. (Its
    # records are counted over the whole log: with models loading at once,
    # torch's stderr and Triton's log lines do not keep their order well
    # enough to cut it at the load's window.)
    entry = WarmupReport.from_dict(json.loads(planned.stdout)).entry("model-v1")
    assert entry.preflight.samples_checked == len(config.model_warmup)
    records = recorded_inputs(server, "model-v1")
    assert len(records) == len(config.model_warmup) + sum(sample.count for sample in config.model_warmup)
    assert len(load_windows(server, "model-v1")) == 1
    for record in records:
        batch, group = record["shapes"]["mask"]
        # The file holds int64 ones: a mask that keeps every item, so each
        # forward's mask sums to batch x group (zero_data would sum to 0).
        assert record["sums"]["mask"] == batch * group, record


def test_what_only_the_server_can_check_comes_back_with_the_plan_files_line(run_cli, server, planned, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "defaults:\n  group_size_max: 2\nmodels:\n  model-v1:\n    data:\n"
        "      mask: {file: absent.bin}\n  model-v2:\n    batch_sizes: [1, 16]\n"
    )
    before = (server.model_repository / "model-v1" / "config.pbtxt").read_bytes()
    result = run_cli(warm_cli.main, "-u", server.http_url, "--plan", str(plan))
    # A bad plan, whether the client or the helper found it: exit 2.
    assert result.returncode == 2
    assert f"{plan}, line 6: models.model-v1.data.mask.file: no data file" in result.stderr
    plan.write_text(plan.read_text().replace("absent.bin", "mask_all_items.bin"))
    result = run_cli(warm_cli.main, "-i", "grpc", "-u", server.grpc_url, "--plan", str(plan))
    assert result.returncode == 2
    assert f"{plan}, line 8: models.model-v2.batch_sizes: 16 is too large" in result.stderr
    assert (server.model_repository / "model-v1" / "config.pbtxt").read_bytes() == before


def test_all_warms_every_model_the_repository_holds(run_cli, server, planned):
    result = run_cli(warm_cli.main, "-u", server.http_url, "--all", "--group-size-max", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = WarmupReport.from_dict(json.loads(result.stdout))
    assert sorted(report.loaded) == sorted(path.name for path in server.model_repository.iterdir()
                                           if path.name != "warmup_helper" and (path / "config.pbtxt").exists())
    # Each model that has a group dim; an ensemble's plan is its own range too.
    assert all(entry.group_sizes in ([1, 2], [1]) for entry in report.models), report.models


def test_requests_mode_on_demand_warms_without_a_reload(run_cli, server, planned):
    loads_before = {name: len(load_windows(server, name)) for name in EXAMPLE_MODELS}
    config_before = (server.model_repository / "model-v2" / "config.pbtxt").read_bytes()
    sent_at = time.time()
    result = run_cli(warm_cli.main, "-i", "grpc", "-u", server.grpc_url, "--mode", "requests",
        "--models", "model-v2", "--group-size-max", "3", "--batch-sizes", "1", "4",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mode requests: MODE requests" in result.stdout
    assert "NOTE: requests mode: each model was READY and served traffic" in result.stdout
    assert {name: len(load_windows(server, name)) for name in EXAMPLE_MODELS} == loads_before
    assert (server.model_repository / "model-v2" / "config.pbtxt").read_bytes() == config_before
    shapes = request_shapes(server, "model-v2", (sent_at, time.time()))
    for group in (1, 2, 3):
        for batch in (1, 4):
            # One request per run with the batch dimension in front; count 3.
            matching = [shape for shape in shapes if shape["x"] == [batch, group, 128]]
            assert len(matching) == 3, (group, batch, shapes)


def test_wait_ready_exits_0_once_every_named_model_is_ready(run_cli, server, planned):
    result = run_cli(states_cli.main, "-u", server.http_url, "--wait-ready", *EXAMPLE_MODELS)
    assert result.returncode == 0, result.stderr
    assert f"READY: {EXAMPLE_MODELS}" in result.stdout


def test_wait_ready_as_a_startup_probe_waits_for_the_warmup(run_cli, server, planned):
    with httpclient.InferenceServerClient(server.http_url) as client:
        client.unload_model("model-v3")
    while model_states(server)["model-v3"] != "UNAVAILABLE":
        time.sleep(0.2)
    probe = subprocess.Popen(
        [str(COMMANDS / "triton-warmup-states"), "-u", server.http_url,
         "--wait-ready", "model-v3", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(1.5)
    assert probe.poll() is None, "the probe must wait while model-v3 is not READY"
    warm = run_cli(warm_cli.main, "-u", server.http_url, "--models", "model-v3", "--group-size-max", "2")
    assert warm.returncode == 0, warm.stderr
    stdout, stderr = probe.communicate(timeout=60)
    assert probe.returncode == 0, stderr
    # The probe said READY only after Triton's own "successfully loaded" line.
    windows = load_windows(server, "model-v3")
    assert windows and "READY: ['model-v3']" in stdout


def test_the_index_is_read_while_entries_of_the_repository_come_and_go(server, planned):
    """A warmup adds and removes hidden entries in the repository folder
    (saved originals, temporary files, scratch copies). Triton fails an index
    call whose listing saw an entry that is gone when it stats it; the
    commands' index reads (live states, --wait-ready, --all) ask again."""
    stop = threading.Event()

    def churn():
        turn = 0
        while not stop.is_set():
            entry = server.model_repository / f".churn.{turn % 4}.tmp"
            entry.write_bytes(b"")
            entry.unlink()
            turn += 1

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    raw_failures = {}
    try:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            client = client_flags.client_module(protocol).InferenceServerClient(url)
            try:
                raw_failures[protocol] = 0
                for _ in range(INDEX_READS):
                    try:
                        client.get_model_repository_index()
                    except InferenceServerException as error:
                        assert client_flags.is_vanished_entry(error), error
                        raw_failures[protocol] += 1
                for _ in range(INDEX_READS):
                    names = {entry["name"] for entry in client_flags.repository_index(client, protocol)}
                    assert set(EXAMPLE_MODELS) <= names
            finally:
                client.close()
        # Without a failure here, the retry was never tried: Triton fixed its
        # listing, or this machine never hit the race.
        assert sum(raw_failures.values()), raw_failures
    finally:
        stop.set()
        churner.join()


def test_wait_ready_times_out_and_names_the_missing(run_cli, server, planned):
    with httpclient.InferenceServerClient(server.http_url) as client:
        client.unload_model("model-v3")
    result = run_cli(states_cli.main, "-u", server.http_url,
                        "--wait-ready", "model-v1", "model-v3", "--timeout", "1")
    assert result.returncode == 1
    assert "not READY within 1 s" in result.stderr and "model-v3" in result.stderr
    absent = run_cli(states_cli.main, "-u", server.http_url, "--wait-ready", "no-such-model")
    assert absent.returncode == 1 and "no model ['no-such-model']" in absent.stderr


def test_wait_ready_fails_at_once_for_a_model_that_failed_to_load(run_cli, server, planned):
    # Last in this module: a failed model makes the server-wide ready false.
    # model-v1's config with no model.pt: Triton lists it, and the load fails.
    broken = server.model_repository / "broken"
    (broken / "1").mkdir(parents=True)
    config = (server.model_repository / "model-v1" / "config.pbtxt").read_text()
    (broken / "config.pbtxt").write_text(config.replace('name: "model-v1"', 'name: "broken"'))
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(Exception):
            client.load_model("broken")
    started = time.monotonic()
    result = run_cli(states_cli.main, "-u", server.http_url,
                        "--wait-ready", "broken", "--timeout", "60", "--json")
    assert result.returncode == 1
    assert time.monotonic() - started < 30, "a failed load must not wait for the timeout"
    assert "FAILED: broken did not load" in result.stderr
    index = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert index["broken"]["state"] == "UNAVAILABLE" and index["broken"]["reason"]


def test_a_corrupt_model_file_fails_the_probe_in_one_readable_line(run_cli, server, planned):
    write_corrupt_model(server.model_repository, "corrupt")
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(Exception):
            client.load_model("corrupt")
    result = run_cli(states_cli.main, "-u", server.http_url, "--wait-ready", "corrupt", "--json")
    assert result.returncode == 1
    (failed,) = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert failed.startswith("FAILED: corrupt did not load: ") and "frame #" not in result.stderr
    entry = {entry["name"]: entry for entry in json.loads(result.stdout)}["corrupt"]
    assert "\n" not in entry["reason"] and "frame #" in entry["detail"]
    # --verbose prints Triton's whole text as well.
    verbose = run_cli(states_cli.main, "-u", server.http_url, "--wait-ready", "corrupt", "-v")
    assert verbose.returncode == 1 and "frame #" in verbose.stderr


def serve_with_plan(template_repository, workdir, plan, *command):
    argv = [
        str(COMMANDS / "triton-warmup-serve"),
        "--model-repository", str(template_repository), "--working-copy", "--workdir", str(workdir),
        "--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
        "--warmup", str(plan),
    ]
    http_url = f"localhost:{argv[argv.index('--http-port') + 1]}"
    if command:
        argv += ["--", *[part.replace("{url}", http_url) for part in command]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=MODULE_TIMEOUT_S)


def test_serve_warmup_says_ready_only_when_every_planned_model_is_warm(template_repository, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("defaults:\n  group_size_max: 2\nmodels:\n  model-v1:\n  model-v2:\n")
    result = serve_with_plan(
        template_repository, tmp_path / "serve", plan,
        str(COMMANDS / "triton-warmup-states"), "-u", "{url}",
        "--wait-ready", "model-v1", "model-v2", "--timeout", "1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.index("PASS: Warmup done") < out.index(f"READY: every model of {plan} is warm")
    # The command ran after the warmup and found both models READY at once.
    assert out.index(f"READY: every model of {plan}") < out.index("READY: ['model-v1', 'model-v2']")


def test_serve_warmup_stops_with_2_when_the_helper_refuses_the_plan(template_repository, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("models:\n  no-such-model:\n    group_size_max: 2\n")
    result = serve_with_plan(template_repository, tmp_path / "serve", plan)
    assert result.returncode == 2
    assert "no model 'no-such-model'" in result.stderr
    assert "stopping the server" in result.stderr
    assert "tritonserver stopped" in result.stdout
