"""Learning shapes from traffic (docs/adapt.md), on the real server: a
recurring cold shape becomes a sample in place, with no failed request and
the model READY throughout; a restart warms it at load; a shape the model
fails on is tried once; the per-model cap holds; a read-only repository is
warmed in place and left as it was; two replicas on one volume keep both of
their shapes. Counted from Triton's statistics and log, never timed."""

import contextlib
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from live_server import (
    client_for,
    model_statistics,
    repository_snapshot,
    send_warmup,
    served_config,
    template_with_helper_parameters,
    wait_for_log,
    warmup_inputs,
    warmup_runs,
)
from test_warmth_metrics import metrics, send
from triton_warmup.client import warm
from triton_warmup.helper.learned_samples import learned_sample_name
from triton_warmup.helper.repository_guard import READ_ONLY_MARKER
from triton_warmup.helper.warmup_plan import LEARNED_PREFIX
from triton_warmup.traffic.shapes import Shape

MODULE_TIMEOUT_S = 600
# How long a learning may take before the test gives up: about two watch
# cycles to see the third request, then the preflight and three paced runs.
LEARN_TIMEOUT_S = 90

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

GROUP_MAX = 3
BATCH_SIZES = [1, 2]


def model_v1_shape(group: int, batch: int = 1) -> Shape:
    return Shape(batch, (("mask", (group,)), ("x", (group, 64))))


