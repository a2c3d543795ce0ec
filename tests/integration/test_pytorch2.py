"""PyTorch 2 models: Triton's PyTorch 2 runtime (behind this project's shim)
on the embedded server, warmed before READY, and Inductor's cache reused.

What compiled is read from the runtime itself: the shim logs every
``execute`` that made torch.compile trace or compile a graph, with torch's
own counters, and keeps the counts where the helper reads them
(``report.compile``). No timing is asserted.
"""

import json
import os
import pathlib
import re
import shutil
import threading
import time
from typing import Optional

import numpy as np
import pytest
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from live_server import (
    PROJECT_REPOSITORY,
    kernel_segfaults,
    send_warmup,
    served_config,
    serving,
    stub_processes,
    template_with_helper_parameters,
    warmup_inputs,
)
from triton_warmup import example_models, pytorch2
from triton_warmup.helper.repository_guard import SCRATCH_PREFIX
from triton_warmup.report import COMPILE_COMPILED, COMPILE_REUSED, PREFLIGHT_RECORD

MODEL = example_models.COMPILED_ENCODER
# Models kept with the benchmark (bench/pytorch2_benchmark.py).
BENCH_MODELS = pathlib.Path(__file__).resolve().parents[2] / "bench" / "models"
TORCHSCRIPT = "model-v1"
# What the shim logs when Triton hands it a TorchScript model (runtime.py).
MISROUTED = "does not ask for the PyTorch 2 runtime"
# Cold compiles on 2 CPUs take tens of seconds per load; five loads, four
# server starts and two servers side by side, with room for a busy machine.
MODULE_TIMEOUT_S = 900

pytestmark = [pytest.mark.integration, pytest.mark.timeout(MODULE_TIMEOUT_S)]

# Few shapes, but every kind torch.compile treats apart: size 1 and larger in
# the group and the batch dimension.
GROUP_MIN, GROUP_MAX, BATCH_SIZES = 1, 3, [1, 2]
COMPILE_LINE = re.compile(r"torch\.compile in (initialize|execute) of '([^']+)'")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> pathlib.Path:
    """The helper, compiled-encoder with its weights, and model-v1 (TorchScript)."""
    repository = tmp_path_factory.mktemp("pytorch2") / "model_repository"
    for name in ("warmup_helper", MODEL, TORCHSCRIPT):
        shutil.copytree(PROJECT_REPOSITORY / name, repository / name,
                        ignore=shutil.ignore_patterns("model.pt", "__pycache__", ".*"))
    torch_save(example_models.compiled_encoder_weights(repository), repository / MODEL / "1" / "model.pt")
    # A fresh clone has no version folder for a TorchScript example (git keeps
    # no empty folders, and model.pt is generated).
    (repository / TORCHSCRIPT / "1").mkdir(exist_ok=True)
    example_models.build_model(example_models.FEATURE_DIMS[TORCHSCRIPT]).save(
        str(repository / TORCHSCRIPT / "1" / "model.pt"))
    return repository


def torch_save(state, path: pathlib.Path) -> None:
    import torch

    torch.save(state, str(path))


# The Python stub sends its log lines to the server, which writes them a
# moment after the response has gone out: a reader waits this long for a
# line that may still be on its way.
LOG_LAG_S = 2.0


