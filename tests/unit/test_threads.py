"""The OpenMP thread count that keeps libtorch models warm (triton_warmup/threads.py)."""

import os
import pathlib
import subprocess
import sys

import pytest
from tritonclient.grpc import model_config_pb2

from repository_fixtures import warmup_request
from triton_warmup import threads
from triton_warmup.client import openmp_threads
from triton_warmup.helper.config_rewrite import read_config, render_config
from triton_warmup.helper.job_planning import PlanSettings, plan_jobs

ENTRYPOINT = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "entrypoint.sh"


def libtorch(name, count=None, **fields):
    config = model_config_pb2.ModelConfig(name=name, platform="pytorch_libtorch", **fields)
    if count is not None:
        config.parameters[threads.THREAD_COUNT_PARAMETER].string_value = str(count)
    return config


def machine(environ=None, logical=8, physical=4):
    return threads.Machine(dict(environ or {}), logical, physical)


def test_openmp_starts_threads_at_the_logical_cpus_and_torch_at_the_physical_cores():
    assert (machine().openmp_default, machine().torch_default) == (8, 4)


@pytest.mark.parametrize("environ, openmp, torch", [
    ({"OMP_NUM_THREADS": "3"}, 3, 3),
    ({"OMP_NUM_THREADS": "3,2"}, 3, 3),
    ({"MKL_NUM_THREADS": "5"}, 8, 5),
    # torch reads MKL_NUM_THREADS over OMP_NUM_THREADS; OpenMP reads only its own.
    ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"}, 1, 2),
    ({"OMP_NUM_THREADS": "none"}, 8, 4),
])
def test_the_environment_sets_the_defaults_as_openmp_and_torch_read_it(environ, openmp, torch):
    assert (machine(environ).openmp_default, machine(environ).torch_default) == (openmp, torch)


def test_only_models_libtorch_runs_in_the_server_have_a_thread_count():
    assert threads.intra_op_threads(libtorch("a", 2), machine()) == 2
    assert threads.intra_op_threads(libtorch("a"), machine()) == 4
    # An unusable parameter is the backend's default.
    assert threads.intra_op_threads(libtorch("a", "x"), machine()) == 4
    assert threads.intra_op_threads(model_config_pb2.ModelConfig(name="b", backend="python"), machine()) is None
    pytorch2 = model_config_pb2.ModelConfig(name="c", backend="pytorch", runtime="model.py")
    assert threads.intra_op_threads(pytorch2, machine()) is None


def test_a_model_at_another_count_than_openmps_is_a_mismatch_with_the_fix_in_its_note():
    found = threads.mismatch(libtorch("a", 1), machine())
    assert (found.intra_op, found.openmp_default) == (1, 8)
    assert not found.switches_up
    assert "OMP_NUM_THREADS=1" in found.note and "idle pause" in found.note
    assert threads.mismatch(libtorch("a", 8), machine()) is None
    # Without a parameter, a machine with SMT differs too: 4 cores, 8 CPUs.
    assert threads.mismatch(libtorch("a"), machine()).intra_op == 4
    assert threads.mismatch(libtorch("a"), machine(logical=4)) is None


def test_the_setting_is_the_count_the_libtorch_models_agree_on():
    python = model_config_pb2.ModelConfig(name="p", backend="python")
    setting = threads.openmp_setting([libtorch("a", 2), libtorch("b", 2), python], machine())
    assert setting.value == 2


@pytest.mark.parametrize("configs, environ, words", [
    ([libtorch("a", 2)], {"OMP_NUM_THREADS": "6"}, "already set"),
    ([libtorch("a", 8)], {}, "OpenMP's default"),
    # Disagreeing, the smallest is OpenMP's default already.
    ([libtorch("a", 8), libtorch("b", 16)], {}, "8 is OpenMP's default"),
    ([model_config_pb2.ModelConfig(name="p", backend="python")], {}, "no model"),
])
def test_nothing_is_set_where_the_user_did_or_openmps_default_is_the_count(configs, environ, words):
    setting = threads.openmp_setting(configs, machine(environ))
    assert setting.value is None and words in setting.reason


def test_where_the_models_disagree_openmp_starts_at_the_smallest_count_and_says_why():
    setting = threads.openmp_setting([libtorch("b", 2), libtorch("a", 1), libtorch("c", 2)], machine())
    assert setting.value == 1
    assert "1: a; 2: b, c" in setting.reason and "smallest" in setting.reason
    assert "largest sample first" in setting.reason
    # A model without the parameter runs torch's default, which follows
    # OMP_NUM_THREADS: the reason names it.
    setting = threads.openmp_setting([libtorch("a", 1), libtorch("minilm")], machine())
    assert setting.value == 1
    assert "4: minilm" in setting.reason and "minilm then run(s) 1 too" in setting.reason


