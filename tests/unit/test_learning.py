"""Learning shapes from traffic without a server: where learned samples go
in a config and what a plan does with them, how a learned sample is made,
when a shape is due, how learning is bounded, and the watch telling the
learner of cold shapes."""

import threading

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from test_watch import MODEL, FakeServer, families, make_watch, trace_records, with_samples, write_part  # noqa: F401
from triton_warmup.helper.adapt import AdaptSettings, ShapeLearner
from triton_warmup.helper.config_rewrite import merge_warmup, parse_config
from triton_warmup.helper.job_planning import PlanSettings, plan_jobs
from triton_warmup.helper.learned_samples import (
    LearnCapReached,
    learned_sample,
    learned_sample_name,
    plan_learned,
)
from triton_warmup.helper.learning import (
    CAPPED,
    IN_PLACE_ONLY,
    LEARNED,
    NEXT_LOAD,
    NOT_NOW,
    REJECTED,
    LearnOutcome,
    how_to_learn,
    learn,
)
from triton_warmup.helper.metrics import ADAPTED_NOT_KEPT, ADAPTED_SAMPLES
from triton_warmup.helper.repository_guard import READ_ONLY_MARKER
from triton_warmup.helper.request import WarmupRequestError, parse_plan_document
from triton_warmup.helper.rewarm import Rewarm
from triton_warmup.helper.warmup_plan import GENERATED_PREFIX, LEARNED_PREFIX
from triton_warmup.report import PREFLIGHT_SCRATCH, PREFLIGHT_SERVING, PreflightRecord
from triton_warmup.traffic.shapes import Shape

CONFIG = """
name: "m"
platform: "pytorch_libtorch"
max_batch_size: 4
input [{ name: "x", data_type: TYPE_FP32, dims: [-1, 8] }, { name: "ids", data_type: TYPE_INT64, dims: [-1] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [8] }]
"""


def shape(group, batch=1):
    return Shape(batch, (("ids", (group,)), ("x", (group, 8))))


def sample(name, group, batch=1):
    warmup = model_config_pb2.ModelWarmup(name=name, batch_size=batch, count=3)
    warmup.inputs["x"].data_type = model_config_pb2.TYPE_FP32
    warmup.inputs["x"].dims.extend([group, 8])
    warmup.inputs["x"].random_data = True
    warmup.inputs["ids"].data_type = model_config_pb2.TYPE_INT64
    warmup.inputs["ids"].dims.append(group)
    warmup.inputs["ids"].zero_data = True
    return warmup


def config_with(*samples):
    config = text_format.Parse(CONFIG, model_config_pb2.ModelConfig())
    config.model_warmup.extend(samples)
    return config


def write_model(repository, config, name="m"):
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.pt").write_bytes(b"weights")
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    return folder


def names(config):
    return [warmup.name for warmup in config.model_warmup]


# -- where learned samples go --------------------------------------------


def test_a_plan_keeps_learned_samples_after_its_own_and_drops_those_it_now_covers():
    config = config_with(
        sample("mine", 9),
        sample(f"{GENERATED_PREFIX}old", 1),
        sample(f"{LEARNED_PREFIX}a", 5),
        sample(f"{LEARNED_PREFIX}b", 6),
    )
    merged = merge_warmup(config, [sample(f"{GENERATED_PREFIX}g1", 1), sample(f"{GENERATED_PREFIX}g6", 6)])
    # Hand-written first, the plan's own next, learned last; b's shape is planned now.
    assert names(merged) == ["mine", f"{GENERATED_PREFIX}g1", f"{GENERATED_PREFIX}g6", f"{LEARNED_PREFIX}a"]
    dropped = merge_warmup(config, [sample(f"{GENERATED_PREFIX}g1", 1)], drop_learned=True)
    assert names(dropped) == ["mine", f"{GENERATED_PREFIX}g1"]


def test_learned_keep_or_drop_in_a_plan_and_nothing_else():
    request = parse_plan_document(
        {"defaults": {"group_size_max": 2, "learned": "drop"}, "models": {"a": {}, "b": {"learned": "keep"}}},
        "warmup_helper",
    )
    assert [plan.drop_learned for plan in request.plans] == [True, False]
    with pytest.raises(WarmupRequestError) as refused:
        parse_plan_document({"models": {"a": {"group_size_max": 2, "learned": "forget"}}}, "warmup_helper")
    assert refused.value.path == ("models", "a", "learned")


