"""The PyTorch 2 runtime's installation, and what the helper makes of the
counts the runtime keeps (``helper/compile_status.py``)."""

import ast
import json
import pathlib
import time

import pytest
from tritonclient.grpc import model_config_pb2

from triton_warmup import pytorch2
from triton_warmup.client.warm import compile_note
from triton_warmup.helper.compile_status import is_pytorch2, read_compile_record
from triton_warmup.report import COMPILE_COMPILED, COMPILE_REUSED, COMPILE_UNKNOWN, CompileRecord, ModelEntry

TRITON_RUNTIME = "# Triton's PyTorch 2 runtime\nclass TritonPythonModel:\n    pass\n"


def shim_constants():
    """The module-level string constants of the shim, read without running it."""
    tree = ast.parse(pytorch2.shim_source().read_text())
    return {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }


def test_the_shim_and_the_package_agree_on_names():
    constants = shim_constants()
    assert constants["UPSTREAM_RUNTIME_FILE"] == pytorch2.UPSTREAM_RUNTIME_FILE
    assert constants["STATUS_FOLDER"] == pytorch2.STATUS_FOLDER
    assert constants["PREFLIGHT_PARAMETER"] == pytorch2.PREFLIGHT_PARAMETER
    assert constants["ISA_CHECKS_STARTED"] == pytorch2.ISA_CHECKS_STARTED
    assert pytorch2.is_shim(pytorch2.shim_source())


def test_installing_moves_tritons_runtime_aside_and_puts_the_shim_in_front(tmp_path):
    (tmp_path / "model.py").write_text(TRITON_RUNTIME)
    (tmp_path / "libtriton_pytorch.so").write_bytes(b"\x7fELF")
    done = pytorch2.install_runtime(tmp_path)
    assert (tmp_path / pytorch2.UPSTREAM_RUNTIME_FILE).read_text() == TRITON_RUNTIME
    assert pytorch2.is_shim(tmp_path / "model.py")
    assert len(done) == 2
    # Again: only the shim is replaced; Triton's runtime is not overwritten by the shim.
    assert len(pytorch2.install_runtime(tmp_path)) == 1
    assert (tmp_path / pytorch2.UPSTREAM_RUNTIME_FILE).read_text() == TRITON_RUNTIME
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "libtriton_pytorch.so", "model.py", pytorch2.UPSTREAM_RUNTIME_FILE
    ]


def test_installing_from_a_given_runtime(tmp_path):
    upstream = tmp_path / "src_model.py"
    upstream.write_text(TRITON_RUNTIME)
    folder = tmp_path / "pytorch"
    folder.mkdir()
    pytorch2.install_runtime(folder, upstream=upstream)
    assert (folder / pytorch2.UPSTREAM_RUNTIME_FILE).read_text() == TRITON_RUNTIME
    assert pytorch2.is_shim(folder / "model.py")


@pytest.mark.parametrize("content", [None, "shim"])
def test_installing_refuses_a_folder_without_tritons_runtime(tmp_path, content):
    if content == "shim":
        (tmp_path / "model.py").write_text(pytorch2.shim_source().read_text())
    with pytest.raises(FileNotFoundError, match="no PyTorch 2 runtime"):
        pytorch2.install_runtime(tmp_path)
    assert not (tmp_path / pytorch2.UPSTREAM_RUNTIME_FILE).exists()


def test_the_command_says_what_it_did_and_fails_with_1(tmp_path, capsys):
    assert pytorch2.main([str(tmp_path)]) == 1
    assert "FAILED" in capsys.readouterr().err
    (tmp_path / "model.py").write_text(TRITON_RUNTIME)
    assert pytorch2.main([str(tmp_path)]) == 0
    assert "the shim" in capsys.readouterr().out


def config(text: str) -> model_config_pb2.ModelConfig:
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_pytorch2_models_are_told_from_torchscript_ones():
    assert is_pytorch2(config('backend: "pytorch" runtime: "model.py"'))
    assert not is_pytorch2(config('backend: "pytorch"'))
    assert not is_pytorch2(config('platform: "pytorch_libtorch"'))
    assert not is_pytorch2(config('backend: "python"'))