def test_a_users_count_above_the_smallest_is_kept_with_a_warning():
    setting = threads.openmp_setting([libtorch("a", 1), libtorch("b", 2)], machine({"OMP_NUM_THREADS": "2"}))
    assert setting.value is None
    assert "already set" in setting.reason and "above the smallest" in setting.reason
    setting = threads.openmp_setting([libtorch("a", 1), libtorch("b", 2)], machine({"OMP_NUM_THREADS": "1"}))
    assert "above" not in setting.reason


def test_on_the_policys_server_the_larger_count_model_switches_up_and_its_note_says_so():
    # The server the launcher starts for a disagreeing repository.
    server = machine({"OMP_NUM_THREADS": "1"})
    assert threads.mismatch(libtorch("a", 1), server) is None
    found = threads.mismatch(libtorch("b", 2), server)
    assert found.switches_up
    assert "switches its backend thread to 2" in found.note and "largest sample was warmed first" in found.note
    # A model without the parameter follows OMP_NUM_THREADS: no mismatch.
    assert threads.mismatch(libtorch("minilm"), server) is None


def sample(batch, *dims):
    warmup = model_config_pb2.ModelWarmup(name=f"s{batch}x{dims}", batch_size=batch)
    warmup.inputs["x"].dims.extend(dims)
    return warmup


def test_the_largest_sample_moves_to_the_front_and_the_rest_keep_their_order():
    samples = [sample(1, 2, 4), sample(4, 8, 4), sample(8, 4, 4), sample(2, 3, 4)]
    assert [s.name for s in threads.largest_first(samples)] == [samples[1].name, samples[0].name,
                                                                samples[2].name, samples[3].name]
    assert threads.largest_first(samples[:1]) == samples[:1]


def test_the_helper_plans_the_largest_sample_first_only_on_a_mismatched_server(repository):
    request = warmup_request(group_max=3, batch_sizes=(1, 2))
    _, config = read_config(repository / "model-v1")
    own = threads.intra_op_threads(config, machine())
    agreeing = machine({"OMP_NUM_THREADS": str(own)})
    (job,) = plan_jobs(repository, request, settings=PlanSettings(machine=agreeing))
    assert job.threads is None
    first = job.rewrite.config.model_warmup[0]
    assert (first.batch_size, first.inputs["x"].dims[0]) == (1, 1)

    mismatched = machine({"OMP_NUM_THREADS": str(own + 1)})
    (job,) = plan_jobs(repository, request, settings=PlanSettings(machine=mismatched))
    assert job.threads.intra_op == own
    first = job.rewrite.config.model_warmup[0]
    assert (first.batch_size, first.inputs["x"].dims[0]) == (2, 3)


def test_the_command_prints_the_setting_for_a_repository(run_cli, repository):
    result = run_cli(openmp_threads.main, str(repository))
    assert result.returncode == 0
    configs = openmp_threads.repository_configs(repository)
    expected = threads.openmp_setting(configs, threads.Machine.here())
    assert result.stdout.strip() == ("" if expected.value is None else str(expected.value))
    assert expected.reason in result.stderr


def disagreeing(repository):
    """``repository`` with model-v2 at two intra-op threads and model-v1 at one."""
    folder = repository / "model-v2"
    _, config = read_config(folder)
    config.parameters[threads.THREAD_COUNT_PARAMETER].string_value = "2"
    (folder / "config.pbtxt").write_bytes(render_config(config))
    _, config = read_config(repository / "model-v1")
    assert config.parameters[threads.THREAD_COUNT_PARAMETER].string_value == "1"
    return repository


def test_the_command_prints_the_smallest_count_and_why_for_a_disagreeing_repository(run_cli, repository,
                                                                                   monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    result = run_cli(openmp_threads.main, str(disagreeing(repository)))
    assert result.returncode == 0
    assert result.stdout.strip() == "1"
    assert "OMP_NUM_THREADS=1: the libtorch models run different intra-op thread counts" in result.stderr
    assert "1: model-v1; 2: model-v2" in result.stderr and "smallest" in result.stderr


def test_the_entrypoint_starts_the_server_with_the_smallest_count(repository, tmp_path):
    """deploy/entrypoint.sh, run as it is, with a stand-in for tritonserver
    that prints the environment it was given."""
    server = tmp_path / "server"
    server.write_text('#!/bin/sh\necho "OMP_NUM_THREADS=$OMP_NUM_THREADS"\n')
    server.chmod(0o755)
    environ = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    environ.update(MODEL_REPOSITORY=str(disagreeing(repository)), TRITONSERVER=str(server),
                   PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}")
    result = subprocess.run(["bash", str(ENTRYPOINT)], env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OMP_NUM_THREADS=1"
    assert "smallest" in result.stderr


def test_the_helper_s_logged_settings_hold_no_environment():
    # model.py logs its PlanSettings; the environment holds credentials.
    settings = PlanSettings(machine=threads.Machine.here({"AWS_SECRET_ACCESS_KEY": "s3cret-value"}))
    assert "s3cret-value" not in repr(settings) and "AWS_SECRET" not in repr(settings)
    assert settings.machine.environ["AWS_SECRET_ACCESS_KEY"] == "s3cret-value"