def compile_lines_after_ready(server, model: str, more_than: Optional[int] = None):
    """The runtime's "torch.compile in execute" lines for ``model`` after its
    last successful load: compilations a client's request paid for. Waits up
    to LOG_LAG_S for more than ``more_than`` of them; without it, the whole
    time, so that a late line is not taken for none."""
    deadline = time.monotonic() + LOG_LAG_S
    while True:
        log = server.log_text()
        loaded = log.rfind(f"successfully loaded '{model}'")
        assert loaded >= 0, f"{model} never loaded"
        lines = [
            line for line in log[loaded:].splitlines()
            if (match := COMPILE_LINE.search(line)) and match.group(2) == model
        ]
        if (more_than is not None and len(lines) > more_than) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def send_each_planned_shape(server, model: str) -> int:
    """One request per planned sample, as a client sends it: one request of
    the sample's batch size (Triton's warmup sends B requests of one row)."""
    samples = served_config(server, model)["model_warmup"]
    with httpclient.InferenceServerClient(server.http_url) as client:
        for sample in samples:
            batch = sample["batch_size"]
            inputs = []
            for name, spec in sample["inputs"].items():
                dims = [batch] + [int(d) for d in spec["dims"]]
                dtype = np.float32 if spec["data_type"] == "TYPE_FP32" else np.int64
                tensor = httpclient.InferInput(name, dims, "FP32" if dtype is np.float32 else "INT64")
                tensor.set_data_from_numpy(np.ones(dims, dtype=dtype))
                inputs.append(tensor)
            result = client.infer(model, inputs)
            assert result.as_numpy("output").shape == (batch, example_models.OUTPUT_DIM)
    return len(samples)


def warm(server):
    _, report = send_warmup(server, "http", warmup_inputs([MODEL], GROUP_MIN, GROUP_MAX, batch_sizes=BATCH_SIZES))
    entry = report.entry(MODEL)
    assert entry.ready, entry.error
    return entry


def rewrite_config(path: pathlib.Path, edit) -> None:
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    edit(config)
    path.write_text(text_format.MessageToString(config))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> pathlib.Path:
    """One Inductor cache for the module's servers, empty at first."""
    return tmp_path_factory.mktemp("torch_compile_cache")


@pytest.fixture(scope="module")
def cold(template, cache, tmp_path_factory):
    """A first start: nothing compiled yet. The server stays up for the
    module's checks of what a client sees after READY."""
    repository = tmp_path_factory.mktemp("cold") / "model_repository"
    shutil.copytree(template, repository)
    with serving(repository, repository.parent / "server", extra_env={"TORCHINDUCTOR_CACHE_DIR": str(cache)}) as server:
        entry = warm(server)
        yield server, entry


def test_a_batching_pytorch2_model_loads_warm_and_compiled(cold):
    server, entry = cold
    assert entry.kind == "plain" and entry.preflight.how == "scratch copy"
    # The preflight's scratch copy compiled; the real load took it all from
    # the cache (test_the_real_load_after_a_passing_preflight_compiles_nothing).
    assert entry.compile.verdict == COMPILE_COMPILED and entry.compile.preflight_cache_misses > 0
    assert entry.compile.instances == 1 and entry.compile.traced_from_cache > 0
    # The locale shim worked: Inductor read its templates and compiled.
    assert "UnicodeDecodeError" not in server.log_text()


def test_no_planned_shape_compiles_after_ready(cold):
    server, _ = cold
    sent = send_each_planned_shape(server, MODEL)
    assert sent == (GROUP_MAX - GROUP_MIN + 1) * len(BATCH_SIZES)
    assert compile_lines_after_ready(server, MODEL) == []


def test_an_unplanned_shape_compiles_and_the_log_says_so(cold):
    """The control for the check above: a shape the plan left out (a larger
    batch, one request) does make torch.compile work, and the runtime logs it."""
    server, _ = cold
    before = len(compile_lines_after_ready(server, MODEL))
    with httpclient.InferenceServerClient(server.http_url) as client:
        x = httpclient.InferInput("x", [8, 1, 64], "FP32")
        x.set_data_from_numpy(np.ones((8, 1, 64), np.float32))
        mask = httpclient.InferInput("mask", [8, 1], "INT64")
        mask.set_data_from_numpy(np.ones((8, 1), np.int64))
        client.infer(MODEL, [x, mask])
    lines = compile_lines_after_ready(server, MODEL, more_than=before)
    assert len(lines) == before + 1 and "[8, 1, 64]" in lines[-1]


COUNTS_IN_LINE = re.compile(r"torch\.compile in (?:initialize|execute) of '([^']+)' version \S+: (\{[^}]*\})")


