"""Plans from recorded traffic and their coverage, on trace files in Triton's format."""

import json
import shutil
import tracemalloc

import numpy as np
import pytest
import yaml

from triton_warmup.client import coverage as coverage_command
from triton_warmup.client import from_trace
from triton_warmup.client.plan_file import load_plan
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.traffic.coverage import measure_coverage, planned_configs
from triton_warmup.traffic.plan import (
    TrafficPlanError,
    make_plan,
    recorded_bytes,
    select_shapes,
    write_plan,
)
from triton_warmup.traffic.shapes import (
    ModelTraffic,
    RejectedShape,
    Shape,
    profile_traffic,
    repository_configs,
    request_shape,
)
from triton_warmup.traffic.trace import ReadSummary, TraceError, TracedRequest, TracedTensor, expand_paths, read_requests
from triton_warmup.traffic import trace as trace_module
from repository_fixtures import PROJECT_REPOSITORY, snapshot
from trace_files import encoder_request, request_records, triton_trace, v1_request, write_trace

# A skewed mix: what the plan must order and the coverage must count.
MIX = {(1, 4): 50, (2, 8): 30, (1, 16): 15, (4, 2): 5}


@pytest.fixture
def traffic_repository(tmp_path):
    """Configs of model-v1 and text-encoder, and the helper's."""
    repository = tmp_path / "repo"
    for name in ("model-v1", "text-encoder", "warmup_helper"):
        (repository / name).mkdir(parents=True)
        shutil.copy(PROJECT_REPOSITORY / name / "config.pbtxt", repository / name / "config.pbtxt")
    return repository


def mixed_requests():
    requests = []
    for (batch, group), count in MIX.items():
        requests += [v1_request(batch, group, fill=0.25 * batch) for _ in range(count)]
    requests += [encoder_request(1, 12)] * 3
    return requests


@pytest.fixture
def trace(tmp_path):
    return write_trace(tmp_path / "trace.json", mixed_requests())


def v1_shape(batch, group):
    return Shape(batch, (("mask", (group,)), ("x", (group, 64))))


# --- reading ---------------------------------------------------------------


def test_every_request_is_read_with_its_model_and_inputs(trace):
    requests = list(read_requests([trace]))
    assert len(requests) == sum(MIX.values()) + 3
    first = requests[0]
    assert first.model == "model-v1"
    assert first.inputs["x"].shape == (1, 4, 64) and first.inputs["x"].dtype == "FP32"
    assert first.inputs["mask"].data == "0,1,2,3"


def test_records_of_requests_may_interleave_and_come_in_any_order(tmp_path):
    one = request_records(1, "model-v1", v1_request(1, 3)[1])
    two = request_records(2, "text-encoder", encoder_request(1, 5)[1])
    # Tensors of request 2 before its model record, records of 1 and 2 mixed.
    two = [two[2], two[3], two[0], two[1]] + two[4:]
    mixed = [record for pair in zip(one, two) for record in pair]
    path = tmp_path / "mixed.json"
    path.write_bytes(triton_trace(mixed))
    requests = {request.trace_id[1]: request for request in read_requests([path])}
    assert requests[1].model == "model-v1" and set(requests[1].inputs) == {"x", "mask"}
    assert requests[2].model == "text-encoder" and set(requests[2].inputs) == {"input_ids", "attention_mask"}


def test_a_request_is_handed_on_once_its_inputs_are_read(tmp_path):
    path = write_trace(tmp_path / "t.json", [v1_request(1, 2)] * 3)
    needed = {"model-v1": {"x", "mask"}}
    stream = read_requests([path], needed.get)
    summary_before_end = next(stream)
    assert summary_before_end.trace_id == (0, 1)
    assert len(list(stream)) == 2


def test_a_trace_cut_short_keeps_the_requests_before_the_cut(tmp_path, trace):
    text = trace.read_text()
    cut = tmp_path / "cut.json"
    # Cut inside the 20th request's records, as a killed server leaves its file.
    cut.write_text(text[: text.index('{"id":20,')] + '{"id":20,"activity":"TENS')
    summary = ReadSummary()
    requests = list(read_requests([cut], summary=summary))
    assert len(requests) == 19
    assert str(cut) in summary.truncated


