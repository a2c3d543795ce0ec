"""The requests mode: the arrays each sample sends, and how often."""

import dataclasses
import numpy as np

from repository_fixtures import snapshot, warmup_request
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.request import WarmupRequest
from triton_warmup.helper.requests_mode import run_requests_job, sample_arrays
from triton_warmup.report import Status


class RecordingInfer:
    """Records each request's shapes and mask sum; can fail like Triton does."""

    def __init__(self, fail=False):
        self.calls = []
        self.fail = fail

    def __call__(self, request):
        arrays = request.inputs
        self.calls.append(
            (request.model, {name: array.shape for name, array in arrays.items()}, int(arrays["mask"].sum()),
             list(request.outputs))
        )
        if self.fail:
            raise RuntimeError("model-v1 refused: bad input")
        return [{}]


def job_for(repository, **plan):
    (base,) = warmup_request(group_max=2, batch_sizes=(1, 4)).plans
    (job,) = plan_jobs(repository, WarmupRequest((dataclasses.replace(base, **plan),)))
    return job


def test_each_sample_goes_count_times_at_its_shape_with_the_batch_in_front(repository):
    job = job_for(repository, count=2)
    infer = RecordingInfer()
    before = snapshot(repository)
    entry = run_requests_job(job, infer, is_ready=lambda name: True)
    assert entry.status == Status.READY and entry.mode == "requests"
    assert entry.served_before_warm is True
    shapes = sorted((call[1]["x"], call[1]["mask"]) for call in infer.calls)
    expected = sorted(
        ((batch, group, 64), (batch, group)) for group in (1, 2) for batch in (1, 4) for _ in range(2)
    )
    assert shapes == expected and entry.requests_sent == len(expected)
    assert {call[3][0] for call in infer.calls} == {"output"}
    # Nothing on disk changes in this mode.
    assert snapshot(repository) == before


def test_several_instances_get_count_requests_each(repository):
    job = dataclasses.replace(job_for(repository, count=3), instances=2)
    infer = RecordingInfer()
    run_requests_job(job, infer, is_ready=lambda name: True)
    assert len(infer.calls) == 4 * 3 * 2


def test_file_data_is_read_like_triton_reads_input_data_file(repository):
    warmup = repository / "model-v1" / "warmup"
    warmup.mkdir()
    (warmup / "mask.bin").write_bytes(np.arange(1, 9, dtype=np.int64).tobytes())
    job = job_for(repository, data={"mask": {"file": "mask.bin"}})
    sample = next(s for s in job.rewrite.config.model_warmup if s.batch_size == 4 and list(s.inputs["mask"].dims) == [2])
    arrays = sample_arrays(job.rewrite.config, sample, job.model_dir, np.random.default_rng(0))
    # The first two int64 of the file, the same for every request of the batch.
    assert arrays["mask"].tolist() == [[1, 2]] * 4
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (4, 2, 64)


def test_zero_policy_sends_zeros(repository):
    job = job_for(repository, data={"x": "zero"})
    sample = job.rewrite.config.model_warmup[0]
    arrays = sample_arrays(job.rewrite.config, sample, job.model_dir, np.random.default_rng(0))
    assert not arrays["x"].any() and not arrays["mask"].any()


def test_a_model_that_is_not_ready_is_reported_not_warmed(repository):
    infer = RecordingInfer()
    entry = run_requests_job(job_for(repository), infer, is_ready=lambda name: False)
    assert entry.status == Status.FAILED and "not READY" in entry.error
    assert infer.calls == []


def test_a_failing_request_fails_the_model_with_tritons_message(repository):
    entry = run_requests_job(job_for(repository), RecordingInfer(fail=True), is_ready=lambda name: True)
    assert entry.status == Status.FAILED
    assert "model-v1 refused: bad input" in entry.error