def write_status(cache: pathlib.Path, model: str, version: str, name: str, started: float, **counts) -> None:
    folder = cache / pytorch2.STATUS_FOLDER / model / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({
        "started": started,
        "counts": {f"inductor.fxgraph_cache_{key}": value for key, value in counts.items() if key in ("hit", "miss")}
        | {"stats.unique_graphs": counts.get("graphs", 0)},
    }))


def test_a_load_that_missed_the_cache_compiled(tmp_path):
    now = time.time()
    write_status(tmp_path, "m", "1", "host-1", now, hit=1, miss=2, graphs=3)
    write_status(tmp_path, "m", "1", "host-2", now, hit=3, miss=0, graphs=3)
    record = read_compile_record(str(tmp_path), "m", ["1"], now)
    assert (record.verdict, record.instances, record.graphs, record.cache_hits, record.cache_misses) == (
        COMPILE_COMPILED, 2, 6, 4, 2)


def test_only_this_loads_instances_count(tmp_path):
    now = time.time()
    write_status(tmp_path, "m", "1", "old", now - 600, hit=0, miss=5, graphs=5)
    write_status(tmp_path, "m", "1", "new", now + 0.5, hit=4, miss=0, graphs=4)
    write_status(tmp_path, "other", "1", "new", now, hit=0, miss=9, graphs=9)
    (tmp_path / pytorch2.STATUS_FOLDER / "m" / "1" / "broken.json").write_text("{")
    record = read_compile_record(str(tmp_path), "m", ["1"], now)
    assert (record.verdict, record.instances, record.cache_hits, record.cache_misses) == (COMPILE_REUSED, 1, 4, 0)


def test_versions_are_summed(tmp_path):
    now = time.time()
    write_status(tmp_path, "m", "1", "a", now, hit=2, graphs=2)
    write_status(tmp_path, "m", "2", "a", now, miss=1, graphs=1)
    record = read_compile_record(str(tmp_path), "m", ["2", "1"], now)
    assert (record.verdict, record.instances, record.graphs) == (COMPILE_COMPILED, 2, 3)


def test_the_scratch_copys_compiles_count_and_old_files_go(tmp_path):
    now = time.time()
    write_status(tmp_path, ".scratch.m", "1", "a", now, miss=6, graphs=6)
    write_status(tmp_path, "m", "1", "b", now, hit=6, graphs=6)
    write_status(tmp_path, "m", "1", "old", now - 3 * 24 * 3600, miss=1, graphs=1)
    record = read_compile_record(str(tmp_path), "m", ["1"], now, scratch=".scratch.m")
    assert (record.verdict, record.cache_misses, record.preflight_graphs, record.preflight_cache_misses) == (
        COMPILE_COMPILED, 0, 6, 6)
    assert compile_note(record) == (
        "torch.compile: 6 graphs, all from the cache (preflight: 6 graphs, 6 compiled, 0 from the cache)"
    )
    assert not (tmp_path / pytorch2.STATUS_FOLDER / "m" / "1" / "old.json").exists()
    assert (tmp_path / pytorch2.STATUS_FOLDER / "m" / "1" / "b.json").exists()


def test_unknown_when_no_cache_or_no_counts_and_why(tmp_path):
    unset = read_compile_record(None, "m", ["1"], time.time())
    assert unset.verdict == COMPILE_UNKNOWN and "TORCHINDUCTOR_CACHE_DIR is not set" in unset.why
    silent = read_compile_record(str(tmp_path), "m", ["1"], time.time())
    assert silent.verdict == COMPILE_UNKNOWN and "no instance reported" in silent.why


def test_the_report_carries_the_record_and_the_table_says_it():
    entry = ModelEntry(name="m", compile=CompileRecord(verdict=COMPILE_REUSED, instances=1, graphs=7, cache_hits=7))
    again = ModelEntry.from_dict(json.loads(json.dumps(entry.to_dict())))
    assert again.compile == entry.compile
    assert compile_note(again.compile) == "torch.compile: 7 graphs, all from the cache"
    compiled = CompileRecord(verdict=COMPILE_COMPILED, graphs=7, cache_hits=2, cache_misses=5)
    assert compile_note(compiled) == "torch.compile: 7 graphs, 5 compiled, 2 from the cache"
    assert "unknown" in compile_note(CompileRecord())