def test_a_file_that_is_not_json_is_refused_with_its_offset(tmp_path, trace):
    broken = tmp_path / "broken.json"
    broken.write_text(trace.read_text().replace('"model_name"', "model_name", 1))
    with pytest.raises(TraceError, match="not Triton's trace format near byte"):
        list(read_requests([broken]))
    with pytest.raises(TraceError, match="no such trace file"):
        list(read_requests([tmp_path / "missing.json"]))


def test_tensors_without_model_records_are_counted_not_guessed(tmp_path):
    path = write_trace(tmp_path / "t.json", [(None, v1_request(1, 2)[1])] * 4)
    summary = ReadSummary()
    assert list(read_requests([path], summary=summary)) == []
    assert summary.tensors_without_model == 4


def test_numbered_parts_stand_for_their_base_name(tmp_path):
    for index in (0, 1, 10, 2):
        write_trace(tmp_path / f"trace.json.{index}", [v1_request(1, 2)])
    assert [path.name for path in expand_paths([str(tmp_path / "trace.json")])] == [
        "trace.json.0", "trace.json.1", "trace.json.2", "trace.json.10",
    ]


@pytest.fixture(scope="module")
def big_trace(tmp_path_factory):
    # 2000 requests with 4,096 floats each: about 23 MB of trace text.
    requests = [v1_request(1, 64, fill=0.123456) for _ in range(2000)]
    return write_trace(tmp_path_factory.mktemp("big") / "big.json", requests)