def compile_counts(log: str, model: str):
    """The counts of every "torch.compile in ..." line the shim logged for
    ``model`` (exactly that name), in the order logged."""
    # Triton's log escapes the quotes of the JSON the shim writes.
    return [json.loads(match.group(2).replace('\\"', '"')) for match in COUNTS_IN_LINE.finditer(log)
            if match.group(1) == model]


def test_the_real_load_after_a_passing_preflight_compiles_nothing(tmp_path):
    """Issue 38, part 2: the preflight's scratch copy runs each sample as
    Triton's warmup will (a sample of batch size B as B requests of one row
    in one execute) and keeps what Dynamo traced under the model's own key,
    so the real load that follows compiles nothing: judged from the shim's
    counts (the status files the report sums, and the lines in Triton's
    log), not from timing. On the previous preflight, the real load traced
    every function again and compiled the batching helpers for B gathered
    requests (4 of 9 graphs with the benchmark's plan)."""
    repository = tmp_path / "model_repository"
    for name in ("warmup_helper", MODEL):
        shutil.copytree(PROJECT_REPOSITORY / name, repository / name,
                        ignore=shutil.ignore_patterns("model.pt", "__pycache__", ".*"))
    torch_save(example_models.compiled_encoder_weights(repository), repository / MODEL / "1" / "model.pt")
    with serving(repository, tmp_path / "server", extra_env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}) as server:
        entry = warm(server)
        assert entry.preflight.how == "scratch copy" and entry.preflight.error is None
        record = entry.compile
        # The scratch copy compiled (an empty cache), the real load nothing:
        # no graph missed Inductor's cache, and what Dynamo traced on the
        # scratch copy the real load installed from Dynamo's cache.
        assert record.preflight_cache_misses > 0 and record.preflight_graphs > 0
        assert record.instances == 1 and record.cache_misses == 0
        assert record.cache_hits == record.graphs and record.traced_from_cache > 0
        log = server.log_text()
        loaded = log.find(f"successfully loaded '{MODEL}'")
        real = compile_counts(log[:loaded], MODEL)
        scratch = compile_counts(log, SCRATCH_PREFIX + MODEL)
        assert real and scratch
        assert sum(counts["inductor.fxgraph_cache_miss"] for counts in real) == 0
        assert sum(counts["inductor.fxgraph_cache_hit"] for counts in real) == record.cache_hits
        assert sum(counts["inductor.fxgraph_cache_miss"] for counts in scratch) == record.preflight_cache_misses
        # Inductor's checks of the CPU's vector sets start early on the
        # scratch copy, which compiles; the real load compiles nothing and
        # starts none.
        assert f"'{SCRATCH_PREFIX}{MODEL}' {pytorch2.ISA_CHECKS_STARTED}" in log
        assert f"'{MODEL}' {pytorch2.ISA_CHECKS_STARTED}" not in log
        # And, as before, nothing compiles for a client after READY.
        send_each_planned_shape(server, MODEL)
        assert compile_lines_after_ready(server, MODEL) == []


@pytest.fixture(scope="module")
def restarted(cold, cache, tmp_path_factory):
    """The cold server stopped and a new one started on the same repository
    and cache: what a restart or a replica on a shared volume pays."""
    first, _ = cold
    first.stop()
    repository = first.model_repository
    with serving(repository, tmp_path_factory.mktemp("restart"), extra_env={"TORCHINDUCTOR_CACHE_DIR": str(cache)}) as server:
        yield server, warm(server)


def test_a_restart_reuses_the_cache_and_the_preflight_record(restarted):
    server, entry = restarted
    assert entry.preflight.how == PREFLIGHT_RECORD
    assert entry.compile.verdict == COMPILE_REUSED
    # Dynamo's own cache (the shim's keyed folder): nothing is traced again.
    assert entry.compile.cache_misses == 0 and entry.compile.graphs == 0
    assert entry.compile.traced_from_cache > 0
    assert pytorch2.ISA_CHECKS_STARTED not in server.log_text()
    send_each_planned_shape(server, MODEL)
    assert compile_lines_after_ready(server, MODEL) == []
    # What it runs is the model's code: the same outputs as the module run eagerly.
    for batch, group in ((1, 1), (2, 3)):
        x, mask = example_inputs(batch, group)
        np.testing.assert_allclose(served_output(server, x, mask), eager_output(server.model_repository, x, mask),
                                   rtol=1e-4, atol=OUTPUT_ATOL)