def test_a_replan_through_the_planner_keeps_what_was_learned(tmp_path):
    write_model(tmp_path, config_with(sample(f"{GENERATED_PREFIX}group1_batch1", 1), sample(f"{LEARNED_PREFIX}x", 7)))
    plan = plan_jobs(tmp_path, parse_plan_document({"models": {"m": {"group_size_max": 1, "batch_sizes": [1],
                                                                      "feature_dim": 8}}}, "warmup_helper"))
    (job,) = plan.jobs
    assert job.learned == 1 and names(job.rewrite.config)[-1] == f"{LEARNED_PREFIX}x"
    assert not job.rewrite.changed


# -- how a learned sample is made ----------------------------------------


def test_a_learned_sample_follows_the_models_data_policy_never_the_request(tmp_path):
    folder = write_model(tmp_path, config_with())
    (folder / "warmup").mkdir()
    # 3 ids of INT64 = 24 bytes: enough for group 3, not for group 5.
    (folder / "warmup" / "ids.bin").write_bytes(bytes(24))
    planned = sample(f"{GENERATED_PREFIX}g3", 3)
    planned.inputs["ids"].ClearField("zero_data")
    planned.inputs["ids"].input_data_file = "ids.bin"
    config = config_with(planned)
    small = learned_sample(config, folder, shape(3, batch=1), 3, 2**20)
    assert small.inputs["ids"].input_data_file == "ids.bin" and small.inputs["x"].random_data
    large = learned_sample(config, folder, shape(5, batch=2), 3, 2**20)
    # The file is too short for the new dims: the helper's default for integers.
    assert large.inputs["ids"].zero_data and large.batch_size == 2
    assert large.name == learned_sample_name(shape(5, batch=2)) == f"{LEARNED_PREFIX}batch2_ids5_x5x8"


def test_plan_learned_appends_and_leaves_every_other_sample_in_place(tmp_path):
    config = config_with(sample(f"{GENERATED_PREFIX}g2", 2), sample("mine", 9))
    write_model(tmp_path, config)
    job = plan_learned(tmp_path, "m", [shape(5)], PlanSettings())
    assert names(job.rewrite.config) == [f"{GENERATED_PREFIX}g2", "mine", learned_sample_name(shape(5))]
    assert job.rewrite.changed and job.learned == 1
    # A shape a sample covers already changes nothing.
    assert not plan_learned(tmp_path, "m", [shape(2)], PlanSettings()).rewrite.changed


def test_the_caps_hold(tmp_path):
    write_model(tmp_path, config_with(sample(f"{LEARNED_PREFIX}a", 5), sample(f"{LEARNED_PREFIX}b", 6)))
    with pytest.raises(LearnCapReached, match="the cap is 2"):
        plan_learned(tmp_path, "m", [shape(7)], PlanSettings(), max_learned=2)
    with pytest.raises(LearnCapReached, match="max_warmup_samples"):
        plan_learned(tmp_path, "m", [shape(7)], PlanSettings(max_samples=2), max_learned=16)
    with pytest.raises(WarmupRequestError):
        plan_learned(tmp_path, "m", [Shape(9, shape(2).inputs)], PlanSettings())  # batch above max_batch_size


# -- what runs where -----------------------------------------------------


class Job:
    def __init__(self, config, instances=1, sequence=False):
        self.rewrite = type("Rewrite", (), {"config": config})()
        self.instances = instances
        self.kind = type("Kind", (), {"sequence": sequence})()


def test_how_to_learn_warms_in_place_where_it_can_and_writes_where_it_may():
    config = config_with()
    serving = PreflightRecord(how=PREFLIGHT_SERVING, why="unchanged")
    assert how_to_learn(Job(config), serving, None)[:2] == (True, True)
    run, write, why = how_to_learn(Job(config), serving, "the repository is marked read-only")
    assert (run, write) == (True, False) and "a restart or a new replica starts cold" in why
    scratch = PreflightRecord(how=PREFLIGHT_SCRATCH, why="model files changed")
    assert how_to_learn(Job(config), scratch, None)[:2] == (False, True)
    pytorch2 = config_with()
    pytorch2.ClearField("platform")
    pytorch2.backend = "pytorch"
    pytorch2.runtime = "model.py"
    run, write, why = how_to_learn(Job(pytorch2), serving, None)
    assert (run, write) == (False, True) and "compiled" in why
    gpu = config_with()
    gpu.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, count=2)
    assert how_to_learn(Job(gpu, instances=2), serving, None)[:2] == (False, True)