def config_on_disk(repository, model="model-v1"):
    return text_format.Parse((repository / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def learned_names(config):
    return [sample.name for sample in config.model_warmup if sample.name.startswith(LEARNED_PREFIX)]


def adapting_template(template_repository, destination, **parameters):
    return template_with_helper_parameters(
        template_repository, destination, watch_rate="1", adapt="on", adapt_max_samples="2", **parameters
    )


def start_adapting(start_server, tmp_path_factory, name, template=None, shared=None):
    folder = tmp_path_factory.mktemp(f"{name}-traces")
    folder.chmod(0o700)
    trace = [f"--trace-config=triton,file={folder / 'trace.json'}"]
    server = start_server(name, template=template, shared=shared, extra_args=trace)
    send_warmup(server, "http", warmup_inputs(["model-v1"], 1, GROUP_MAX, batch_sizes=BATCH_SIZES))
    wait_for_log(server, ["traffic watch on for 'model-v1'"], timeout=LEARN_TIMEOUT_S)
    return server


@contextlib.contextmanager
def steady_traffic(server):
    """Requests at a warmed shape and READY polls, in a thread, while the
    block runs; yields the tally: requests, failures, polls, not-READY polls."""
    tally = {"requests": 0, "failed": [], "polls": 0, "not_ready": 0}
    stop = threading.Event()

    def run():
        x = httpclient.InferInput("x", [1, 2, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 2, 64), np.float32))
        mask = httpclient.InferInput("mask", [1, 2], "INT64")
        mask.set_data_from_numpy(np.ones((1, 2), np.int64))
        with client_for(server, "http") as client:
            while not stop.is_set():
                try:
                    client.infer("model-v1", [x, mask])
                except Exception as error:  # noqa: BLE001 - counted
                    tally["failed"].append(str(error))
                tally["requests"] += 1
                tally["polls"] += 1
                if not client.is_model_ready("model-v1"):
                    tally["not_ready"] += 1
                time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield tally
    finally:
        stop.set()
        thread.join(30)


def wait_until(predicate, what, timeout=LEARN_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def adapting(start_server, template_repository, tmp_path_factory):
    """A server that learns (watch_rate 1, adapt on, at most 2 learned
    samples per model), with model-v1 warmed for groups 1..3, batches 1, 2."""
    template = adapting_template(template_repository, tmp_path_factory.mktemp("adapt") / "model_repository")
    return start_adapting(start_server, tmp_path_factory, "adapting", template=template)


def test_a_recurring_cold_shape_is_learned_in_place_with_no_failed_request(adapting, measured):
    server = adapting
    repository = server.model_repository
    shape = model_v1_shape(GROUP_MAX + 2)
    name = learned_sample_name(shape)
    before = model_statistics(server, "model-v1")["inference_count"]
    with steady_traffic(server) as tally:
        send(server, GROUP_MAX + 2, count=3)
        seen_at = time.monotonic()
        wait_until(lambda: name in learned_names(config_on_disk(repository)), "the shape in config.pbtxt")
        learned_after = time.monotonic() - seen_at
        wait_for_log(server, [f"learned 'model-v1' {shape.describe()}"], timeout=LEARN_TIMEOUT_S)
    assert tally["requests"] > 10 and not tally["failed"], tally
    assert tally["not_ready"] == 0, tally
    # Triton counted, at the serving version: the 3 sightings, the steady
    # requests, the preflight's run and warmup_count (3) runs on its one instance.
    after = model_statistics(server, "model-v1")["inference_count"]
    assert after - before == 3 + tally["requests"] + 1 + 3, (before, after, tally["requests"])
    assert metrics(server)[("triton_warmup_adapted_samples_total", "model-v1")] == 1
    # The watch reads the config again at its next cycle.
    wait_until(lambda: metrics(server).get(("triton_warmup_learned_shapes", "model-v1")) == 1, "the learned gauge")
    # Planned samples first, the learned one last; no reload happened.
    config = config_on_disk(repository)
    assert config.model_warmup[-1].name == name
    assert len(config.model_warmup) == GROUP_MAX * len(BATCH_SIZES) + 1
    assert server.log_text().count("successfully loaded 'model-v1'") == 1
    measured(f"learned in {learned_after:.1f} s after the third request ({tally['requests']} steady requests meanwhile)")


def test_a_shape_the_model_fails_on_is_tried_once(adapting):
    server = adapting
    # text-encoder's positions end at 128: a longer text fails in the model.
    send_warmup(server, "http", warmup_inputs(["text-encoder"], 1, 2, batch_sizes=[1]))
    wait_for_log(server, ["traffic watch on for 'text-encoder'"], timeout=LEARN_TIMEOUT_S)
    ids = httpclient.InferInput("input_ids", [1, 200], "INT64")
    ids.set_data_from_numpy(np.zeros((1, 200), np.int64))
    mask = httpclient.InferInput("attention_mask", [1, 200], "INT64")
    mask.set_data_from_numpy(np.ones((1, 200), np.int64))
    repository = server.model_repository
    before = (repository / "text-encoder" / "config.pbtxt").read_bytes()

    def send_long(count):
        with client_for(server, "http") as client:
            for _ in range(count):
                with pytest.raises(Exception):
                    client.infer("text-encoder", [ids, mask])

    send_long(3)
    log = wait_for_log(server, ["not learned, and not tried again: 'text-encoder'"], timeout=LEARN_TIMEOUT_S)
    send_long(4)
    time.sleep(5)
    assert server.log_text().count("not learned, and not tried again: 'text-encoder'") == 1
    assert "preflight:" in log
    assert (repository / "text-encoder" / "config.pbtxt").read_bytes() == before


def test_a_composing_model_learns_the_shapes_its_ensemble_sends_it(adapting):
    server = adapting
    send_warmup(server, "http", warmup_inputs(["embed"], 1, 2, batch_sizes=[1]))
    wait_for_log(server, ["traffic watch on for 'embed'"], timeout=LEARN_TIMEOUT_S)
    repository = server.model_repository
    before = learned_names(config_on_disk(repository, "text-encoder"))
    text = httpclient.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[" ".join(["word"] * 40).encode()]], dtype=np.object_))
    with client_for(server, "http") as client:
        for _ in range(3):
            client.infer("embed", [text])
    wait_until(
        lambda: len(learned_names(config_on_disk(repository, "text-encoder"))) == len(before) + 1,
        "a learned text-encoder sample",
    )
    # The ensemble and its tokenizer have nothing to learn: the tokenizer
    # takes one string whatever the text.
    assert learned_names(config_on_disk(repository, "tokenizer")) == []
    assert "warmup_learned" not in (repository / "embed" / "config.pbtxt").read_text()


def test_a_sequence_models_requests_are_not_seen_and_the_log_says_why(adapting):
    """Triton 2.51 traces no input tensors for requests its sequence
    batcher schedules: the watch cannot see their shapes, says so once, and
    nothing is learned (the unit tests check the learned sample's controls)."""
    server = adapting
    send_warmup(server, "http", warmup_inputs(["session-encoder"], 1, 2, batch_sizes=[1]))
    wait_for_log(server, ["traffic watch on for 'session-encoder'"], timeout=LEARN_TIMEOUT_S)
    repository = server.model_repository
    before = (repository / "session-encoder" / "config.pbtxt").read_bytes()
    step = httpclient.InferInput("INPUT__0", [1, 6, 16], "FP32")
    step.set_data_from_numpy(np.zeros((1, 6, 16), np.float32))
    with client_for(server, "http") as client:
        for sequence in range(3):
            client.infer("session-encoder", [step], sequence_id=100 + sequence, sequence_start=True, sequence_end=True)
    wait_for_log(server, ["the traces of 'session-encoder' hold no input tensors"], timeout=LEARN_TIMEOUT_S)
    assert metrics(server)[("triton_warmup_requests_seen_total", "session-encoder")] == 0
    assert (repository / "session-encoder" / "config.pbtxt").read_bytes() == before


