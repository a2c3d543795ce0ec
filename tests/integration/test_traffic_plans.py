"""Trace -> plan -> warm -> coverage, on the real server.

One server records a few hundred requests with a skewed shape mix (Triton's
own tracing, level TENSORS); ``triton-warmup-from-trace`` makes plans of
them; a second, cold server warms with the plan through the helper. What
ran is read from Triton: the config it serves, its log's warmup lines, its
statistics, and a witness model whose output is a checksum of every input
it ran before, so the first request after READY shows the recorded data was
the warmup's.
"""

import collections
import dataclasses
import json
import pathlib
import shutil
from typing import Dict, List, Tuple

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from triton_warmup.client import coverage as coverage_command
from triton_warmup.client import from_trace, warm
from triton_warmup.traffic.trace import recording_flags
from live_server import model_statistics, served_config, warmup_runs
from target_models import WITNESS_VOCABULARY, witness_checksum, write_witness_model

WITNESS = "traffic-witness"
ENCODER = "text-encoder"
# (batch size, sequence length) -> requests sent: two shapes carry most of
# the traffic, as in production, and a tail of rare ones.
MIXES = {
    WITNESS: {(1, 6): 80, (2, 6): 40, (1, 11): 30, (4, 3): 15, (1, 23): 6, (3, 23): 3},
    ENCODER: {(1, 16): 60, (1, 32): 25, (2, 16): 10, (1, 5): 5},
}
# The cut plan keeps the most frequent shapes that reach this share.
COVER = 0.9

# Recording sends about 270 requests, a few hundred ms each at most at a new
# text-encoder shape; two servers start. Minutes leave room for a busy machine.
RECORDING_TIMEOUT_S = 300
WARMUP_TIMEOUT_S = 300

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Recording:
    repository: pathlib.Path
    trace: pathlib.Path
    # Per model and (batch, length): the first request sent at that shape.
    first_sent: Dict[str, Dict[Tuple[int, int], Dict[str, np.ndarray]]]