# Compiled and eager float results differ by reordering, far below what a
# change of computation (ReLU for GELU) moves them.
OUTPUT_ATOL = 1e-5


def example_inputs(batch: int, group: int):
    rng = np.random.default_rng(batch * 100 + group)
    x = rng.normal(size=(batch, group, example_models.FEATURE_DIMS[TORCHSCRIPT])).astype(np.float32) * 2
    return x, np.ones((batch, group), np.int64)


def served_output(server, x, mask):
    with httpclient.InferenceServerClient(server.http_url) as client:
        inputs = [
            httpclient.InferInput("x", list(x.shape), "FP32"),
            httpclient.InferInput("mask", list(mask.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(mask)
        return client.infer(MODEL, inputs).as_numpy("output")


def eager_output(repository: pathlib.Path, x, mask):
    """The model's module file and weights, run in this process without torch.compile."""
    import importlib.util

    import torch

    version = repository / MODEL / "1"
    spec = importlib.util.spec_from_file_location(f"eager_{MODEL.replace('-', '_')}", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.MaskedPoolingEncoder()
    model.load_state_dict(torch.load(str(version / "model.pt")))
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x), torch.from_numpy(mask)).numpy()


def other_compile_options(path: pathlib.Path) -> None:
    options = {"options": {"epilogue_fusion": False}}
    rewrite_config(path, lambda config: config.parameters["TORCH_COMPILE_OPTIONAL_PARAMETERS"]
                   .__setattr__("string_value", json.dumps(options)))


def other_computation(path: pathlib.Path) -> None:
    # The same weights, another computation: ReLU for GELU, in the same line.
    path.write_text(path.read_text().replace("torch.nn.GELU()", "torch.nn.ReLU()"))


@pytest.mark.parametrize("path, change", [("config.pbtxt", other_compile_options), ("1/model.py", other_computation)],
                         ids=["TORCH_COMPILE_OPTIONAL_PARAMETERS", "model file"])
def test_a_change_to_what_is_compiled_compiles_again(restarted, path, change):
    server, _ = restarted
    changed = server.model_repository / MODEL / path
    original = changed.read_bytes()
    change(changed)
    assert changed.read_bytes() != original
    x, mask = example_inputs(2, 3)
    before = served_output(server, x, mask)
    try:
        entry = warm(server)
        record = entry.compile
        assert record.verdict == COMPILE_COMPILED
        if entry.preflight is not None and entry.preflight.how == "scratch copy":
            # A preflight on a scratch copy: it traced and compiled anew
            # (nothing from the old key), and the real load installed that.
            assert record.preflight_cache_misses > 0 and record.preflight_graphs > 0
            assert record.cache_misses == 0
        else:
            # No scratch copy (the planned config did not change, so no
            # preflight ran): the real load compiled.
            assert record.cache_misses > 0 and record.graphs > 0 and record.traced_from_cache == 0
        after = served_output(server, x, mask)
        if path.endswith("model.py"):
            # The edited forward runs, not code traced from the old one.
            expected = eager_output(server.model_repository, x, mask)
            assert np.abs(expected - before).max() > 10 * OUTPUT_ATOL
            np.testing.assert_allclose(after, expected, rtol=1e-4, atol=OUTPUT_ATOL)
    finally:
        changed.write_bytes(original)


# A submodule whose class is made inside a function: Dynamo cannot save a
# reference to it, so with its cache on, torch.compile fails ("defined in
# local scope") instead of compiling.
UNPICKLABLE_GUARD = """
import torch


def make_doubler():
    class Doubler(torch.nn.Module):
        def forward(self, x):
            return x * 2.0

    return Doubler()


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = make_doubler()

    def forward(self, x):
        return self.inner(x)
"""


def wait_for_exit(pids, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)


def test_a_model_whose_guards_cannot_be_saved_still_serves(restarted):
    """Dynamo's cache is experimental: where it fails a compile, the shim
    turns it off for that process and compiles again. And its stub ends
    cleanly at the unload: before the shim released what torch.compile
    kept of the requests (``release_compiled_state``), this stub crashed
    at its exit in most runs (SIGSEGV freeing a request's tensor after the
    shared memory was gone), which only the kernel's log shows."""
    server, _ = restarted
    name = "local-class-doubler"
    folder = server.model_repository / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(UNPICKLABLE_GUARD)
    (folder / "config.pbtxt").write_text(
        f'name: "{name}" backend: "pytorch" runtime: "model.py" max_batch_size: 0 '
        'input [{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }] '
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }]'
    )
    try:
        with httpclient.InferenceServerClient(server.http_url) as client:
            others = stub_processes(server)
            client.load_model(name)
            x = httpclient.InferInput("x", [3], "FP32")
            x.set_data_from_numpy(np.array([1.0, 2.0, 3.0], np.float32))
            result = client.infer(name, [x]).as_numpy("y")
            stubs = stub_processes(server) - others
            client.unload_model(name)
        np.testing.assert_array_equal(result, [2.0, 4.0, 6.0])
        assert f"Dynamo's cache is off for '{name}'" in server.log_text()
        assert stubs
        wait_for_exit(stubs)
        crashes = kernel_segfaults(stubs)
        if crashes is not None:
            assert crashes == []
    finally:
        shutil.rmtree(folder)