def test_functions_from_dynamos_cache_count_as_reuse_and_the_table_says_so(tmp_path):
    now = time.time()
    folder = tmp_path / pytorch2.STATUS_FOLDER / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps({
        "started": now,
        "counts": {"dynamo_cache.dynamo_cache_hit": 3, "stats.unique_graphs": 0, "inductor.fxgraph_cache_miss": 0},
    }))
    record = read_compile_record(str(tmp_path), "m", ["1"], now)
    assert (record.verdict, record.graphs, record.traced_from_cache) == (COMPILE_REUSED, 0, 3)
    assert compile_note(record) == "torch.compile: nothing traced, 3 functions from Dynamo's cache"
    partly = CompileRecord(verdict=COMPILE_COMPILED, graphs=2, cache_misses=2, traced_from_cache=3)
    assert compile_note(partly) == (
        "torch.compile: 2 graphs, 2 compiled, 0 from the cache, 3 functions from Dynamo's cache"
    )


def shim_module():
    """The shim itself, imported outside Triton: at import it needs only the
    standard library (it sets the process's LC_CTYPE to a UTF-8 locale)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("triton_warmup_runtime_shim", pytorch2.shim_source())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dynamos_cache_key_changes_with_everything_the_traced_code_depends_on(tmp_path):
    key = shim_module().dynamo_cache_key
    version = tmp_path / "1"
    version.mkdir()
    (version / "model.py").write_text("class Net: ...\n")
    (version / "model.pt").write_bytes(b"weights")
    runtime = tmp_path / "runtime.py"
    runtime.write_text("# runtime\n")
    versions = {"python": "3.11", "torch": "2.13.0", "kind": "CPU", "module": "m"}
    parameters = {"NUM_THREADS": {"string_value": "1"}}

    def current():
        return key(version, parameters, [runtime], versions)

    first = current()
    assert current() == first and len(first) == 64
    (version / "__pycache__").mkdir()
    (version / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"bytecode")
    assert current() == first, "bytecode Python writes beside the model is not the model"

    seen = {first}

    def changed(edit):
        edit()
        now = current()
        assert now not in seen
        seen.add(now)

    changed(lambda: (version / "model.py").write_text("class Net: pass\n"))
    changed(lambda: (version / "model.pt").write_bytes(b"other weights"))
    changed(lambda: (version / "extra.json").write_text("{}"))
    changed(lambda: parameters.update(TORCH_COMPILE_OPTIONAL_PARAMETERS={"string_value": '{"mode": "max-autotune"}'}))
    changed(lambda: runtime.write_text("# runtime, another release\n"))
    changed(lambda: versions.update(torch="2.14.0"))
    changed(lambda: versions.update(module="m-copy"))


def test_the_scatter_gets_the_outputs_in_the_container_the_runtime_passes():
    """Triton's runtime hands its scatter a model's tuple of outputs as it is
    and wraps a single tensor in a list; the shim's compile for one request
    of B rows must pass the same, or its entries fit no request (issue 38)."""
    outputs = shim_module().runtime_outputs
    pair = ("hidden", "pooled")
    assert outputs(pair) is pair
    listed = ["hidden", "pooled"]
    assert outputs(listed) is listed
    assert outputs("output") == ["output"]


def call_counts(shim, function, *args):
    before = shim._counts()
    function(*args)
    after = shim._counts()
    return {key: after[key] - before[key] for key in after if after[key] != before[key]}


def test_dynamo_guards_on_the_outputs_container_so_a_list_does_not_warm_a_tuple():
    """Why the container matters: a function compiled for a list of tensors
    compiles again for the same tensors in a tuple."""
    import torch

    shim = shim_module()

    def split_all(tensors, sections):
        return [torch.split(tensor, sections) for tensor in tensors]

    scatter = torch.compile(split_all, backend="eager")
    tensors = [torch.zeros(4, 1, 3), torch.zeros(4, 3)]
    assert call_counts(shim, scatter, list(tensors), [4])["stats.unique_graphs"] == 1
    assert call_counts(shim, scatter, list(tensors), [4]) == {}
    assert call_counts(shim, scatter, tuple(tensors), [4])["stats.unique_graphs"] == 1


def test_a_function_past_the_recompile_limit_counts_though_it_compiles_nothing():
    """torch.compile past its recompile limit compiles no graph (the counts
    the shim had kept did not move) and runs the function uncompiled; the
    shim counts the frame and the limit hit, so that its log shows it."""
    import torch

    shim = shim_module()

    def add_one(tensor):
        return tensor + 1

    function = torch.compile(add_one, backend="eager", dynamic=False)
    with torch._dynamo.config.patch(recompile_limit=1):
        assert call_counts(shim, function, torch.zeros(2))["stats.unique_graphs"] == 1
        past_limit = call_counts(shim, function, torch.zeros(2, 2))
        assert past_limit == {"frames.total": 1, shim.RECOMPILE_LIMIT_COUNT: 1}
        # Once past it, the function runs uncompiled and Dynamo is not asked again.
        assert call_counts(shim, function, torch.zeros(3, 3)) == {}


def test_full_collections_are_counted_and_young_ones_are_not():
    import gc

    shim = shim_module()
    collections = shim.FullCollections()
    gc.callbacks.append(collections)
    try:
        gc.collect(0)
        gc.collect(1)
        assert collections.snapshot() == (0, 0.0)
        gc.collect()
        count, seconds = collections.snapshot()
        assert count == 1 and seconds > 0
    finally:
        gc.callbacks.remove(collections)


def test_settling_the_garbage_freezes_what_survives():
    """After a compile the shim collects once and freezes the survivors, so
    that no later full collection scans the compiler's objects again."""
    import gc

    shim = shim_module()
    survivor = [[] for _ in range(1000)]
    try:
        assert shim.settle_garbage() >= 0
        assert gc.get_freeze_count() >= len(survivor)
        frozen = gc.get_freeze_count()
        gc.collect()
        assert gc.get_freeze_count() == frozen, "a collection leaves the frozen objects alone"
    finally:
        gc.unfreeze()


