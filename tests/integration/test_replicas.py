"""Replicas: one triton-warmup call warms several servers at once.

Three servers, each on its own copy of the repository (the replicas of a
Deployment, each with the repository baked into its image). Each server's
own log shows that its own warmup ran. Replicas on one
shared volume, warmed the same way, are in test_concurrency.py.
"""

import json
import shutil

import pytest

from triton_warmup.embedded import free_port
from triton_warmup.client import warm as warm_cli
from live_server import (
    EXAMPLE_MODELS,
    load_windows,
    model_states,
    wait_for_log,
    warmup_runs,
)

# Three servers start (about 3 s each); each loads the three example models
# once (under a second each on the native backend); the margin is for a
# loaded CI machine.
MODULE_TIMEOUT_S = 300

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

GROUP_MAX = 2
# The example models batch up to 8: batch sizes 1, 2, 4, 8.
SHAPE_FLAGS = ["--group-size-max", str(GROUP_MAX)]
ONLY_ON_ONE_SERVER = "only-on-one-server"


@pytest.fixture(scope="module")
def own_copies(start_server, template_repository, tmp_path_factory):
    """Three servers, each serving its own copy of the repository; the last
    copy has one model more than the others."""
    template = tmp_path_factory.mktemp("own-copies") / "template"
    shutil.copytree(template_repository, template)
    servers = []
    for name in ("a", "b", "c"):
        if name == "c":
            shutil.copytree(template / "model-v1", template / ONLY_ON_ONE_SERVER)
            config = template / ONLY_ON_ONE_SERVER / "config.pbtxt"
            config.write_text(config.read_text().replace('name: "model-v1"', f'name: "{ONLY_ON_ONE_SERVER}"'))
        servers.append(start_server(f"replica-{name}", template))
    return servers


def fan_out(run_cli, servers, *flags):
    urls = [flag for server in servers for flag in ("-u", server.http_url)]
    return run_cli(warm_cli.main, *urls, *flags, "--json")


def test_one_call_warms_three_servers_each_in_its_own_log(run_cli, own_copies):
    result = fan_out(run_cli, own_copies, *SHAPE_FLAGS)

    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)["servers"]
    assert [entry["url"] for entry in outcome] == [server.http_url for server in own_copies]
    for server, entry in zip(own_copies, outcome):
        assert entry["exit_code"] == 0 and not entry["report"]["failed"], entry
        states = model_states(server)
        assert all(states[model] == "READY" for model in EXAMPLE_MODELS), states
        # The helper of this server served this server's own repository
        # copy and loaded every model.
        wait_for_log(server, [f"repository {server.model_repository},"]
                     + [f"warmup_helper: loading '{model}' with" for model in EXAMPLE_MODELS]
                     + [f"warmup_helper: '{model}' READY after" for model in EXAMPLE_MODELS])
        for model in EXAMPLE_MODELS:
            # This server's Triton ran every warmup run inside its load.
            (window,) = load_windows(server, model)
            planned = next(m for m in entry["report"]["models"] if m["name"] == model)
            runs = warmup_runs(server, model, window)
            assert len(runs) == planned["warmup_samples"] * planned["count"] * planned["instances"], model
    # Every server's results are shown under its URL, then one line each.
    for server in own_copies:
        assert f"== {server.http_url} ==" in result.stderr
    assert f"PASS: {len(own_copies)} servers warm" in result.stderr


def test_one_failing_server_fails_the_call_and_the_others_still_warm(run_cli, own_copies):
    first, _, third = own_copies

    result = fan_out(run_cli, [first, third], "--models", ONLY_ON_ONE_SERVER, "--group-size-max", "1")

    # The server without the model refused the request as bad (NOT_FOUND):
    # exit 2, the same as a bad request on one server.
    assert result.returncode == 2, result.stderr
    first_outcome, third_outcome = json.loads(result.stdout)["servers"]
    assert first_outcome["exit_code"] == 2 and ONLY_ON_ONE_SERVER in first_outcome["reason"]
    assert third_outcome["exit_code"] == 0
    assert model_states(third)[ONLY_ON_ONE_SERVER] == "READY"
    assert ONLY_ON_ONE_SERVER not in model_states(first)
    assert f"FAILED: 1 of 2 servers did not warm: ['{first.http_url}']" in result.stderr


def test_a_server_that_does_not_answer_is_reported_with_exit_3(run_cli, own_copies):
    silent = f"localhost:{free_port()}"

    result = run_cli(warm_cli.main, "-u", own_copies[0].http_url, "-u", silent,
                        "--models", "model-v1", "--group-size-max", "1")

    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith(own_copies[0].http_url) and "PASS" in line for line in lines), result.stdout
    assert any(line.startswith(silent) and "FAILED  no Triton server answers" in line for line in lines)