def test_a_torchscript_model_loaded_after_a_pytorch2_one_runs_in_the_python_runtime(restarted):
    """Triton 2.51's one 'pytorch' backend per server: in this server a
    PyTorch 2 model loaded first, so a TorchScript model loaded after it goes
    to the PyTorch 2 runtime, and the shim says so in the log. This is the
    control for the mixed request of the last test (docs/pytorch2.md)."""
    server, _ = restarted
    with httpclient.InferenceServerClient(server.http_url) as client:
        client.load_model(TORCHSCRIPT)
        client.unload_model(TORCHSCRIPT)
    assert f"'{TORCHSCRIPT}' {MISROUTED}" in server.log_text()


# Issue 38's kind of model (bench/models/compiled-tokens): INT64 token ids
# [-1] and an INT64 [1], two outputs, max_batch_size 4. Warmed at group size
# 1 alone, every batch size B > 1 of the plan reaches it from a client as one
# request of B rows [B, 1], which Triton's warmup never sends (it sends B
# requests of one row); the shim compiles the runtime's batching helpers for
# those in initialize.
TOKENS_MODEL = "compiled-tokens"
TOKENS_BATCH_SIZES = [1, 2, 4]
FULL_COLLECTION_LINE = re.compile(r"full garbage collection in execute of '([^']+)'")