@pytest.mark.parametrize("planned", [["model-v1"], ["text-encoder"]], ids=["its model planned", "its model not planned"])
def test_a_large_trace_is_read_without_holding_it(big_trace, traffic_repository, planned):
    size = big_trace.stat().st_size
    configs = repository_configs(traffic_repository, planned)
    tracemalloc.start()
    try:
        profile = profile_traffic([big_trace], configs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if planned == ["model-v1"]:
        assert profile.models["model-v1"].requests == 2000
    else:
        assert profile.other_models == {"model-v1": 2000} and profile.models == {}
    assert peak < size / 10, f"peak {peak} bytes for a {size}-byte trace"


def test_inputs_without_a_model_record_are_not_kept_without_bound(tmp_path, monkeypatch):
    from triton_warmup.traffic import trace as trace_module

    monkeypatch.setattr(trace_module, "_MAX_UNNAMED", 3)
    path = write_trace(tmp_path / "t.json", [(None, v1_request(1, 2)[1])] * 10)
    summary = ReadSummary()
    assert list(read_requests([path], {"model-v1": {"x", "mask"}}.get, summary=summary)) == []
    assert summary.tensors_without_model == 10


# --- shapes ----------------------------------------------------------------


def traced(model, inputs):
    return TracedRequest(
        (0, 1),
        model,
        {
            name: TracedTensor(name, dtype, shape, "")
            for name, (dtype, shape) in inputs.items()
        },
    )


@pytest.mark.parametrize(
    "inputs, reason",
    [
        ({"x": ("FP32", (1, 3, 64)), "mask": ("INT64", (1, 3)), "y": ("FP32", (1,))}, "input 'y' is not in the config"),
        ({"x": ("FP32", (1, 3, 64))}, "input 'mask' is missing"),
        ({"x": ("FP64", (1, 3, 64)), "mask": ("INT64", (1, 3))}, "is FP64, the config says FP32"),
        ({"x": ("FP32", (3, 64)), "mask": ("INT64", (1, 3))}, "rank 2"),
        ({"x": ("FP32", (1, 3, 32)), "mask": ("INT64", (1, 3))}, "do not fit"),
        ({"x": ("FP32", (9, 3, 64)), "mask": ("INT64", (9, 3))}, "outside 1..8"),
        ({"x": ("FP32", (1, 0, 64)), "mask": ("INT64", (1, 0))}, "zero dim"),
        ({"x": ("FP32", (2, 3, 64)), "mask": ("INT64", (1, 3))}, "disagree on the batch size"),
    ],
    ids=["unknown input", "missing input", "dtype", "rank", "fixed dim", "batch too big", "zero dim", "two batches"],
)
def test_a_shape_the_config_cannot_take_is_rejected_with_the_reason(traffic_repository, inputs, reason):
    config = repository_configs(traffic_repository, ["model-v1"])["model-v1"]
    with pytest.raises(RejectedShape, match=reason.replace("(", r"\(").replace(".", r"\.")):
        request_shape(config, traced("model-v1", inputs))


def test_a_model_without_batching_takes_the_whole_shape_at_batch_one(traffic_repository):
    config = repository_configs(traffic_repository, ["model-v1"])["model-v1"]
    config.max_batch_size = 0
    del config.input[0].dims[:]
    config.input[0].dims.extend([-1, -1, 64])
    del config.input[1].dims[:]
    config.input[1].dims.extend([-1, -1])
    shape = request_shape(config, traced("model-v1", {"x": ("FP32", (2, 3, 64)), "mask": ("INT64", (2, 3))}))
    assert shape == Shape(1, (("mask", (2, 3)), ("x", (2, 3, 64))))


# --- choosing shapes -------------------------------------------------------


def traffic_of(counts, rejected=0):
    traffic = ModelTraffic("model-v1")
    for (batch, group), count in counts.items():
        traffic.shapes[v1_shape(batch, group)] = count
    traffic.requests = sum(counts.values()) + rejected
    if rejected:
        traffic.rejected[("x [9, 1, 64]", "batch")] = rejected
    return traffic


def test_shapes_are_chosen_most_frequent_first():
    chosen, left_out = select_shapes(traffic_of(MIX))
    assert chosen == [(v1_shape(1, 4), 50), (v1_shape(2, 8), 30), (v1_shape(1, 16), 15), (v1_shape(4, 2), 5)]
    assert left_out == []


@pytest.mark.parametrize(
    "cover, max_samples, kept",
    [(0.5, None, 1), (0.8, None, 2), (0.81, None, 3), (0.95, None, 3), (1.0, None, 4), (None, 2, 2), (0.95, 1, 1)],
)
def test_cover_keeps_the_fewest_shapes_that_reach_the_share(cover, max_samples, kept):
    chosen, left_out = select_shapes(traffic_of(MIX), max_samples=max_samples, cover=cover)
    assert len(chosen) == kept and len(left_out) == 4 - kept


def test_rejected_requests_count_in_the_share_to_cover():
    # 100 warmable requests and 100 rejected: 0.5 needs every warmable one.
    chosen, _ = select_shapes(traffic_of(MIX, rejected=100), cover=0.5)
    assert len(chosen) == 4


# --- recorded data ---------------------------------------------------------


def test_recorded_data_is_the_first_item_of_the_batch_in_the_configs_dtype():
    ids = TracedTensor("input_ids", "INT64", (2, 3), "1,2,3,4,5,6")
    assert np.frombuffer(recorded_bytes(ids, batching=True), np.int64).tolist() == [1, 2, 3]
    assert np.frombuffer(recorded_bytes(ids, batching=False), np.int64).tolist() == [1, 2, 3, 4, 5, 6]
    floats = TracedTensor("x", "FP32", (1, 2), "0.5,-1.25")
    assert np.frombuffer(recorded_bytes(floats, True), np.float32).tolist() == [0.5, -1.25]
    flags = TracedTensor("flag", "BOOL", (1, 2), "1,0")
    assert recorded_bytes(flags, True) == b"\x01\x00"


@pytest.mark.parametrize(
    "tensor, reason",
    [
        (TracedTensor("x", "FP16", (1, 2), ""), "no values for FP16"),
        (TracedTensor("x", "UINT8", (1, 2), "ab"), "UINT8 text does not hold 2 values"),
        (TracedTensor("x", "BYTES", (1, 2), '\\"a\\"\\",\\"\\",\\"b\\"'), "separator Triton writes"),
        (TracedTensor("x", "INT64", (1, 3), "1,2"), "2 values for shape"),
    ],
)
def test_data_the_trace_cannot_give_is_refused_with_why(tensor, reason):
    with pytest.raises(ValueError, match=reason):
        recorded_bytes(tensor, True)


# --- the plan --------------------------------------------------------------


def made_plan(trace, repository, **options):
    configs = repository_configs(repository)
    return make_plan(profile_traffic([trace], configs), configs, repository, **options)


@pytest.mark.parametrize(
    "order, expected",
    [
        ("frequent-last", [(4, 2, 5), (1, 16, 15), (2, 8, 30), (1, 4, 50)]),
        ("frequent-first", [(1, 4, 50), (2, 8, 30), (1, 16, 15), (4, 2, 5)]),
    ],
)
def test_the_plan_lists_shapes_in_warmup_order_with_recorded_data(trace, traffic_repository, tmp_path, order, expected):
    plan = made_plan(trace, traffic_repository, order=order, data="recorded")
    output = tmp_path / "plan.yaml"
    written = write_plan(plan, output)
    document, request = load_plan(output)
    samples = document["models"]["model-v1"]["samples"]
    assert [(sample["batch_size"], sample["inputs"]["x"][0], sample["requests"]) for sample in samples] == expected
    # The helper plans it as written: same order, the recorded data files.
    jobs = {job.name: job for job in plan_jobs(traffic_repository, request)}
    warmup = {
        (sample.batch_size, sample.inputs["x"].dims[0]): sample for sample in jobs["model-v1"].rewrite.config.model_warmup
    }
    assert list(warmup) == [(batch, group) for batch, group, _ in expected]
    folder = traffic_repository / "model-v1" / "warmup"
    # The batch-2 request was filled with 0.5: its first item is the data.
    x_file = folder / warmup[(2, 8)].inputs["x"].input_data_file
    assert np.frombuffer(x_file.read_bytes(), np.float32).tolist() == [0.5] * 8 * 64
    mask_file = folder / warmup[(1, 4)].inputs["mask"].input_data_file
    assert np.frombuffer(mask_file.read_bytes(), np.int64).tolist() == [0, 1, 2, 3]
    assert len(written) == len(set(plan.data_files)) and all(path.is_file() for path in written)


def test_a_second_run_writes_no_new_file_and_the_same_plan(trace, traffic_repository, tmp_path):
    first = tmp_path / "first.yaml"
    write_plan(made_plan(trace, traffic_repository, data="recorded"), first)
    before = snapshot(traffic_repository)
    second = tmp_path / "second.yaml"
    assert write_plan(made_plan(trace, traffic_repository, data="recorded"), second) == []
    assert snapshot(traffic_repository) == before
    assert first.read_text() == second.read_text()


def test_a_failed_write_leaves_nothing_behind(trace, traffic_repository, tmp_path):
    before = snapshot(traffic_repository)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(TrafficPlanError, match="nothing was kept"):
        write_plan(made_plan(trace, traffic_repository, data="recorded"), blocker / "plan.yaml")
    assert snapshot(traffic_repository) == before
    assert not (traffic_repository / "model-v1" / "warmup").exists()


@pytest.mark.parametrize("data", ["random", "zero", "auto"])
def test_the_data_policy_replaces_recorded_data_when_asked(trace, traffic_repository, data):
    plan = made_plan(trace, traffic_repository, data=data)
    assert plan.data_files == {}
    entry = plan.document["models"]["model-v1"]
    assert all("data" not in sample for sample in entry["samples"])
    assert entry.get("data") == (None if data == "auto" else {"x": data, "mask": data})


def test_a_trace_without_models_of_the_repository_makes_no_plan(tmp_path, traffic_repository):
    path = write_trace(tmp_path / "other.json", [("someone-else", {"a": np.zeros((1, 2), np.float32)})])
    with pytest.raises(TrafficPlanError, match=r"other models in it: \['someone-else'\]"):
        made_plan(path, traffic_repository)


# --- coverage --------------------------------------------------------------


def test_coverage_counts_requests_whose_shape_is_warmed(trace, traffic_repository, tmp_path):
    configs = repository_configs(traffic_repository)
    profile = profile_traffic([trace], configs, keep_data=False)
    plan_path = tmp_path / "plan.yaml"
    write_plan(made_plan(trace, traffic_repository, cover=0.8), plan_path)
    document, _ = load_plan(plan_path)
    planned = planned_configs(traffic_repository, document)
    results = {result.model: result for result in measure_coverage(profile, {**configs, **planned}, {})}
    v1 = results["model-v1"]
    assert (v1.requests, v1.covered, v1.warmed_shapes) == (100, 80, 2)
    assert v1.uncovered == [(v1_shape(1, 16), 15), (v1_shape(4, 2), 5)]
    # text-encoder: its config on disk has no model_warmup.
    assert (results["text-encoder"].covered, results["text-encoder"].share) == (3, 1.0)


def test_coverage_command_gates_on_the_threshold(run_cli, trace, traffic_repository, tmp_path):
    plan_path = tmp_path / "plan.yaml"
    made = run_cli(from_trace.main, str(trace), "-r", str(traffic_repository), "-o", str(plan_path), "--cover", "0.8")
    assert made.returncode == 0, made.stderr
    assert "wrote" in made.stdout and "PASS" in made.stdout
    common = (str(trace), "-r", str(traffic_repository), "--plan", str(plan_path), "--models", "model-v1")
    passed = run_cli(coverage_command.main, *common, "--min-coverage", "0.8")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "PASS: 80.0% of 100 recorded requests" in passed.stdout
    failed = run_cli(coverage_command.main, *common, "--min-coverage", "0.81")
    assert failed.returncode == 1
    assert "FAILED: below --min-coverage 81.0%: model-v1 80.0%" in failed.stdout
    assert "      15  batch 1: mask [16], x [16, 64]" in failed.stdout
    as_json = json.loads(run_cli(coverage_command.main, *common, "--json").stdout)
    assert as_json["models"][0]["uncovered"][0] == {
        "batch_size": 1, "inputs": {"mask": [16], "x": [16, 64]}, "requests": 15,
    }
    assert as_json["share"] == 0.8


def test_coverage_without_a_plan_reads_the_configs_on_disk(run_cli, trace, traffic_repository):
    result = run_cli(coverage_command.main, str(trace), "-r", str(traffic_repository), "--min-coverage", "0.1")
    assert result.returncode == 1
    assert "model-v1      config     100       0" in result.stdout


def test_from_trace_reports_rejected_shapes_and_bad_input(run_cli, tmp_path, traffic_repository):
    path = write_trace(tmp_path / "t.json", [v1_request(1, 3)] * 2 + [v1_request(9, 3)])
    output = tmp_path / "plan.yaml"
    made = run_cli(from_trace.main, str(path), "-r", str(traffic_repository), "-o", str(output))
    assert made.returncode == 0
    assert "left out of model-v1: 1 requests with mask [9, 3], x [9, 3, 64]: batch size 9 is outside 1..8" in made.stdout
    assert yaml.safe_load(output.read_text())["models"]["model-v1"]["samples"][0]["requests"] == 2
    before = snapshot(traffic_repository)
    missing = run_cli(from_trace.main, str(tmp_path / "nope.json"), "-r", str(traffic_repository), "-o", str(output))
    assert missing.returncode == 2 and "no such trace file" in missing.stderr
    unknown = run_cli(
        from_trace.main, str(path), "-r", str(traffic_repository), "-o", str(tmp_path / "x.yaml"), "-m", "nobody"
    )
    assert unknown.returncode == 2 and "no model 'nobody'" in unknown.stderr
    bad_cover = run_cli(from_trace.main, str(path), "-r", str(traffic_repository), "-o", str(output), "--cover", "2")
    assert bad_cover.returncode == 2 and "must be in (0, 1]" in bad_cover.stderr
    assert snapshot(traffic_repository) == before
    assert not (tmp_path / "x.yaml").exists()


def test_traces_of_different_servers_keep_requests_that_share_an_id(tmp_path):
    # Every tritonserver numbers its requests from 1: two replicas' traces,
    # and a server's numbered parts, which share one run's ids.
    first = write_trace(tmp_path / "replica-a.json", [v1_request(1, 2), v1_request(2, 3)])
    second = write_trace(tmp_path / "replica-b.json", [encoder_request(1, 5), encoder_request(1, 6)])
    requests = list(read_requests([first, second]))
    assert sorted((request.model, request.trace_id[1]) for request in requests) == [
        ("model-v1", 1), ("model-v1", 2), ("text-encoder", 1), ("text-encoder", 2)]
    assert len({request.trace_id for request in requests}) == 4
    assert trace_module._run_of(tmp_path / "t.json.3") == trace_module._run_of(tmp_path / "t.json.0")


# --- recorded data is user data ---------------------------------------------


def test_from_trace_writes_shapes_only_unless_recorded_data_is_asked_for(run_cli, trace, traffic_repository, tmp_path):
    before = snapshot(traffic_repository)
    plan_path = tmp_path / "plan.yaml"
    shapes_only = run_cli(from_trace.main, str(trace), "-r", str(traffic_repository), "-o", str(plan_path))
    assert shapes_only.returncode == 0, shapes_only.stderr
    assert snapshot(traffic_repository) == before
    assert "recorded request data" not in shapes_only.stdout
    recorded = run_cli(from_trace.main, str(trace), "-r", str(traffic_repository), "-o", str(plan_path),
                       "--data", "recorded")
    written = {path for path in set(snapshot(traffic_repository)) - set(before) if path.endswith(".bin")}
    assert written and all(path.split("/", 1)[1].startswith("warmup/traffic/") for path in written)
    assert f"NOTE: wrote {len(written)} files of recorded request data to " in recorded.stdout
    assert "they hold what users sent" in recorded.stdout


def test_a_recorded_input_above_the_cap_keeps_the_default_data(trace, traffic_repository):
    # model-v1's x at group 16 is 16 x 64 floats: 4096 bytes per request.
    plan = made_plan(trace, traffic_repository, data="recorded", max_data_bytes=2048)
    samples = {
        (sample["batch_size"], sample["inputs"]["x"][0]): sample.get("data", {})
        for sample in plan.document["models"]["model-v1"]["samples"]
    }
    assert "x" not in samples[(1, 16)] and "x" in samples[(1, 4)]
    note = plan.selections[0].data_notes["x"]
    assert "above --max-data-bytes 2048" in note and plan.selections[0].model == "model-v1"


def test_prune_removes_only_traffic_files_nothing_names(run_cli, trace, traffic_repository, tmp_path):
    full = tmp_path / "full.yaml"
    made = run_cli(from_trace.main, str(trace), "-r", str(traffic_repository), "-o", str(full), "--data", "recorded")
    assert made.returncode == 0, made.stderr
    folder = traffic_repository / "model-v1" / "warmup"
    every = {path.relative_to(folder).as_posix() for path in (folder / "traffic").iterdir()}
    hand_written = folder / "mine.bin"
    hand_written.write_bytes(b"\0" * 16)
    # A cut plan names fewer files; --keep keeps the full plan's.
    cut = tmp_path / "cut.yaml"
    kept = run_cli(from_trace.main, str(trace), "-r", str(traffic_repository), "-o", str(cut), "--data", "recorded",
                   "--cover", "0.5", "--prune", "--keep", str(full))
    assert kept.returncode == 0, kept.stderr
    assert {path.relative_to(folder).as_posix() for path in (folder / "traffic").iterdir()} == every
    pruned = run_cli(from_trace.main, str(trace), "-r", str(traffic_repository), "-o", str(cut), "--data", "recorded",
                     "--cover", "0.5", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    remaining = {path.relative_to(folder).as_posix() for path in (folder / "traffic").iterdir()}
    named = {spec["file"] for sample in yaml.safe_load(cut.read_text())["models"]["model-v1"]["samples"]
             for spec in sample.get("data", {}).values()}
    assert remaining == named and remaining < every
    assert pruned.stdout.count("pruned ") == len(every - remaining)
    assert hand_written.is_file()


def test_from_trace_and_coverage_refuse_what_needs_a_folder_with_a_server_url(run_cli, trace, tmp_path):
    recorded = run_cli(from_trace.main, str(trace), "-u", "localhost:1", "-o", str(tmp_path / "p.yaml"),
                       "--data", "recorded")
    assert recorded.returncode == 2 and "use -r" in recorded.stderr
    planned = run_cli(coverage_command.main, str(trace), "-u", "localhost:1", "--plan", str(tmp_path / "p.yaml"))
    assert planned.returncode == 2 and "use -r" in planned.stderr
    nobody = run_cli(from_trace.main, str(trace), "-u", "localhost:1", "-o", str(tmp_path / "p.yaml"))
    assert nobody.returncode == 2 and "reading the served configs from localhost:1 failed" in nobody.stderr
