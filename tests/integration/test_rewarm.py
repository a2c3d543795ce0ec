"""Re-warming a model that serves traffic (docs/rewarm.md): no request
fails and the model stays READY, over HTTP and gRPC; a re-warm in place
leaves config.pbtxt as the next load needs it; a model with two instances
runs every new sample on both."""

import shutil
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from live_server import client_for, send_warmup, template_with_helper_parameters, warmup_inputs, warmup_runs
from target_models import write_shape_counter_model
from triton_warmup.helper.config_rewrite import read_config

# Four servers, each warming twice under traffic, on a busy machine.
MODULE_TIMEOUT_S = 300

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

COUNTER = "shape-counter"


class Traffic:
    """Client threads sending model-v1 requests at warmed shapes over
    ``protocol``, and a poller asking whether it is READY, until ``stop``."""

    def __init__(self, server, protocol: str, group_max: int, clients: int = 2):
        self.server, self.protocol, self.group_max = server, protocol, group_max
        self.sent, self.failed, self.polls, self.not_ready = [], [], 0, 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(seed,)) for seed in range(clients)]
        self._threads.append(threading.Thread(target=self._poll))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _inputs(self, group: int, rng):
        module = grpcclient if self.protocol == "grpc" else httpclient
        x = module.InferInput("x", [1, group, 64], "FP32")
        x.set_data_from_numpy(rng.standard_normal((1, group, 64)).astype(np.float32))
        mask = module.InferInput("mask", [1, group], "INT64")
        mask.set_data_from_numpy(np.ones((1, group), dtype=np.int64))
        return [x, mask]

    def _send(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with client_for(self.server, self.protocol) as client:
            prepared = [self._inputs(group, rng) for group in range(1, self.group_max + 1)]
            while not self._stop.is_set():
                try:
                    client.infer("model-v1", prepared[rng.integers(len(prepared))])
                    self.sent.append(time.monotonic())
                except Exception as error:  # noqa: BLE001 - a failed request is what the test counts
                    self.failed.append(str(error))

    def _poll(self) -> None:
        with client_for(self.server, self.protocol) as client:
            while not self._stop.is_set():
                self.polls += 1
                if not client.is_model_ready("model-v1"):
                    self.not_ready += 1
                time.sleep(0.05)


def rewarm_under_traffic(server, protocol: str):
    send_warmup(server, protocol, warmup_inputs(["model-v1"], 1, 4, batch_sizes=[1, 2]))
    with Traffic(server, protocol, group_max=4) as traffic:
        time.sleep(0.5)
        started = time.monotonic()
        _, report = send_warmup(server, protocol, warmup_inputs(["model-v1"], 1, 12, batch_sizes=[1, 2]))
        ended = time.monotonic()
        time.sleep(0.3)
    during = sum(1 for at in traffic.sent if started <= at <= ended)
    return report.models[0], traffic, during


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_no_request_fails_while_a_serving_model_warms_in_place(start_server, protocol, measured):
    server = start_server(f"in-place-{protocol}")
    entry, traffic, during = rewarm_under_traffic(server, protocol)

    assert entry.ready and entry.rewarm == "in place", (entry.rewarm, entry.rewarm_reason, entry.error)
    assert "only model_warmup changed" in entry.rewarm_reason
    # Traffic overlapped the re-warm, and none of it was lost.
    assert during > 0 and traffic.failed == [], traffic.failed[:3]
    assert traffic.polls > 0 and traffic.not_ready == 0
    # No reload: Triton loaded model-v1 once, for the first request.
    assert server.log_text().count('"loading: model-v1:1"') == 1
    # The new samples ran count times on the serving instance (the preflight's run aside).
    new_samples = (12 - 4) * 2
    assert entry.in_place_runs == new_samples * entry.count
    measured(f"re-warm in place under {protocol} traffic: {during} requests during {entry.timings.in_place_s:.2f} s "
             f"of runs, 0 failed, {traffic.polls} polls READY")


def test_no_request_fails_while_a_serving_model_reloads(start_server, template_repository, tmp_path):
    """The helper's parameter ``rewarm: reload``: Triton loads the new
    version beside the serving one, which answers until the swap."""
    template = template_with_helper_parameters(template_repository, tmp_path / "reload", rewarm="reload")
    server = start_server("reload", template=template)
    entry, traffic, during = rewarm_under_traffic(server, "http")
    assert entry.ready and entry.rewarm == "reloaded"
    assert entry.rewarm_reason == "the helper's parameter rewarm is reload"
    assert during > 0 and traffic.failed == [] and traffic.not_ready == 0
    assert server.log_text().count('"loading: model-v1:1"') == 2


def test_a_rewarm_in_place_leaves_the_file_that_the_next_load_warms_from(start_server, open_client):
    server = start_server("next-load")
    send_warmup(server, "http", warmup_inputs(["model-v1"], 1, 3, batch_sizes=[1]))
    _, report = send_warmup(server, "http", warmup_inputs(["model-v1"], 1, 6, batch_sizes=[1, 2]))
    entry = report.models[0]
    assert entry.rewarm == "in place" and entry.config_written

    _, on_disk = read_config(server.model_repository / "model-v1")
    shapes = sorted((sample.batch_size, tuple(sample.inputs["mask"].dims)) for sample in on_disk.model_warmup)
    assert shapes == sorted((batch, (group,)) for batch in (1, 2) for group in range(1, 7))
    assert not list((server.model_repository / "model-v1").glob("*backup*"))

    # Triton itself, loading from the file with no helper involved, runs every sample.
    client = open_client(server)
    client.unload_model("model-v1")
    while client.is_model_ready("model-v1"):
        time.sleep(0.05)
    client.load_model("model-v1")
    runs = warmup_runs(server, "model-v1")[-len(on_disk.model_warmup) * entry.count:]
    assert sorted({run["sample"] for run in runs}) == sorted(sample.name for sample in on_disk.model_warmup)


def test_both_instances_run_every_new_sample_in_place(start_server, template_repository, tmp_path, open_client):
    template = tmp_path / "counter"
    shutil.copytree(template_repository, template)
    write_shape_counter_model(template, COUNTER, instances=2)
    server = start_server("two-instances", template=template)
    send_warmup(server, "http", warmup_inputs([COUNTER], 1, 2, batch_sizes=[1]))
    _, report = send_warmup(server, "http", warmup_inputs([COUNTER], 1, 5, batch_sizes=[1]))
    entry = report.models[0]
    assert entry.rewarm == "in place" and entry.instances == 2, entry.rewarm_reason
    assert "2 instances, which share libtorch's caches" in entry.rewarm_reason

    client = open_client(server)
    for group in (3, 4, 5):
        x = httpclient.InferInput("x", [1, group, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, group, 64), dtype=np.float32))
        mask = httpclient.InferInput("mask", [1, group], "INT64")
        mask.set_data_from_numpy(np.ones((1, group), dtype=np.int64))
        # The first answer from each instance: how often it had run this shape, this request included.
        first_seen = {}
        for _ in range(10):
            result = client.infer(COUNTER, [x, mask])
            instance = int(result.as_numpy("instance")[0][0])
            first_seen.setdefault(instance, int(result.as_numpy("seen")[0][0]))
            if len(first_seen) == 2:
                break
        assert len(first_seen) == 2, f"group {group}: only one instance answered"
        # Each instance had run the shape before this request.
        assert all(seen >= 2 for seen in first_seen.values()), (group, first_seen)