def test_a_request_of_b_rows_becomes_b_requests_of_one_row_each_with_its_own_storage():
    """The scratch copy's request of B rows, run as Triton's warmup runs a
    sample of batch size B: B one-row tensors per input, each its own
    tensor (no storage offset into the request's), rows in order."""
    import torch

    shim = shim_module()
    x, mask = torch.arange(24.0).reshape(4, 2, 3), torch.arange(8).reshape(4, 2)
    rows = shim.split_rows([("x", x), ("mask", mask)])
    assert len(rows) == 4
    for index, row in enumerate(rows):
        assert [name for name, _ in row] == ["x", "mask"]
        assert [tuple(tensor.shape) for _, tensor in row] == [(1, 2, 3), (1, 2)]
        assert all(tensor.storage_offset() == 0 and tensor.is_contiguous() for _, tensor in row)
        assert torch.equal(row[0][1], x[index : index + 1]) and torch.equal(row[1][1], mask[index : index + 1])
    # A stand-in request gives the runtime what it asks a request for.
    request = shim._Row(rows[2])
    assert [tensor.name() for tensor in request.inputs()] == ["x", "mask"]
    assert torch.equal(torch.from_dlpack(request.inputs()[0].to_dlpack()), x[2:3])


def test_only_the_preflights_scratch_copy_runs_as_a_warmup():
    shim = shim_module()
    assert shim.preflight_plan({"parameters": {"NUM_THREADS": {"string_value": "1"}}}) is None
    assert shim.preflight_plan({}) is None
    samples = [{"name": "s", "batch_size": 2, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": ["3"]}}}]
    parameter = json.dumps({"model": "m", "model_warmup": samples})
    config = {"parameters": {pytorch2.PREFLIGHT_PARAMETER: {"string_value": parameter},
                             "NUM_THREADS": {"string_value": "1"}}}
    assert shim.preflight_plan(config) == {"model": "m", "model_warmup": samples}
    # Dynamo's output is keyed by the parameters the user wrote.
    assert shim.own_parameters(config) == {"NUM_THREADS": {"string_value": "1"}}


def test_a_scratch_copy_keys_dynamos_output_as_its_model(tmp_path):
    """The scratch copy's version folder is a link to the model's, and its
    parameters are the model's plus the preflight's: with the preflight's
    left out and the model's name as the module, its key is the model's, so
    the real load installs what the scratch copy traced."""
    shim = shim_module()
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text("class M: pass\n")
    (version / "__pycache__").mkdir()
    (version / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"bytecode")
    scratch = tmp_path / ".warmup_helper.preflight.m"
    scratch.mkdir()
    (scratch / "1").symlink_to(version.resolve(), target_is_directory=True)
    runtime = tmp_path / "runtime.py"
    runtime.write_text("# runtime\n")
    versions = {"python": "3.11", "torch": "2.13.0", "kind": "KIND_CPU", "module": "m"}
    parameters = {"NUM_THREADS": {"string_value": "1"}}
    scratch_parameters = dict(parameters, **{pytorch2.PREFLIGHT_PARAMETER: {"string_value": "{}"}})
    real = shim.dynamo_cache_key(version, parameters, [runtime], versions)
    assert shim.dynamo_cache_key(scratch / "1", shim.own_parameters({"parameters": scratch_parameters}),
                                 [runtime], versions) == real
    assert shim.dynamo_cache_key(scratch / "1", scratch_parameters, [runtime], versions) != real


VECTOR_ISA_PROBE = """
import json, sys, time
import torch
from torch._inductor import cpu_vec_isa
original = cpu_vec_isa.valid_vec_isa_list
status, threads = {}, []
if sys.argv[1] == "early":
    sys.path.insert(0, sys.argv[2])
    import shim
    threads = shim.start_vector_isa_checks(status)
    waiting = cpu_vec_isa.valid_vec_isa_list is not original
picked = str(cpu_vec_isa.pick_vec_isa())
print(json.dumps({
    "threads": len(threads),
    "alive_after_pick": sum(thread.is_alive() for thread in threads),
    "waited": waiting if threads else None,
    "restored": cpu_vec_isa.valid_vec_isa_list is original,
    "status": status,
    "picked": picked,
    "valid": [(str(isa), isa.build_arch_flags()) for isa in cpu_vec_isa.valid_vec_isa_list()],
}))
"""


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="torch checks one set elsewhere")
def test_inductors_vector_isa_checks_started_early_give_torchs_own_answer(tmp_path):
    """The shim starts Inductor's checks of the CPU's vector instruction sets
    in threads (issue 38: 7.2 s of g++ inside the first sample of a first
    start). torch's list of valid sets waits for them, then is torch's own
    again, and the answer is what torch alone finds: the same sets with the
    same flags (the AVX-512 check changes its set's flags for a moment, which
    a second check at the same time would keep). Each run is a process of
    its own, as a stub is; the early one starts on an empty Inductor cache,
    and torch alone then checks again on what it built (its answers are
    per process; only the builds are kept)."""
    import subprocess
    import sys

    shim_folder = tmp_path / "shim"
    shim_folder.mkdir()
    (shim_folder / "shim.py").write_text(pytorch2.shim_source().read_text())

    def probe(mode):
        cache = tmp_path / "cache"
        completed = subprocess.run(
            [sys.executable, "-c", VECTOR_ISA_PROBE, mode, str(shim_folder)],
            env={"PATH": "/usr/bin:/bin", "TORCHINDUCTOR_CACHE_DIR": str(cache), "HOME": str(tmp_path)},
            capture_output=True, text=True, timeout=300, check=True,
        )
        return json.loads(completed.stdout.strip().splitlines()[-1])

    early = probe("early")
    alone = probe("alone")
    assert early["threads"] >= 1 and early["waited"] is True
    assert early["alive_after_pick"] == 0 and early["restored"] is True
    assert early["status"]["vector_isa_checks_s"] > 0
    assert (early["picked"], early["valid"]) == (alone["picked"], alone["valid"])
    assert alone["valid"], "this CPU has a vector instruction set torch can use"
