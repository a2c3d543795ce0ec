"""Models nobody on this project wrote warm up through the same helper,
without code changes: other input names and types, the INPUT__0 naming
convention, a preferred batch size, two instances, and a model without
batching."""

import time

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from triton_warmup.helper.config_rewrite import read_config
from live_server import (
    executions,
    load_windows,
    model_states,
    request_shapes,
    send_warmup,
    warmup_inputs,
    warmup_runs,
)
from triton_warmup.helper.warmup_plan import DEFAULT_WARMUP_COUNT

VOCABULARY = 50
# Server start, then two instances of the transformer and one instance of
# the other model, and a few requests; the margin is for a busy machine.
MODULE_TIMEOUT_S = 240

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

TOKEN_CLASSIFIER_CONFIG = """
name: "token-classifier"
platform: "pytorch_libtorch"
max_batch_size: 4
input [
  { name: "INPUT__0" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "INPUT__1" data_type: TYPE_INT64 dims: [ -1 ] }
]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
dynamic_batching { preferred_batch_size: [ 3 ] }
instance_group [ { count: 2 kind: KIND_CPU } ]
"""

UNBATCHED_CONFIG = """
name: "unbatched-scorer"
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "features" data_type: TYPE_FP32 dims: [ -1, 8 ] } ]
output [ { name: "scores" data_type: TYPE_FP32 dims: [ -1, 2 ] } ]
"""


class TokenClassifier(torch.nn.Module):
    """A small transformer over token ids, padded positions masked out."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCABULARY, 16)
        self.encoder = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(input_ids))
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return self.head((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0))


def write_model(folder, config, module):
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    module.save(str(folder / "1" / "model.pt"))


@pytest.fixture(scope="module")
def server(start_server):
    torch.manual_seed(0)
    server = start_server("foreign")
    repository = server.model_repository
    write_model(repository / "token-classifier", TOKEN_CLASSIFIER_CONFIG, torch.jit.script(TokenClassifier().eval()))
    scorer = torch.nn.Linear(8, 2).eval()
    write_model(repository / "unbatched-scorer", UNBATCHED_CONFIG, torch.jit.trace(scorer, torch.zeros(3, 8)))
    return server


@pytest.fixture(scope="module")
def report(server):
    loaded, report = send_warmup(server, "http", warmup_inputs(["token-classifier", "unbatched-scorer"], 1, 2))
    assert loaded == ["token-classifier", "unbatched-scorer"], report
    return report


def test_plan_follows_each_config(server, report):
    token, scorer = report.models
    # Batch sizes: powers of two up to 4, plus the preferred 3.
    assert token.batch_sizes == [1, 2, 3, 4] and token.warmup_samples == 2 * 4
    assert token.instances == 2
    assert scorer.batch_sizes == [1] and scorer.warmup_samples == 2
    _, config = read_config(server.model_repository / "token-classifier")
    sample = config.model_warmup[0]
    # Token ids get zeros, never random values that could leave the vocabulary.
    assert sample.inputs["INPUT__0"].zero_data and sample.inputs["INPUT__1"].zero_data


def test_every_instance_ran_every_shape_before_ready(server, report):
    (window,) = load_windows(server, "token-classifier")
    runs = warmup_runs(server, "token-classifier", window)
    instances = {run["instance"] for run in runs}
    assert instances == {"token-classifier_0_0", "token-classifier_0_1"}
    for instance in instances:
        for group in (1, 2):
            for batch in (1, 2, 3, 4):
                # A batch-N sample reaches the backend as N requests that it
                # runs as one execute.
                matching = [
                    run
                    for run in runs
                    if run["instance"] == instance
                    and run["requests"] == batch
                    and run["shapes"] == {"INPUT__0": [batch, group], "INPUT__1": [batch, group]}
                ]
                assert sorted(run["iteration"] for run in matching) == list(range(1, DEFAULT_WARMUP_COUNT + 1)), (
                    instance, group, batch)

    (window,) = load_windows(server, "unbatched-scorer")
    shapes = [run["shapes"]["features"] for run in warmup_runs(server, "unbatched-scorer", window)]
    assert sorted(shapes) == [[1, 8]] * DEFAULT_WARMUP_COUNT + [[2, 8]] * DEFAULT_WARMUP_COUNT


def test_warm_foreign_models_answer(server, report, open_client):
    assert model_states(server)["token-classifier"] == "READY"
    client = open_client(server)
    ids = np.array([[3, 7, 9], [1, 2, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.int64)
    inputs = [httpclient.InferInput("INPUT__0", [2, 3], "INT64"), httpclient.InferInput("INPUT__1", [2, 3], "INT64")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(mask)
    served = client.infer("token-classifier", inputs).as_numpy("OUTPUT__0")
    local = torch.jit.load(str(server.model_repository / "token-classifier" / "1" / "model.pt"))
    np.testing.assert_allclose(served, local(torch.from_numpy(ids), torch.from_numpy(mask)).detach().numpy(), rtol=1e-4, atol=1e-5)

    features = np.arange(40, dtype=np.float32).reshape(5, 8)
    request = [httpclient.InferInput("features", [5, 8], "FP32")]
    request[0].set_data_from_numpy(features)
    assert client.infer("unbatched-scorer", request).as_numpy("scores").shape == (5, 2)


def test_feature_dims_can_be_zero_for_models_that_fix_or_lack_them(server, report):
    loaded, again = send_warmup(
        server, "grpc", warmup_inputs(["token-classifier", "unbatched-scorer"], 1, 2, feature_dims=[0, 8])
    )
    assert loaded == ["token-classifier", "unbatched-scorer"]
    assert [entry.config_changed for entry in again.models] == [False, False]


def test_requests_mode_sends_each_shape_to_a_two_instance_and_an_unbatched_model(server, report):
    """Every shape arrives count x instances times, each request at its own
    shape: sent one after another, the dynamic batcher cannot merge them."""
    sent_at = time.time()
    inputs = warmup_inputs(["token-classifier", "unbatched-scorer"], 1, 2)
    inputs["MODE"] = np.array([b"requests"], dtype=np.object_)
    loaded, again = send_warmup(server, "grpc", inputs)
    assert again.mode == "requests" and loaded == ["token-classifier", "unbatched-scorer"]
    window = (sent_at, time.time())
    runs = executions(server, "token-classifier", window)
    assert runs and all(run["requests"] == 1 for run in runs)
    shapes = request_shapes(server, "token-classifier", window)
    assert len(runs) == len(shapes)
    for group in (1, 2):
        for batch in (1, 2, 3, 4):
            matching = [shape for shape in shapes if shape["INPUT__0"] == [batch, group]]
            assert len(matching) == DEFAULT_WARMUP_COUNT * 2, (group, batch, shapes)
    shapes = sorted(shape["features"] for shape in request_shapes(server, "unbatched-scorer", window))
    assert shapes == [[1, 8]] * DEFAULT_WARMUP_COUNT + [[2, 8]] * DEFAULT_WARMUP_COUNT