class Control:
    def __init__(self, ready=True):
        self.ready = ready

    def is_ready(self, name):
        return self.ready


class Preflight:
    def __init__(self, passes=True):
        self.passes = passes

    def check(self, job, control, was_ready):
        return PreflightRecord(how=PREFLIGHT_SERVING, why="unchanged", error=None if self.passes else "it failed")


def test_learn_writes_after_the_in_place_runs_and_nothing_when_a_run_fails(tmp_path):
    folder = write_model(tmp_path, config_with(sample(f"{GENERATED_PREFIX}g2", 2)))
    sent = []
    rewarm = Rewarm(infer=lambda request: sent.append(request) or [{}], duty=1.0)
    outcome = learn(folder, lambda: plan_learned(tmp_path, "m", [shape(5)], PlanSettings()), Control(), rewarm, Preflight())
    assert outcome.status == LEARNED and outcome.written and outcome.in_place_runs == 3 == len(sent)
    assert names(parse_config((folder / "config.pbtxt").read_bytes(), "c"))[-1] == learned_sample_name(shape(5))

    before = (folder / "config.pbtxt").read_bytes()

    def failing(request):
        raise RuntimeError("index out of range")

    outcome = learn(folder, lambda: plan_learned(tmp_path, "m", [shape(6)], PlanSettings()), Control(),
                    Rewarm(infer=failing, duty=1.0), Preflight())
    assert outcome.status == REJECTED and (folder / "config.pbtxt").read_bytes() == before
    outcome = learn(folder, lambda: plan_learned(tmp_path, "m", [shape(6)], PlanSettings()), Control(),
                    Rewarm(infer=lambda request: [{}], duty=1.0), Preflight(passes=False))
    assert outcome.status == REJECTED and "preflight" in outcome.reason
    assert (folder / "config.pbtxt").read_bytes() == before


def test_learn_on_a_read_only_repository_warms_in_place_and_writes_nothing(tmp_path):
    folder = write_model(tmp_path, config_with(sample(f"{GENERATED_PREFIX}g2", 2)))
    (tmp_path / READ_ONLY_MARKER).write_text("read-only volume")
    files = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    rewarm = Rewarm(infer=lambda request: [{}], duty=1.0)
    outcome = learn(folder, lambda: plan_learned(tmp_path, "m", [shape(5)], PlanSettings()), Control(), rewarm, Preflight())
    assert outcome.status == IN_PLACE_ONLY and not outcome.written and outcome.in_place_runs == 3
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == files
    # What ran is remembered, so the watch counts the shape warm.
    assert [warmup.name for warmup in rewarm.ran["m"]] == [learned_sample_name(shape(5))]


def test_a_model_that_is_not_ready_waits(tmp_path):
    folder = write_model(tmp_path, config_with())
    outcome = learn(folder, lambda: plan_learned(tmp_path, "m", [shape(5)], PlanSettings()), Control(ready=False),
                    Rewarm(infer=lambda request: [{}]), Preflight())
    assert outcome.status == NOT_NOW


# -- when a shape is due -------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make_learner(families, outcomes, **settings):
    made, metrics = families
    lines = []
    tried = []

    def learn_one(model, seen_shape):
        tried.append((model, seen_shape))
        return outcomes.pop(0)

    clock = Clock()
    learner = ShapeLearner(learn_one, AdaptSettings(**settings), threading.Lock(), metrics, lines.append,
                           lines.append, clock=clock)
    return learner, tried, lines, made, clock


def test_a_shape_is_due_at_its_third_sighting_and_then_settled_for_good(families):
    learner, tried, lines, made, _ = make_learner(families, [LearnOutcome(LEARNED, "warmed in place", 3, 0.2, True)])
    for _ in range(2):
        learner.observe("m", "1", shape(5))
    assert learner.step() is None and tried == []
    learner.observe("m", "1", shape(5))
    assert learner.step().status == LEARNED and tried == [("m", shape(5))]
    assert made[ADAPTED_SAMPLES].values == {("m", "1"): 1}
    assert any(line.startswith("learned 'm' batch 1: ids [5], x [5, 8], seen cold 3 times") for line in lines)
    for _ in range(5):
        learner.observe("m", "1", shape(5))
    assert learner.due() == [] and learner.step() is None


