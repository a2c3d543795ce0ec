"""The OpenMP thread count that keeps libtorch models warm (triton_warmup/threads.py)."""

import pytest
from tritonclient.grpc import model_config_pb2

from repository_fixtures import warmup_request
from triton_warmup import threads
from triton_warmup.client import openmp_threads
from triton_warmup.helper.config_rewrite import read_config
from triton_warmup.helper.job_planning import PlanSettings, plan_jobs


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
    assert "OMP_NUM_THREADS=1" in found.note
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
    ([libtorch("a", 1), libtorch("b", 2)], {}, "1: a; 2: b"),
    ([model_config_pb2.ModelConfig(name="p", backend="python")], {}, "no model"),
])
def test_nothing_is_set_where_the_user_did_the_counts_agree_or_the_models_disagree(configs, environ, words):
    setting = threads.openmp_setting(configs, machine(environ))
    assert setting.value is None and words in setting.reason


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


def test_the_helper_s_logged_settings_hold_no_environment():
    # model.py logs its PlanSettings; the environment holds credentials.
    settings = PlanSettings(machine=threads.Machine.here({"AWS_SECRET_ACCESS_KEY": "s3cret-value"}))
    assert "s3cret-value" not in repr(settings) and "AWS_SECRET" not in repr(settings)
    assert settings.machine.environ["AWS_SECRET_ACCESS_KEY"] == "s3cret-value"