def test_batches_of_more_than_one_row_at_group_size_1_are_warm_after_a_first_start(tmp_path):
    """A first start on an empty cache, then one request of B rows at group
    size 1 for each planned B, as a client sends them. Judged from the shim's
    counts in Triton's log, not from timing: no execute after READY made
    Dynamo do anything (a compile, a recompile past its limit, a skipped
    frame), and no full garbage collection ran inside one.

    Group sizes 1 and 2 with batch sizes 1, 2, 4 take the runtime's scatter
    past Dynamo's recompile limit on the scratch copy, unless the shim lifts
    it there: the real load then compiled the entry the scratch copy had
    skipped (one graph, every first start). It compiles nothing now."""
    repository = tmp_path / "model_repository"
    shutil.copytree(PROJECT_REPOSITORY / "warmup_helper", repository / "warmup_helper",
                    ignore=shutil.ignore_patterns("__pycache__", ".*"))
    shutil.copytree(BENCH_MODELS / TOKENS_MODEL, repository / TOKENS_MODEL,
                    ignore=shutil.ignore_patterns("__pycache__", "model.pt"))
    with serving(repository, tmp_path / "server",
                 extra_env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}) as server:
        _, report = send_warmup(server, "http", warmup_inputs([TOKENS_MODEL], 1, 2, batch_sizes=TOKENS_BATCH_SIZES))
        entry = report.entry(TOKENS_MODEL)
        assert entry.ready, entry.error
        assert entry.compile.verdict == COMPILE_COMPILED
        assert entry.compile.preflight_cache_misses > 0
        assert entry.compile.cache_misses == 0 and entry.compile.graphs == 0, entry.compile
        with httpclient.InferenceServerClient(server.http_url) as client:
            for batch in TOKENS_BATCH_SIZES:
                token_ids = httpclient.InferInput("token_ids", [batch, 1], "INT64")
                token_ids.set_data_from_numpy(np.ones((batch, 1), np.int64))
                domain = httpclient.InferInput("domain", [batch, 1], "INT64")
                domain.set_data_from_numpy(np.ones((batch, 1), np.int64))
                result = client.infer(TOKENS_MODEL, [token_ids, domain])
                assert result.as_numpy("hidden").shape == (batch, 1, 32)
                assert result.as_numpy("pooled").shape == (batch, 32)
        assert compile_lines_after_ready(server, TOKENS_MODEL) == []
        log = server.log_text()
        after_ready = log[log.rfind(f"successfully loaded '{TOKENS_MODEL}'"):]
        assert [line for line in after_ready.splitlines() if FULL_COLLECTION_LINE.search(line)] == []
        # The control: the shim compiled the batching helpers for one
        # request of 2 and of 4 rows while the model initialized.
        assert f"torch.compile in initialize of '{TOKENS_MODEL}'" in log


def test_two_servers_sharing_one_cache_both_end_up_ready_and_warm(template, tmp_path_factory):
    """Two replicas start together on an empty shared cache: Inductor's own
    file locks and atomic writes keep the cache whole, and both are warm.
    Each warms a TorchScript model in the same request, the PyTorch 2 model
    named first: the helper loads it last, so that the TorchScript model
    stays in Triton's native backend."""
    shared_cache = tmp_path_factory.mktemp("shared_cache")
    # The preflight off: two scratch copies on top would double a long test.
    quick = template_with_helper_parameters(template, tmp_path_factory.mktemp("quick") / "model_repository",
                                            preflight="false")
    entries, errors = {}, []
    servers = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path_factory.mktemp(f"replica_{name}")
            shutil.copytree(quick, workdir / "model_repository")
            context = serving(workdir / "model_repository", workdir, extra_env={"TORCHINDUCTOR_CACHE_DIR": str(shared_cache)})
            servers.append((name, context, context.__enter__()))

        def warm_one(name, server):
            try:
                inputs = warmup_inputs([MODEL, TORCHSCRIPT], GROUP_MIN, GROUP_MAX, feature_dims=[64, 64],
                                       batch_sizes=BATCH_SIZES)
                _, report = send_warmup(server, "http", inputs)
                assert report.loaded == [MODEL, TORCHSCRIPT], report.to_dict()
                entries[name] = report.entry(MODEL)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(f"{name}: {error!r}")

        threads = [threading.Thread(target=warm_one, args=(name, server)) for name, _, server in servers]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(MODULE_TIMEOUT_S - 60)
        assert not errors, errors
        assert set(entries) == {"a", "b"}, f"warmups unfinished after {time.monotonic() - started:.0f} s"
        for name, _, server in servers:
            send_each_planned_shape(server, MODEL)
            assert compile_lines_after_ready(server, MODEL) == [], name
            log = server.log_text()
            assert MISROUTED not in log, name
            # Triton's native backend created the TorchScript model's instance.
            assert re.search(rf"libtorch\.cc:\d+\] \"TRITONBACKEND_ModelInstanceInitialize: {TORCHSCRIPT}_0", log), name
        assert all(entry.compile.graphs > 0 for entry in entries.values())
    finally:
        for _, context, _ in servers:
            context.__exit__(None, None, None)
