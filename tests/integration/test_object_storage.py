"""A model repository in S3: the real tritonserver serves
``s3://http://127.0.0.1:PORT/models/repo`` from moto's S3 server, and the
helper warms its models from there.

What is checked is read from Triton (the config it serves, its log's warmup
runs) and from the bucket (every object's bytes, before and after).
"""

import json
import shutil
import tempfile

import numpy as np
import pytest
import yaml

from triton_warmup.client import auto_complete_flag
from triton_warmup.client import coverage as coverage_command
from triton_warmup.client import from_trace, warm
from triton_warmup.helper.repository import ObjectStoreRepository, RepositoryError
from triton_warmup.report import WarmupReport
from live_server import kernel_segfaults, model_states, served_config, serving, stub_processes, warmup_runs
from bench.object_stores import gcs_server, s3_server
from trace_files import v1_request, write_trace

# moto's server and two tritonservers start; each load reads the bucket.
MODULE_TIMEOUT_S = 600
pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

MODELS = ("warmup_helper", "model-v1", "model-v2")
# model-v2's hand-written sample: one request of x [4, 128] and mask [4].
X_DATA = np.linspace(-1, 1, 4 * 128, dtype=np.float32)
MASK_DATA = np.ones(4, dtype=np.int64)


def bucket_repository(template, destination):
    """The models the bucket holds, model-v2 with hand-written sample data."""
    for name in MODELS:
        shutil.copytree(template / name, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
    warmup = destination / "model-v2" / "warmup"
    warmup.mkdir(exist_ok=True)
    (warmup / "x.bin").write_bytes(X_DATA.tobytes())
    (warmup / "mask.bin").write_bytes(MASK_DATA.tobytes())
    return destination


@pytest.fixture(scope="module")
def s3(tmp_path_factory, template_repository):
    folder = tmp_path_factory.mktemp("s3")
    with s3_server(folder / "moto.log") as server:
        server.upload(bucket_repository(template_repository, folder / "repository"))
        yield server


@pytest.fixture(scope="module")
def server(s3, tmp_path_factory):
    with serving(s3.url(), tmp_path_factory.mktemp("triton-s3"), extra_env=s3.environment) as running:
        yield running


@pytest.fixture(scope="module")
def bucket_before(s3):
    return s3.snapshot()


def warm_json(run_cli, server, *args):
    result = run_cli(warm.main, "-u", server.http_url, "--json", *args)
    report = WarmupReport.from_dict(json.loads(result.stdout)) if result.stdout.strip() else None
    return result, report


def test_a_model_in_s3_is_warmed_before_ready_and_the_bucket_is_unchanged(server, s3, bucket_before, run_cli):
    result, report = warm_json(run_cli, server, "--models", "model-v1", "--group-size-max", "4", "--batch-sizes", "1", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    entry = report.entry("model-v1")
    assert entry.ready and not entry.config_written
    assert s3.url() in entry.fallback and "object storage" in entry.fallback
    # Triton serves the planned samples and ran each on the instance before READY.
    served = served_config(server, "model-v1")["model_warmup"]
    assert len(served) == entry.warmup_samples == 4 * 2
    runs = warmup_runs(server, "model-v1")
    assert {run["sample"] for run in runs} == {sample["name"] for sample in served}
    assert len(runs) == entry.warmup_samples * entry.count
    # Nothing was written into the bucket, and no local copy is named.
    assert s3.snapshot() == bucket_before
    assert "warmup_helper.repository." not in result.stdout


def test_a_plan_with_data_files_in_the_bucket(server, s3, bucket_before, run_cli, tmp_path):
    plan = tmp_path / "plan.json"
    sample = {"batch_size": 1, "inputs": {"x": [4, 128], "mask": [4]},
              "data": {"x": {"file": "x.bin"}, "mask": {"file": "mask.bin"}}}
    plan.write_text(json.dumps({"models": {"model-v2": {"samples": [sample]}}}))
    result, report = warm_json(run_cli, server, "--plan", str(plan))
    assert result.returncode == 0, result.stdout + result.stderr
    entry = report.entry("model-v2")
    assert entry.ready and entry.preflight.samples_checked == 1
    (served,) = served_config(server, "model-v2")["model_warmup"]
    assert {name: spec["input_data_file"] for name, spec in served["inputs"].items()} == {"x": "x.bin", "mask": "mask.bin"}
    assert len(warmup_runs(server, "model-v2")) == entry.count
    assert "failed to run warmup" not in server.log_text()
    assert s3.snapshot() == bucket_before


def test_a_traffic_plan_from_the_served_configs(server, s3, bucket_before, run_cli, tmp_path):
    # model-v1 is READY (first test): its served config is what -u reads.
    assert model_states(server).get("model-v1") == "READY"
    shapes = [(1, 3)] * 6 + [(2, 7)] * 3 + [(4, 11)]
    trace = write_trace(tmp_path / "trace.json", [v1_request(batch, group) for batch, group in shapes])
    plan = tmp_path / "traffic.yaml"
    made = run_cli(from_trace.main, str(trace), "-u", server.http_url, "-o", str(plan), "-m", "model-v1")
    assert made.returncode == 0, made.stdout + made.stderr
    samples = yaml.safe_load(plan.read_text())["models"]["model-v1"]["samples"]
    assert [(sample["batch_size"], sample["inputs"]["x"][0]) for sample in samples] == [(4, 11), (2, 7), (1, 3)]
    assert all("data" not in sample for sample in samples)
    refused = run_cli(from_trace.main, str(trace), "-u", server.http_url, "-o", str(plan), "--data", "recorded")
    assert refused.returncode == 2 and "use -r" in refused.stderr

    result, report = warm_json(run_cli, server, "--plan", str(plan))
    assert result.returncode == 0, result.stdout + result.stderr
    assert report.entry("model-v1").ready
    covered = run_cli(coverage_command.main, str(trace), "-u", server.http_url, "-m", "model-v1", "--min-coverage", "1")
    assert covered.returncode == 0, covered.stdout + covered.stderr
    assert "PASS: 100.0% of 10 recorded requests" in covered.stdout
    assert s3.snapshot() == bucket_before


def test_a_model_absent_from_the_bucket_is_named_with_the_url(server, s3, run_cli):
    result = run_cli(warm.main, "-u", server.http_url, "--models", "nosuch")
    assert result.returncode != 0
    assert f"no model 'nosuch' in the model repository {s3.url()}" in result.stderr
    assert "/tmp" not in result.stderr


def test_revoked_credentials_and_an_unreachable_bucket_each_give_one_clear_error(
    template_repository, tmp_path, run_cli
):
    with s3_server(tmp_path / "moto.log", enforce_auth=True) as s3:
        s3.upload(bucket_repository(template_repository, tmp_path / "repository"))
        with serving(s3.url(), tmp_path / "triton", extra_env=s3.environment) as server:
            s3.revoke_key()
            revoked = run_cli(warm.main, "-u", server.http_url, "--models", "model-v1")
            assert revoked.returncode != 0
            assert f"cannot read the model repository {s3.url()}: access refused" in revoked.stderr
            s3.stop()
            unreachable = run_cli(warm.main, "-u", server.http_url, "--models", "model-v1")
            assert unreachable.returncode != 0
            assert f"cannot read the model repository {s3.url()}: Could not connect" in unreachable.stderr
            assert "/tmp" not in revoked.stderr + unreachable.stderr
            assert server.is_running()
            stubs = stub_processes(server)
        # The driver's errors sat in a reference cycle whose frames held the
        # helper's request until the stub's exit, after its shared memory
        # was gone: the helper's stub crashed there (docs/safety.md).
        assert stubs
        crashes = kernel_segfaults(stubs)
        if crashes is not None:
            assert crashes == []


def test_a_model_in_gcs_is_warmed_and_the_bucket_is_unchanged(template_repository, tmp_path, run_cli):
    with gcs_server(tmp_path / "gcs.log") as gcs:
        gcs.upload(bucket_repository(template_repository, tmp_path / "repository"))
        before = gcs.snapshot()
        with serving(gcs.url(), tmp_path / "triton", extra_env=gcs.environment) as server:
            result, report = warm_json(run_cli, server, "--models", "model-v1", "--group-size-max", "2",
                                       "--batch-sizes", "1", "4")
            assert result.returncode == 0, result.stdout + result.stderr
            entry = report.entry("model-v1")
            assert entry.ready and not entry.config_written and gcs.url() in entry.fallback
            served = served_config(server, "model-v1")["model_warmup"]
            assert len(served) == entry.warmup_samples == 2 * 2
            assert len(warmup_runs(server, "model-v1")) == entry.warmup_samples * entry.count
        assert gcs.snapshot() == before


def test_without_credentials_the_helper_reads_a_public_bucket_unsigned_as_triton_does(
    s3, template_repository, tmp_path, monkeypatch
):
    s3.upload(bucket_repository(template_repository, tmp_path / "repository"), bucket="public", public=True)
    # botocore finds no credentials in this process: the listing goes unsigned.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    repository = ObjectStoreRepository(s3.url(bucket="public"), {})
    copy = repository.mirror()
    try:
        assert repository.address.options.get("anon") is True
        assert (copy.root / "model-v1" / "config.pbtxt").is_file()
    finally:
        copy.close()


def test_a_bucket_that_does_not_exist_is_named_with_the_url(s3, monkeypatch):
    for name, value in s3.environment.items():
        monkeypatch.setenv(name, value)
    url = s3.url(bucket="no-such-bucket")
    with pytest.raises(RepositoryError, match=rf"^cannot read the model repository {url}: no such bucket or path"):
        ObjectStoreRepository(url, s3.environment).mirror()


def test_a_bucket_s_python_models_are_read_for_the_auto_complete_choice_and_nothing_is_left_behind(
        s3, bucket_before, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    setting = auto_complete_flag.repository_setting(s3.url(), s3.environment)
    # The helper's model.py came down from the bucket: it decided, with model-v1's and v2's configs.
    assert setting.disable, setting.reason
    assert "no config of the 3 models" in setting.reason and "Python model (1 here)" in setting.reason
    assert list(tmp_path.iterdir()) == [] and s3.snapshot() == bucket_before


def test_a_bucket_whose_helper_warms_at_start(s3, template_repository, tmp_path, run_cli):
    """warm_on_start with the repository in S3: the start plan is read from
    Triton's download of the helper's folder, the planned configs go through
    the load API, and nothing is written into the bucket."""
    from triton_warmup.client.install_helper import set_warm_on_start

    repository = tmp_path / "repository"
    for name in ("warmup_helper", "model-v1"):
        shutil.copytree(template_repository / name, repository / name, ignore=shutil.ignore_patterns("__pycache__"))
    plan = tmp_path / "start.yaml"
    plan.write_text("models:\n  model-v1: {group_size_max: 3, batch_sizes: [1]}\n")
    set_warm_on_start(repository / "warmup_helper", str(plan))
    s3.upload(repository, prefix="started")
    before = s3.snapshot()
    with serving(s3.url(prefix="started"), tmp_path / "server", extra_env=s3.environment) as server:
        result = run_cli(warm.main, "-u", server.http_url, "--start-report", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        report = WarmupReport.from_dict(json.loads(result.stdout))
        entry = report.entry("model-v1")
        assert entry.ready and not entry.config_written and entry.warmup_samples == 3
        served = served_config(server, "model-v1")["model_warmup"]
        runs = warmup_runs(server, "model-v1")
        assert {run["sample"] for run in runs} == {sample["name"] for sample in served} and len(served) == 3
    assert s3.snapshot() == before


def test_a_bucket_repository_learns_in_place_and_nothing_is_written_into_it(s3, template_repository, tmp_path):
    """adapt with the repository in S3 (docs/adapt.md): the recurring shape
    runs on the serving instance, and the bucket keeps every byte."""
    from live_server import model_statistics, template_with_helper_parameters, wait_for_log
    from test_adapt import send, steady_traffic

    repository = tmp_path / "repository"
    template_with_helper_parameters(template_repository, tmp_path / "template", watch_rate="1", adapt="on")
    for name in ("warmup_helper", "model-v1"):
        shutil.copytree(tmp_path / "template" / name, repository / name, ignore=shutil.ignore_patterns("__pycache__"))
    s3.upload(repository, prefix="learning")
    before = s3.snapshot()
    traces = tmp_path / "traces"
    traces.mkdir(mode=0o700)
    with serving(s3.url(prefix="learning"), tmp_path / "server", extra_env=s3.environment,
                 extra_args=[f"--trace-config=triton,file={traces / 'trace.json'}"]) as server:
        assert warm.main(["-u", server.http_url, "--models", "model-v1", "--group-size-max", "3",
                          "--batch-sizes", "1"]) == 0
        wait_for_log(server, ["traffic watch on for 'model-v1'"], timeout=60)
        count = model_statistics(server, "model-v1")["inference_count"]
        with steady_traffic(server) as tally:
            send(server, 5, count=3)
            log = wait_for_log(server, ["learned 'model-v1'"], timeout=90)
        assert not tally["failed"] and tally["not_ready"] == 0, tally
        assert "NOT written" in log and "object storage" in log
        # The sightings, the steady requests, the preflight's run and 3 in place.
        assert model_statistics(server, "model-v1")["inference_count"] - count == 3 + tally["requests"] + 1 + 3
    assert s3.snapshot() == before