def test_drop_learned_removes_them(adapting):
    server = adapting
    assert learned_names(config_on_disk(server.model_repository, "text-encoder"))
    assert warm.main(["-u", server.http_url, "--models", "text-encoder", "--group-size-max", "2",
                      "--batch-sizes", "1", "--drop-learned"]) == 0
    assert learned_names(config_on_disk(server.model_repository, "text-encoder")) == []


def test_the_cap_holds(adapting):
    server = adapting
    # The first test learned one shape of model-v1; the cap is 2.
    send(server, GROUP_MAX + 3, count=3)
    wait_until(
        lambda: learned_sample_name(model_v1_shape(GROUP_MAX + 3)) in learned_names(config_on_disk(server.model_repository)),
        "the second learned shape",
    )
    send(server, GROUP_MAX + 4, count=3)
    wait_for_log(server, ["not learned: 'model-v1'", "the cap is 2"], timeout=LEARN_TIMEOUT_S)
    assert len(learned_names(config_on_disk(server.model_repository))) == 2


def test_a_restart_warms_the_learned_shapes_at_load(adapting):
    server = adapting
    server.stop()
    server.start()
    server.wait_ready()
    send_warmup(server, "http", warmup_inputs(["model-v1"], 1, GROUP_MAX, batch_sizes=BATCH_SIZES))
    # The same plan again keeps what was learned, and Triton ran it before READY.
    names = [sample["name"] for sample in served_config(server, "model-v1")["model_warmup"]]
    learned = [name for name in names if name.startswith(LEARNED_PREFIX)]
    assert len(learned) == 2 and names[-2:] == learned, names
    ran = {run["sample"] for run in warmup_runs(server, "model-v1")}
    assert set(learned) <= ran, ran


def test_a_read_only_repository_is_warmed_in_place_and_left_as_it_was(
    start_server, template_repository, tmp_path_factory
):
    template = adapting_template(template_repository, tmp_path_factory.mktemp("ro") / "model_repository")
    server = start_adapting(start_server, tmp_path_factory, "adapting-ro", template=template)
    repository = server.model_repository
    (repository / READ_ONLY_MARKER).write_text("mounted read-only in production")
    snapshot = repository_snapshot(repository)
    before = model_statistics(server, "model-v1")["inference_count"]
    send(server, GROUP_MAX + 2, count=3)
    wait_for_log(server, ["learned 'model-v1'", "NOT written"], timeout=LEARN_TIMEOUT_S)
    assert repository_snapshot(repository) == snapshot
    # Warm now all the same: the preflight's run and 3 in place.
    assert model_statistics(server, "model-v1")["inference_count"] - before == 3 + 1 + 3
    wait_until(
        lambda: metrics(server).get(("triton_warmup_adapted_samples_not_kept_total", "model-v1")) == 1,
        "the not-kept counter",
    )


def test_two_replicas_on_one_volume_keep_both_shapes(start_server, template_repository, tmp_path_factory):
    template = adapting_template(template_repository, tmp_path_factory.mktemp("shared") / "model_repository")
    first = start_adapting(start_server, tmp_path_factory, "replica-a", shared=template)
    second = start_adapting(start_server, tmp_path_factory, "replica-b", shared=template)
    sent = [threading.Thread(target=send, args=(first, GROUP_MAX + 2), kwargs={"count": 3}),
            threading.Thread(target=send, args=(second, GROUP_MAX + 3), kwargs={"count": 3})]
    for thread in sent:
        thread.start()
    for thread in sent:
        thread.join()
    expected = {learned_sample_name(model_v1_shape(GROUP_MAX + 2)), learned_sample_name(model_v1_shape(GROUP_MAX + 3))}
    wait_until(lambda: expected <= set(learned_names(config_on_disk(template))), "both shapes in one config")
    config = config_on_disk(template)
    assert len(config.model_warmup) == GROUP_MAX * len(BATCH_SIZES) + 2
    assert not list((template / "model-v1").glob("*.tmp*"))