def test_learning_waits_while_the_helper_warms(families):
    learner, tried, _, _, _ = make_learner(families, [LearnOutcome(LEARNED, "ok")], min_requests=1)
    learner.observe("m", "1", shape(5))
    with learner._busy:
        assert learner.step() is None and tried == []
    assert learner.step().status == LEARNED


def test_a_rejected_shape_is_never_tried_again_and_a_waiting_one_is_after_a_while(families):
    learner, tried, lines, made, clock = make_learner(
        families, [LearnOutcome(REJECTED, "preflight: it failed"), LearnOutcome(NOT_NOW, "not READY"),
                   LearnOutcome(IN_PLACE_ONLY, "NOT written")], min_requests=1,
    )
    learner.observe("m", "1", shape(5))
    assert learner.step().status == REJECTED
    learner.observe("m", "1", shape(5))
    assert learner.step() is None
    assert any("not learned, and not tried again" in line for line in lines)
    learner.observe("m", "1", shape(6))
    assert learner.step().status == NOT_NOW and learner.step() is None
    clock.now += 10
    assert learner.step().status == IN_PLACE_ONLY
    assert made[ADAPTED_NOT_KEPT].values == {("m", "1"): 1}
    assert tried == [("m", shape(5)), ("m", shape(6)), ("m", shape(6))]


def test_a_capped_model_learns_nothing_more(families):
    learner, tried, lines, _, _ = make_learner(families, [LearnOutcome(CAPPED, "the cap is 2")], min_requests=1)
    learner.observe("m", "1", shape(5))
    learner.observe("m", "1", shape(6))
    learner.step()
    assert learner.step() is None and len(tried) == 1
    assert any("further cold shapes of this model stay cold" in line for line in lines)


def test_next_load_counts_as_learned_for_pytorch2_models(families):
    learner, _, lines, made, _ = make_learner(families, [LearnOutcome(NEXT_LOAD, "a PyTorch 2 model")], min_requests=1)
    learner.observe("m", "1", shape(5))
    learner.step()
    assert made[ADAPTED_SAMPLES].values == {("m", "1"): 1} and made[ADAPTED_NOT_KEPT].values == {}


def test_the_watch_tells_the_learner_of_each_cold_shape_once(tmp_path, families):
    _, metrics = families
    server = FakeServer({"m": with_samples(MODEL, [(1, 2)])})
    trace_file = tmp_path / "trace.json"
    cold = []
    watch, _ = make_watch(server, metrics, trace_file, on_cold=lambda *seen: cold.append(seen))
    watch.cycle()
    write_part(trace_file, 0, trace_records(1, "m", [1, 2, 8]), trace_records(2, "m", [1, 5, 8]))
    part = write_part(trace_file, 1, trace_records(3, "m", [2, 5, 8]), complete=False)
    watch.cycle()
    # The file Triton still writes is told of once it is whole, not twice.
    assert cold == [("m", "1", Shape(1, (("x", (5, 8)),)))]
    write_part(trace_file, 1, trace_records(3, "m", [2, 5, 8]))
    watch.cycle()
    assert not part.exists() and cold[-1] == ("m", "1", Shape(2, (("x", (5, 8)),)))
    assert len(cold) == 2


def test_a_sequence_models_learned_sample_carries_its_control_inputs(tmp_path):
    config = text_format.Parse(
        """
        name: "m" platform: "pytorch_libtorch" max_batch_size: 4
        input [{ name: "x", data_type: TYPE_FP32, dims: [-1, 8] }]
        output [{ name: "y", data_type: TYPE_FP32, dims: [8] }]
        sequence_batching { control_input [{ name: "START", control [{ kind: CONTROL_SEQUENCE_START, int32_false_true: [0, 1] }] }] }
        """,
        model_config_pb2.ModelConfig(),
    )
    write_model(tmp_path, config)
    job = plan_learned(tmp_path, "m", [Shape(1, (("x", (5, 8)),))], PlanSettings())
    (learned,) = job.rewrite.config.model_warmup
    assert set(learned.inputs) == {"x", "START"} and list(learned.inputs["START"].dims) == [1]
    # The control's value is a data file the rewrite writes with the config.
    assert job.rewrite.data_files and job.rewrite.changed