def request_inputs(model: str, batch: int, length: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    if model == WITNESS:
        return {"input_ids": rng.integers(0, WITNESS_VOCABULARY, (batch, length), dtype=np.int64)}
    return {
        "input_ids": rng.integers(0, 1000, (batch, length), dtype=np.int64),
        "attention_mask": np.ones((batch, length), np.int64),
    }


def infer(client, model: str, arrays: Dict[str, np.ndarray]):
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(model, inputs)


def ranked(mix: Dict[Tuple[int, int], int]) -> List[Tuple[Tuple[int, int], int]]:
    """The mix most frequent first (no two counts are equal in MIXES)."""
    return sorted(mix.items(), key=lambda item: -item[1])


def warmup_order(mix: Dict[Tuple[int, int], int]) -> List[Tuple[Tuple[int, int], int]]:
    """The order triton-warmup-from-trace lists them in by default: most frequent last."""
    return ranked(mix)[::-1]


@pytest.fixture(scope="module")
def recorded(start_server, template_repository, tmp_path_factory) -> Recording:
    folder = tmp_path_factory.mktemp("traffic")
    repository = folder / "model_repository"
    shutil.copytree(template_repository, repository)
    write_witness_model(repository, WITNESS)
    trace = folder / "trace.json"
    server = start_server("recording", shared=repository, extra_args=recording_flags(trace))
    rng = np.random.default_rng(14)
    sends = [(model, shape) for model, mix in MIXES.items() for shape, count in mix.items() for _ in range(count)]
    rng.shuffle(sends)
    first_sent: Dict[str, Dict] = collections.defaultdict(dict)
    with httpclient.InferenceServerClient(server.http_url) as client:
        for model in MIXES:
            client.load_model(model)
        for model, (batch, length) in sends:
            arrays = request_inputs(model, batch, length, rng)
            infer(client, model, arrays)
            first_sent[model].setdefault((batch, length), arrays)
    # A clean shutdown closes the trace file's JSON array.
    server.stop()
    return Recording(repository, trace, dict(first_sent))


@pytest.fixture(scope="module")
def plans(recorded, run_cli) -> Dict[str, pathlib.Path]:
    made = {}
    # Recorded data: the witness model's checksum shows the warmup ran it.
    for name, options in (("full", ("--data", "recorded")), ("cut", ("--data", "recorded", "--cover", str(COVER)))):
        made[name] = recorded.trace.parent / f"{name}.yaml"
        result = run_cli(
            from_trace.main, str(recorded.trace), "-r", str(recorded.repository), "-o", str(made[name]), *options
        )
        assert result.returncode == 0, result.stdout + result.stderr
    return made


@dataclasses.dataclass
class Warmed:
    server: object
    output: str
    statistics: Dict
    first_checksum: int


@pytest.fixture(scope="module")
def warmed(recorded, plans, start_server, run_cli) -> Warmed:
    # A new server process: nothing is loaded but the helper, every shape is cold.
    server = start_server("cold", shared=recorded.repository)
    result = run_cli(warm.main, "-u", server.http_url, "--plan", str(plans["full"]))
    assert result.returncode == 0, result.stdout + result.stderr
    # Read before any request: Triton counts the warmup runs in the new version's statistics.
    statistics = model_statistics(server, WITNESS)
    with httpclient.InferenceServerClient(server.http_url) as client:
        response = infer(client, WITNESS, {"input_ids": np.array([[1]], np.int64)})
    return Warmed(server, result.stdout, statistics, int(response.as_numpy("checksum_before")[0][0]))


@pytest.mark.timeout(RECORDING_TIMEOUT_S)
def test_the_plan_lists_every_recorded_shape_most_frequent_last(plans):
    document = yaml.safe_load(plans["full"].read_text())
    for model, mix in MIXES.items():
        samples = document["models"][model]["samples"]
        assert [
            ((sample["batch_size"], sample["inputs"]["input_ids"][0]), sample["requests"]) for sample in samples
        ] == warmup_order(mix)
        # Every input of every sample takes the recorded data.
        assert all(set(sample["data"]) == set(sample["inputs"]) for sample in samples)


@pytest.mark.timeout(WARMUP_TIMEOUT_S)
def test_triton_ran_every_recorded_shape_in_warmup_in_plan_order(warmed):
    config = served_config(warmed.server, WITNESS)
    samples = config["model_warmup"]
    assert [(sample["batch_size"], int(sample["inputs"]["input_ids"]["dims"][0])) for sample in samples] == [
        shape for shape, _ in warmup_order(MIXES[WITNESS])
    ]
    runs = warmup_runs(warmed.server, WITNESS)
    ran = collections.Counter((run["sample"], run["requests"]) for run in runs)
    assert ran == {(sample["name"], sample["batch_size"]): sample["count"] for sample in samples}
    # Triton ran them in the config's order: each sample's runs after the last one's.
    first_run = {}
    for index, run in enumerate(runs):
        first_run.setdefault(run["sample"], index)
    assert sorted(first_run, key=first_run.get) == [sample["name"] for sample in samples]


@pytest.mark.timeout(WARMUP_TIMEOUT_S)
def test_triton_statistics_count_the_warmup_runs_per_batch_size(warmed):
    samples = served_config(warmed.server, WITNESS)["model_warmup"]
    expected = collections.Counter()
    for sample in samples:
        expected[sample["batch_size"]] += sample["count"]
    counted = {int(entry["batch_size"]): int(entry["compute_infer"]["count"]) for entry in warmed.statistics["batch_stats"]}
    assert counted == dict(expected)


@pytest.mark.timeout(WARMUP_TIMEOUT_S)
def test_the_warmup_ran_on_the_recorded_data(warmed, recorded):
    # Each sample of batch b runs as b requests of the first item of the
    # first request recorded at its shape, `count` times.
    samples = served_config(warmed.server, WITNESS)["model_warmup"]
    expected = 0
    for sample in samples:
        shape = (sample["batch_size"], int(sample["inputs"]["input_ids"]["dims"][0]))
        first_item = recorded.first_sent[WITNESS][shape]["input_ids"][0]
        expected += sample["count"] * sample["batch_size"] * witness_checksum(first_item)
    assert expected > 0
    assert warmed.first_checksum == expected


@pytest.mark.timeout(WARMUP_TIMEOUT_S)
def test_coverage_report_matches_what_was_sent(recorded, plans, run_cli):
    common = (str(recorded.trace), "-r", str(recorded.repository), "--json")
    report = json.loads(run_cli(coverage_command.main, *common, "--plan", str(plans["cut"])).stdout)
    for entry in report["models"]:
        mix = ranked(MIXES[entry["model"]])
        total = sum(count for _, count in mix)
        kept, running = 0, 0
        while running < COVER * total:
            running += mix[kept][1]
            kept += 1
        assert (entry["requests"], entry["covered"], entry["warmed_shapes"]) == (total, running, kept)
        assert [
            ((shape["batch_size"], shape["inputs"]["input_ids"][0]), shape["requests"]) for shape in entry["uncovered"]
        ] == mix[kept:]
    gate = run_cli(coverage_command.main, *common[:-1], "--plan", str(plans["cut"]), "--min-coverage", "0.95")
    assert gate.returncode == 1, gate.stdout


@pytest.mark.timeout(WARMUP_TIMEOUT_S)
def test_the_configs_the_helper_wrote_cover_all_recorded_traffic(warmed, recorded, run_cli):
    # Without --plan the coverage reads model_warmup from the configs on disk,
    # which the helper rewrote with the full plan.
    result = run_cli(
        coverage_command.main, str(recorded.trace), "-r", str(recorded.repository), "-m", WITNESS, ENCODER,
        "--min-coverage", "1.0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    total = sum(sum(mix.values()) for mix in MIXES.values())
    assert f"PASS: 100.0% of {total} recorded requests hit a warmed shape" in result.stdout
