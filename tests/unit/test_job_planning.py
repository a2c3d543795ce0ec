"""Planning a request's models: --all, per-model plans and their data files."""

import dataclasses

import numpy as np
import pytest

from repository_fixtures import frames_left_in_cycles, snapshot, warmup_request
from triton_warmup.helper.job_planning import plan_jobs, repository_models
from triton_warmup.helper.request import NOT_FOUND, ModelPlanRequest, WarmupRequest, WarmupRequestError, parse_plan_document

HELPER = "warmup_helper"


def test_all_models_lists_the_repository_but_not_the_helper_or_hidden_folders(repository):
    (repository / ".git").mkdir()
    (repository / ".git" / "config.pbtxt").write_text("")
    (repository / "no-config").mkdir()
    assert repository_models(repository, HELPER) == ["model-v1", "model-v2"]
    assert repository_models(repository, HELPER, frozenset({"model-v2"})) == ["model-v2"]


def test_all_models_plans_every_model_with_the_default_plan(repository):
    request = WarmupRequest(
        plans=(ModelPlanRequest("model-v2", None, range(1, 2), (1,)),),
        all_models=True,
        default_plan=ModelPlanRequest("", None, range(1, 4), (1, 2)),
    )
    jobs = plan_jobs(repository, request, helper_name=HELPER)
    # A model the plan names keeps its own settings; the others get the defaults.
    assert [(job.name, job.samples) for job in jobs] == [("model-v2", 1), ("model-v1", 6)]


def test_all_models_in_a_repository_without_models_is_not_found(tmp_path):
    (tmp_path / HELPER).mkdir()
    request = WarmupRequest(plans=(), all_models=True, default_plan=ModelPlanRequest("", None, range(1, 2)))
    with pytest.raises(WarmupRequestError) as caught:
        plan_jobs(tmp_path, request, helper_name=HELPER)
    assert caught.value.code == NOT_FOUND


def test_a_plan_count_overrides_the_helpers(repository):
    (base,) = warmup_request(group_max=1, batch_sizes=(1,)).plans
    (job,) = plan_jobs(repository, WarmupRequest((dataclasses.replace(base, count=7),)))
    assert job.count == 7
    assert {sample.count for sample in job.rewrite.config.model_warmup} == {7}


def with_mask_file(repository, request_groups=3, data_bytes=None):
    warmup = repository / "model-v1" / "warmup"
    warmup.mkdir(exist_ok=True)
    data = data_bytes if data_bytes is not None else np.ones(request_groups, np.int64).tobytes()
    (warmup / "mask.bin").write_bytes(data)
    (base,) = warmup_request(group_max=request_groups, batch_sizes=(1, 2)).plans
    return WarmupRequest((dataclasses.replace(base, data={"mask": {"file": "mask.bin"}}),))


def test_a_data_file_becomes_input_data_file_in_every_sample(repository):
    (job,) = plan_jobs(repository, with_mask_file(repository))
    assert {sample.inputs["mask"].input_data_file for sample in job.rewrite.config.model_warmup} == {"mask.bin"}


@pytest.mark.parametrize(
    "prepare, words, code",
    [
        (lambda repository: (repository / "model-v1" / "warmup" / "mask.bin").unlink(), "no data file", NOT_FOUND),
        (
            # Three groups of int64 need 24 bytes per request; 16 is too short.
            lambda repository: (repository / "model-v1" / "warmup" / "mask.bin").write_bytes(b"\0" * 16),
            "holds 16 bytes",
            "INVALID_ARG",
        ),
        (
            lambda repository: (
                (repository / "model-v1" / "warmup" / "mask.bin").unlink(),
                (repository / "model-v1" / "warmup" / "mask.bin").symlink_to(repository / "model-v1" / "config.pbtxt"),
            ),
            "leads outside",
            "INVALID_ARG",
        ),
    ],
    ids=["missing", "too short", "symlink out of warmup/"],
)
def test_a_bad_data_file_is_refused_before_anything_is_written(repository, prepare, words, code):
    request = with_mask_file(repository)
    prepare(repository)
    before = snapshot(repository)
    with pytest.raises(WarmupRequestError) as caught:
        plan_jobs(repository, request)
    assert words in str(caught.value) and caught.value.code == code
    assert caught.value.path == ("models", "model-v1", "data", "mask", "file")
    assert snapshot(repository) == before


def test_errors_for_a_plan_document_point_into_the_document(repository):
    document = {
        "defaults": {"group_size_max": 2, "data": {"mask": {"file": "absent.bin"}}},
        "models": {"model-v1": {"batch_sizes": [1, 16]}, "model-v2": {}},
    }
    with pytest.raises(WarmupRequestError) as caught:
        plan_jobs(repository, parse_plan_document(document, HELPER))
    # model-v1's max_batch_size is 8: the plan key, not the BATCH_SIZES input.
    assert (caught.value.field, caught.value.path) == ("PLAN", ("models", "model-v1", "batch_sizes"))
    document["models"]["model-v1"] = {}
    with pytest.raises(WarmupRequestError) as caught:
        plan_jobs(repository, parse_plan_document(document, HELPER))
    assert caught.value.path == ("defaults", "data", "mask", "file")
    assert caught.value.code == NOT_FOUND
    document = {"defaults": {"group_size_max": 2}, "models": {"no-such-model": {}}}
    with pytest.raises(WarmupRequestError) as caught:
        plan_jobs(repository, parse_plan_document(document, HELPER))
    assert (caught.value.path, caught.value.code) == (("models", "no-such-model"), NOT_FOUND)


@pytest.mark.parametrize("broken", ["absent", "unparsable"])
def test_a_refused_plan_leaves_no_frames_in_a_reference_cycle(repository, broken):
    """What the planner keeps of a model it could not read must not hold
    frames: each frame holds its callers up to the helper's execute, whose
    Triton request would then be freed only at the stub's exit, which
    crashes it (SIGSEGV in dmesg)."""
    if broken == "unparsable":
        (repository / "broken").mkdir()
        (repository / "broken" / "config.pbtxt").write_text('name: "broken"\ninput [ { name: ')
    name = "no-such-model" if broken == "absent" else "broken"

    def refuse():
        with pytest.raises(WarmupRequestError):
            plan_jobs(repository, warmup_request(models=("model-v1", name)))

    frames, _ = frames_left_in_cycles(refuse)
    assert frames == []
