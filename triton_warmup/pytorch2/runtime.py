"""The PyTorch backend's PyTorch 2 runtime, made to run in Triton's Python stub.

tritonserver serves a ``backend: "pytorch"`` model with ``runtime:
"model.py"`` by running ``backends/pytorch/model.py`` in the Python backend's
stub. This file is installed under that name. Triton's own runtime
(pytorch_backend ``src/model.py``) lies beside it as
``triton_pytorch_runtime.py`` and does all the work: this file's model hands
every call to it. It adds what the stub lacks, and changes nothing else:

* **A UTF-8 locale, before torch is imported.** The stub's interpreter is
  isolated (``sys.flags.isolated``, locale ``C``, ASCII preferred encoding),
  so ``LANG`` and ``PYTHONUTF8`` have no effect, and Inductor fails to read
  its own templates (``UnicodeDecodeError: 'ascii'``). Triton's runtime
  compiles its batching helpers in ``initialize``, before a user's module is
  even imported, so no fix inside the user's model comes early enough.
* **The batching helpers compiled for one request of each warmup batch
  size.** Triton's warmup sends a sample of batch size B as B requests of
  batch 1, so the runtime's compiled gather and scatter (``torch.compile``
  of ``_gather_torch_tensors`` and ``_scatter_torch_tensors``) see B tensors
  of one row each. A client sends one request of B rows, which those
  functions have never seen: without this, its first request compiles
  them again after READY. So ``initialize`` runs them once on zeros of each
  warmup sample's shape as one request (and the model, uncompiled, only to
  learn its outputs' shapes), and hands the scatter the outputs as the
  runtime does: a model's tuple stays a tuple, since Dynamo guards on the
  container's type.
* **The preflight's scratch copy compiled as the real load will be.** The
  warmup helper runs each planned sample on a scratch copy before Triton's
  warmup sees it, with the samples in a config parameter
  (``PREFLIGHT_PARAMETER``) instead of ``model_warmup``. On that copy the
  shim compiles the batching helpers for those samples in ``initialize``,
  as above, and runs each request of B rows as B requests of one row in one
  ``execute``, as Triton's warmup sends a sample: the copy then compiles
  the graphs the real load's warmup asks for, and the real load finds every
  one of them in Inductor's cache. There the gather and scatter may also
  compile past Dynamo's recompile limit, which a plan of a few group sizes
  reaches: an entry the copy skips, the real load would compile.
* **What torch.compile did.** After every ``execute`` that compiled, one line
  in Triton's log names the requests' shapes and the counts from torch's own
  counters (``torch._dynamo.utils.counters``): graphs compiled, Inductor's
  FX graph cache hits and misses, and the frames Dynamo looked at, which
  also counts work that compiles nothing (a function past Dynamo's
  recompile limit, which then runs uncompiled). When
  ``TORCHINDUCTOR_CACHE_DIR`` is set, the same counts go to a small JSON
  file per instance under ``$TORCHINDUCTOR_CACHE_DIR/triton_warmup_loads/``,
  which the warmup helper reads to report whether a load compiled or reused
  the cache.
* **The compiler's garbage collected before READY.** Compiling leaves
  hundreds of thousands of Python objects in the stub's process; Python's
  full garbage collection scans them all (0.16-0.43 s measured here) at a
  moment its allocation counts choose, which can be any later request.
  After ``initialize`` and after every ``execute`` that compiled, the shim
  collects once and freezes what survives (``gc.freeze``), so later
  collections skip it. A full collection that still runs inside an
  ``execute`` gets a line in the log and counts in the status file.
* **Dynamo's traced code kept across restarts.** Inductor's cache keeps
  compiled graphs, but Dynamo traces the Python code again in every new
  process, which is most of what a restart still pays. torch's own
  "caching precompile" (``torch._dynamo.config.caching_precompile``,
  experimental in torch 2.13) keeps Dynamo's output too, keyed by a
  function's name and first line only. So the shim turns it on only when
  ``TORCHINDUCTOR_CACHE_DIR`` is set and ``TORCH_CACHING_PRECOMPILE`` is
  not, and keeps each model's entries in a folder of their own, named by a
  SHA-256 of what the traced code depends on: the model's version folder
  (every file), the config's ``parameters`` (the compile options among
  them), the runtime's files, the Python and torch versions, the instance
  kind and the model's name (``dynamo_cache_key``). After an
  ``execute`` that traced anything, it saves them
  (``torch.compiler.save_cache_artifacts``); the next process with the same
  key starts from them.
* **Inductor's C++ checks started early, when a compile is coming.** The
  first CPU compile that Inductor makes with an empty cache first builds
  and loads a test library for each vector instruction set the CPU has
  (``torch._inductor.cpu_vec_isa``): six g++ runs, one after another,
  7.2 s of a 9.5 s first compile here. Their results stay in the cache, so
  only a first start pays them, and it pays them inside the first sample.
  On the preflight's scratch copy, and on an instance whose Dynamo cache
  is still empty, the shim starts those same checks as soon as torch is
  imported, in threads at a lower priority: they overlap ``initialize``
  and each other, and the first compile finds their answers in the process
  (``start_vector_isa_checks``).
* **What torch.compile kept of the requests freed at ``finalize``**,
  while the stub's shared memory is mapped: Dynamo's exit-time finalizers
  otherwise free request tensors after it, which crashed the stub at its
  exit (``release_compiled_state``).
* **An error in the log when Triton sends it a TorchScript model.** Triton
  2.51 keeps one 'pytorch' backend per server: when a PyTorch 2 model loads
  first, every later TorchScript model comes here instead of to the native
  libtorch backend. The runtime can run it, but in a Python stub; the log
  says so, and why.

It imports only the standard library, and Triton's runtime (with torch)
once an instance initializes, so it ships into any Triton image on its own
(``triton-warmup-install-runtime``).
"""

import gc
import hashlib
import importlib.util
import json
import locale
import os
import pathlib
import platform
import socket
import sys
import threading
import time
import weakref

# Triton's runtime, renamed so that this file can take its place.
UPSTREAM_RUNTIME_FILE = "triton_pytorch_runtime.py"
# Under $TORCHINDUCTOR_CACHE_DIR: one status file per model instance's process.
STATUS_FOLDER = "triton_warmup_loads"
STATUS_FORMAT = 1
# Under $TORCHINDUCTOR_CACHE_DIR: Dynamo's saved packages, one folder per key.
DYNAMO_FOLDER = "triton_warmup_dynamo"
# torch's own switch for its Dynamo cache; the shim leaves it alone when set.
PRECOMPILE_VARIABLE = "TORCH_CACHING_PRECOMPILE"
# The counters that say what torch.compile did (torch._dynamo.utils.counters).
COUNTERS = (
    ("stats", "unique_graphs"),
    ("inductor", "fxgraph_cache_hit"),
    ("inductor", "fxgraph_cache_miss"),
    ("aot_autograd", "autograd_cache_hit"),
    ("aot_autograd", "autograd_cache_miss"),
    ("dynamo_cache", "dynamo_cache_hit"),
    ("dynamo_cache", "dynamo_cache_miss"),
    ("dynamo_cache", "dynamo_cache_error"),
    # Every frame Dynamo was called for: a compile, and also work that
    # compiles no graph (a function skipped, the recompile limit hit).
    ("frames", "total"),
)
# The start of torch's own name for the graph break that a function past
# torch._dynamo.config.recompile_limit raises (counters["unimplemented"]):
# from then on the function runs uncompiled wherever no compiled entry fits.
RECOMPILE_LIMIT_BREAK = "Dynamo recompile limit exceeded"
RECOMPILE_LIMIT_COUNT = "dynamo.recompile_limit_hits"
# Set only by the warmup helper, on its preflight's scratch copy: JSON with
# the real model's name ("model") and its planned samples ("model_warmup", as
# in Triton's model config), which the scratch copy's config leaves out. With
# it, the shim runs the scratch copy as Triton's warmup will run the real
# model (``TritonPythonModel._execute_as_warmup``) and keeps Dynamo's output
# for the real model (``TritonPythonModel._keep_dynamo_output``).
PREFLIGHT_PARAMETER = "TRITON_WARMUP_PREFLIGHT"
# Dynamo's recompile limit for the runtime's gather and scatter on the
# preflight's scratch copy (torch's default is 8): enough for every list
# length and shape a plan's samples hand them, which the real load installs.
PREFLIGHT_BATCHING_RECOMPILE_LIMIT = 64
# How long finalize waits for a vector ISA check still running: torch bounds
# each check's probe at 60 s, and a build takes seconds.
ISA_CHECK_JOIN_S = 120.0
# The checks' niceness, added to the stub's: they run beside the
# instance's initialize, which should not wait for them.
ISA_CHECK_NICENESS = 10
# The log line's words when an instance starts those checks early.
ISA_CHECKS_STARTED = "will compile: Inductor's checks of the CPU's vector instruction sets started early"


def _utf8_locale():
    """Switch LC_CTYPE to a UTF-8 locale; the name used, or None if none exists."""
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return name
        except locale.Error:
            continue
    return None


# Before Triton's runtime imports torch: torch and Inductor read the
# preferred encoding when they open files.
UTF8_LOCALE = _utf8_locale()


def _load_upstream():
    """Triton's runtime, which imports torch: loaded only when an instance
    initializes, because the stub that fills in a model's config at load time
    (Triton's auto-complete) also imports this file, and torch's import takes
    seconds that it does not need."""
    path = pathlib.Path(__file__).with_name(UPSTREAM_RUNTIME_FILE)
    spec = importlib.util.spec_from_file_location("triton_pytorch_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Config data types the runtime can take (it passes tensors through DLPack),
# by the name of torch's dtype.
_TORCH_DTYPES = {
    "TYPE_BOOL": "bool",
    "TYPE_UINT8": "uint8",
    "TYPE_INT8": "int8",
    "TYPE_INT16": "int16",
    "TYPE_INT32": "int32",
    "TYPE_INT64": "int64",
    "TYPE_FP16": "float16",
    "TYPE_BF16": "bfloat16",
    "TYPE_FP32": "float32",
    "TYPE_FP64": "float64",
}


def _counts():
    from torch._dynamo.utils import counters  # noqa: PLC0415 - torch is imported by then

    counts = {f"{group}.{name}": int(counters[group][name]) for group, name in COUNTERS}
    counts[RECOMPILE_LIMIT_COUNT] = sum(
        int(count) for reason, count in counters["unimplemented"].items() if reason.startswith(RECOMPILE_LIMIT_BREAK)
    )
    return counts


class FullCollections:
    """Python's full garbage collections (generation 2) in this process and
    the time they took, from ``gc.callbacks``: a cost that no torch counter
    shows, and that lands on whichever request's allocations trigger it."""

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self._started = None

    def __call__(self, phase, info):
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.count += 1
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def snapshot(self):
        return self.count, self.seconds


# One per process: every instance in it reads the same collector.
FULL_COLLECTIONS = FullCollections()


def watch_full_collections():
    if FULL_COLLECTIONS not in gc.callbacks:
        gc.callbacks.append(FULL_COLLECTIONS)


def settle_garbage():
    """Collect once and freeze what survives (``gc.freeze``): objects the
    compiler left behind are then never scanned again, so no later full
    collection pays for them. A collection scans only what is not frozen yet,
    so after the first it costs about what the last compile made. Returns
    its seconds."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


def start_vector_isa_checks(status):
    """Start Inductor's checks of the CPU's vector instruction sets
    (``torch._inductor.cpu_vec_isa``) in daemon threads, one per set the
    CPU reports, at a lower priority, and return the threads. Each check
    builds a small library with g++ (in the Inductor cache, unless already
    there) and loads it in a child process; torch keeps each answer for the
    process (``functools.cache``), so the first compile finds it. ``status``
    gets the seconds the checks took ("vector_isa_checks_s"). None started
    when torch's own setting decides (``cpp.vec_isa_ok``) or the CPU is not
    x86, where torch checks at most one set.

    Until the threads end, torch's list of the valid sets
    (``cpu_vec_isa.valid_vec_isa_list``, through which every compile asks)
    waits for them: a check is not safe to run twice at once (the AVX-512
    check adds a flag to its set's flags and then restores them)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        from torch._inductor import config, cpu_vec_isa  # noqa: PLC0415 - torch is imported by then

        if config.cpp.vec_isa_ok is not None:
            return []
        cpu_flags = cpu_vec_isa.x86_isa_checker()
        candidates = [
            isa for isa in cpu_vec_isa.supported_vec_isa_list if all(flag in cpu_flags for flag in str(isa).split())
        ]
    except Exception:  # noqa: BLE001 - torch's internals moved: the first compile checks, as without the shim
        return []
    started = time.perf_counter()

    def check(isa):
        # Below the instance's own work, which goes on meanwhile: the
        # thread's niceness passes to the g++ and probe children it starts.
        try:
            niceness = os.getpriority(os.PRIO_PROCESS, 0) + ISA_CHECK_NICENESS
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except (AttributeError, OSError):
            pass
        try:
            bool(isa)
        except Exception:  # noqa: BLE001 - the first compile makes the same check and meets the same error
            pass
        # The last thread to end writes last.
        status["vector_isa_checks_s"] = round(time.perf_counter() - started, 3)

    # One thread per set, all at once: at a lower priority they fill the
    # CPU time the instance leaves. On 2 CPUs, in a process that does what a
    # stub does, the first compile took 4.5-4.9 s, against 7.2-7.3 s with
    # one thread and 8.6-9.5 s without; the imports before it took as long
    # as without them (at normal priority, 0.8 s longer).
    threads = [
        threading.Thread(target=check, args=(isa,), name=f"triton-warmup-isa-{isa}", daemon=True)
        for isa in candidates
    ]
    valid_vec_isa_list = cpu_vec_isa.valid_vec_isa_list

    def after_the_checks():
        for thread in threads:
            thread.join()
        cpu_vec_isa.valid_vec_isa_list = valid_vec_isa_list
        return valid_vec_isa_list()

    cpu_vec_isa.valid_vec_isa_list = after_the_checks
    for thread in threads:
        thread.start()
    return threads


def release_compiled_state(torch):
    """Free what torch.compile keeps of this process's requests while the
    stub's shared memory is still mapped: at ``finalize``, the last call
    before the stub unmaps it and ends its interpreter.

    Dynamo's guards register a ``weakref.finalize`` per object they match by
    identity (``CheckFunctionManager.id_ref``), holding the guard builder,
    which can hold tensors of the requests it was built from. Those tensors
    wrap the Python backend's shared memory (DLPack). Left alone, Python
    runs such finalizers at exit, after the unmap, and freeing the tensors
    then crashed the stub (SIGSEGV in libc, ``PbTensor::~PbTensor``; two per
    test suite, seen only in ``dmesg``). So: Dynamo's caches cleared, the
    pending exit-time finalizers run now (what exit would do, earlier),
    and the collected garbage unfrozen and collected."""
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001 - best effort at unload; exit frees the rest as before
        pass
    for finalizer in list(getattr(weakref.finalize, "_registry", {})):
        if finalizer.atexit:
            try:
                finalizer()
            except Exception:  # noqa: BLE001 - the same call exit would make, and swallow
                pass
    gc.unfreeze()
    gc.collect()


def runtime_outputs(outputs):
    """The model's outputs as Triton's runtime hands them to its scatter: a
    tuple or a list as they are, anything else in a list. Dynamo guards on
    the container's type, so a list where the runtime passes a tuple
    compiles an entry that no request ever uses."""
    return outputs if isinstance(outputs, (tuple, list)) else [outputs]


def dynamo_cache_key(version_folder, parameters, runtime_files, versions):
    """A SHA-256 of everything Dynamo's saved code for a model depends on
    beyond what its guards check: the files of the model's version folder
    (names and bytes), the config's parameters, the runtime's files, and the
    versions. torch keys its packages by a function's name and first line,
    so without this, an edited ``forward`` at the same line would run the
    code traced from the old one."""
    digest = hashlib.sha256()

    def part(label, data):
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    for name, value in sorted(versions.items()):
        part("version " + name, str(value).encode())
    part("parameters", json.dumps(parameters, sort_keys=True).encode())
    for path in runtime_files:
        part("runtime " + pathlib.Path(path).name, pathlib.Path(path).read_bytes())
    root = pathlib.Path(version_folder)
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.relative_to(root).parts:
            part("file " + path.relative_to(root).as_posix(), path.read_bytes())
    return digest.hexdigest()


def preflight_plan(model_config):
    """What the helper's preflight put in its scratch copy's config
    (``PREFLIGHT_PARAMETER``): the real model's name and planned samples; or
    None for any other model."""
    parameter = model_config.get("parameters", {}).get(PREFLIGHT_PARAMETER)
    if not parameter:
        return None
    plan = json.loads(parameter.get("string_value") or "{}")
    return {"model": str(plan.get("model", "")), "model_warmup": list(plan.get("model_warmup", []))}


def own_parameters(model_config):
    """The config's parameters as the user wrote them: without the
    preflight's, so that a scratch copy keys Dynamo's output as its model."""
    return {key: value for key, value in model_config.get("parameters", {}).items() if key != PREFLIGHT_PARAMETER}


class _Row:
    """One row of a request, standing in for the one-row request Triton's
    warmup makes: the runtime only asks a request for ``inputs()`` and a
    tensor for ``name()`` and ``to_dlpack()``."""

    class Tensor:
        def __init__(self, name, tensor):
            self._name, self._tensor = name, tensor

        def name(self):
            return self._name

        def to_dlpack(self):
            from torch.utils import dlpack  # noqa: PLC0415 - torch is imported by then

            return dlpack.to_dlpack(self._tensor)

    def __init__(self, tensors):
        self._inputs = [self.Tensor(name, tensor) for name, tensor in tensors]

    def inputs(self):
        return self._inputs


def split_rows(named_tensors):
    """A request's inputs (name, tensor of B rows) as B one-row requests'
    inputs, each row a tensor of its own (as Triton's warmup gives each of
    its B requests its own buffer: no storage offsets, no shared storage)."""
    rows = int(named_tensors[0][1].shape[0]) if named_tensors else 0
    return [[(name, tensor[row : row + 1].clone()) for name, tensor in named_tensors] for row in range(rows)]


def _shapes(requests):
    shapes = []
    for request in requests:
        tensors = request.inputs()
        shapes.append({tensor.name(): list(tensor.shape()) for tensor in tensors})
    return shapes


class TritonPythonModel:
    """Triton's runtime, with the compile counts logged and kept."""

    def initialize(self, args):
        upstream = _load_upstream()
        # What importing torch made stays: later collections skip it.
        gc.freeze()
        watch_full_collections()
        self._upstream = upstream
        self._torch, self._pb_utils = upstream.torch, upstream.pb_utils
        self._runtime = upstream.TritonPythonModel()
        self._status_path = None
        self._status = {
            "format": STATUS_FORMAT,
            "model": args["model_name"],
            "version": args["model_version"],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "torch": self._torch.__version__,
            "locale": UTF8_LOCALE,
            "executes_that_compiled": 0,
            "executes_with_full_collections": 0,
            "full_collections_in_execute": 0,
            "full_collection_s_in_execute": 0.0,
        }
        cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if cache_dir:
            folder = pathlib.Path(cache_dir) / STATUS_FOLDER / args["model_name"] / args["model_version"]
            self._status_path = folder / f"{socket.gethostname()}-{os.getpid()}.json"
        if UTF8_LOCALE is None:
            self._pb_utils.Logger.log_warn("no UTF-8 locale found: torch.compile may fail to read its templates")
        if not str(json.loads(args["model_config"]).get("runtime", "")).endswith(".py"):
            self._pb_utils.Logger.log_error(
                f"'{args['model_name']}' does not ask for the PyTorch 2 runtime (its config has no runtime: "
                '"model.py"), yet Triton runs it here, in a Python stub, instead of in its native libtorch '
                "backend: a PyTorch 2 model was loaded first, and Triton then reuses that 'pytorch' backend for "
                "every 'pytorch' model (core backend_manager.cc, TritonBackendManager::CreateBackend). Load a "
                "TorchScript model before any PyTorch 2 model (warmup_helper does, within one request), or serve "
                "the two kinds from separate servers (docs/pytorch2.md)"
            )
        # On the preflight's scratch copy: the samples the real load will warm.
        self._preflight = preflight_plan(json.loads(args["model_config"]))
        self._dynamo_folder = self._keep_dynamo_output(args, cache_dir)
        self._status["dynamo_cache"] = str(self._dynamo_folder) if self._dynamo_folder else None
        self._isa_checks = []
        if self._compile_is_coming(args):
            self._isa_checks = start_vector_isa_checks(self._status)
            if self._isa_checks:
                self._pb_utils.Logger.log_info(
                    f"'{args['model_name']}' {ISA_CHECKS_STARTED}, in {len(self._isa_checks)} threads"
                )
        before = _counts()
        try:
            self._runtime.initialize(args)
        except Exception as error:
            if self._dynamo_folder is None or not self._raised_by_dynamo(error):
                raise
            # Dynamo's cache is experimental: a saved package it cannot
            # install fails torch.compile itself. The model must load anyway.
            self._turn_dynamo_cache_off(error, recompile=False)
            self._runtime = upstream.TritonPythonModel()
            self._runtime.initialize(args)
        self._lift_batching_recompile_limit()
        self._compile_batching_for_single_requests()
        self._record("initialize", before, [], settle=True)

    def _keep_dynamo_output(self, args, cache_dir):
        """Turn on torch's Dynamo cache in a folder keyed for this model
        (``dynamo_cache_key``); the folder, or None when it stays off.

        The preflight's scratch copy keys it as the real model: same files
        (its version folder links to the model's), same parameters without
        the preflight's, and the user's module imported under the real
        model's name. What it traces is then installed by the real load,
        which traces nothing for the samples the scratch copy ran."""
        torch = self._torch
        if not cache_dir or os.environ.get(PRECOMPILE_VARIABLE):
            return None  # no lasting cache to keep it in, or the user decided
        module_name = self._preflight["model"] if self._preflight else args["model_name"]
        if not module_name or "." in module_name:
            # The runtime names the user's module after the model, and Dynamo
            # saves references to its classes by that name, which pickle then
            # imports: a dotted name reads as a package path.
            return None
        try:
            from torch._dynamo import package as dynamo_package  # noqa: PLC0415 - torch is imported by then

            config = json.loads(args["model_config"])
            version_folder = pathlib.Path(args["model_repository"]) / args["model_version"]
            key = dynamo_cache_key(
                version_folder,
                own_parameters(config),
                [__file__, pathlib.Path(__file__).with_name(UPSTREAM_RUNTIME_FILE)],
                {
                    "python": sys.version,
                    "torch": torch.__version__,
                    "kind": args.get("model_instance_kind", ""),
                    # Saved guards name the user's classes by module, which the runtime names after the model.
                    "module": module_name,
                },
            )
            folder = pathlib.Path(cache_dir) / DYNAMO_FOLDER / key
            self._register_modules(module_name)
            # Every reader and writer of torch's one DynamoCache asks it for
            # this; the instance attribute shadows its method.
            dynamo_package.DynamoCache.path_prefix = lambda: str(folder)
            torch._dynamo.config.caching_precompile = True
        except Exception as error:  # noqa: BLE001 - an experimental torch API; the model works without it
            self._pb_utils.Logger.log_warn(f"Dynamo's cache stays off for '{args['model_name']}': {error!r}")
            return None
        return folder

    def _compile_is_coming(self, args):
        """Whether this instance will compile before it serves: a CPU
        instance that is the preflight's scratch copy, or whose Dynamo cache
        holds nothing yet. A restart that installs Dynamo's output compiles
        nothing, and one without that cache cannot tell."""
        if args.get("model_instance_kind", "CPU") != "CPU":
            return False
        if self._preflight is not None:
            return True
        return self._dynamo_folder is not None and not self._dynamo_folder.exists()

    def _register_modules(self, module_name):
        """Put Triton's runtime, and the user's module once the runtime
        imports it, in ``sys.modules``: Dynamo saves references to the
        classes and functions it guards on by module name, and both are
        loaded from files, under names that import cannot find otherwise.
        The user's module is named ``module_name`` (the real model's, on a
        scratch copy)."""
        upstream = self._upstream
        sys.modules.setdefault(upstream.__name__, upstream)
        import_from_file = upstream._import_module_from_path

        def import_and_register(_, file_path):
            module = import_from_file(module_name, file_path)
            sys.modules.setdefault(module_name, module)
            return module

        upstream._import_module_from_path = import_and_register

    def _lift_batching_recompile_limit(self):
        """On the preflight's scratch copy, let the runtime's gather and
        scatter compile past Dynamo's recompile limit.

        Each list length and container the warmup hands them takes entries
        of their own, and with a plan of a few group sizes x batch sizes
        1, 2 and 4 the scatter reaches the limit (8) during the samples: it
        then runs uncompiled for the rest, and saves no entry for them. The
        real load installs the saved entries, which do not count towards its
        own limit, so it compiled the missing one in Triton's warmup (one
        graph, on every first start). Raised for these two functions only,
        and only here: the user's model keeps torch's limit, and so does the
        serving process, where a request past the limit runs uncompiled
        instead of compiling."""
        runtime, torch = self._runtime, self._torch
        if self._preflight is None or not runtime._support_batching:
            return

        def lifted(function):
            def call(*args, **kwargs):
                with torch._dynamo.config.patch(recompile_limit=PREFLIGHT_BATCHING_RECOMPILE_LIMIT):
                    return function(*args, **kwargs)

            return call

        runtime._gather, runtime._scatter = lifted(runtime._gather), lifted(runtime._scatter)

    def _compile_batching_for_single_requests(self):
        runtime, torch = self._runtime, self._torch
        if not runtime._support_batching:
            return
        # The model as written, not compiled: only its outputs' shapes matter.
        eager = getattr(runtime, "_raw_model", runtime._model)
        seen = set()
        # The scratch copy compiles what the real load will, in its order:
        # the same graphs, which the real load then finds in Inductor's cache.
        if self._preflight is not None:
            samples = self._preflight["model_warmup"]
        else:
            samples = runtime._model_config.get("model_warmup", [])
        for sample in samples:
            batch_size = int(sample.get("batch_size", 0))
            inputs = sample.get("inputs", {})
            try:
                shapes = tuple(
                    (io["name"], tuple([batch_size] + [int(d) for d in inputs[io["name"]]["dims"]]),
                     inputs[io["name"]]["data_type"])
                    for io in runtime._model_config["input"]
                )
            except (KeyError, TypeError, ValueError):
                continue  # a sample that Triton itself will refuse or that feeds no regular input
            if batch_size < 2 or shapes in seen:
                continue
            seen.add(shapes)
            try:
                tensors = [
                    torch.zeros(shape, dtype=getattr(torch, _TORCH_DTYPES[data_type]), device=runtime._device)
                    for _, shape, data_type in shapes
                ]
                gathered, sections = runtime._gather([tensors])
                runtime._scatter(runtime_outputs(eager(*gathered)), sections)
            except Exception as error:  # noqa: BLE001 - the warmup itself still runs; say why this did not
                self._pb_utils.Logger.log_warn(
                    f"could not compile the batching helpers of '{runtime._model_name}' for one request of "
                    f"{dict((name, list(shape)) for name, shape, _ in shapes)}: {error!r}"
                )

    def execute(self, requests):
        before = _counts()
        collections_before = FULL_COLLECTIONS.snapshot()
        try:
            responses = self._execute(requests)
        except Exception as error:
            if self._dynamo_folder is None or not self._raised_by_dynamo(error):
                raise
            # Dynamo's cache is experimental: a guard it cannot save (on a
            # class made inside a function, say) fails the compile. The
            # model must work anyway.
            self._turn_dynamo_cache_off(error)
            responses = self._execute(requests)
        self._record_full_collections(collections_before, requests)
        self._record("execute", before, requests)
        return responses

    def _execute(self, requests):
        if self._preflight is None or not self._runtime._support_batching:
            return self._runtime.execute(requests)
        return self._execute_as_warmup(requests)

    def _execute_as_warmup(self, requests):
        """Run a request of B rows as Triton's warmup runs a sample of batch
        size B: B requests of one row in one ``execute`` (core,
        ``GenerateWarmupData``), so that the runtime gathers and scatters B
        tensors, and compiles the graphs the real load's warmup will ask
        for. Then one response per request again, its rows joined."""
        torch, pb_utils = self._torch, self._pb_utils
        rows, counts = [], []
        for request in requests:
            named = [(tensor.name(), torch.from_dlpack(tensor.to_dlpack())) for tensor in request.inputs()]
            split = split_rows(named)
            if split:
                rows.extend(_Row(row) for row in split)
                counts.append(len(split))
            else:  # no rows to split: the request goes as it came
                rows.append(request)
                counts.append(1)
        responses = self._runtime.execute(rows)
        joined, at = [], 0
        for count in counts:
            mine, at = responses[at : at + count], at + count
            failed = next((response for response in mine if response.has_error()), None)
            if failed is not None:
                joined.append(pb_utils.InferenceResponse(error=failed.error()))
                continue
            outputs = []
            for index, tensor in enumerate(mine[0].output_tensors()):
                parts = [torch.from_dlpack(response.output_tensors()[index].to_dlpack()) for response in mine]
                outputs.append(pb_utils.Tensor.from_dlpack(tensor.name(), torch.cat(parts)))
            joined.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return joined

    def _raised_by_dynamo(self, error):
        """Whether ``error`` is Dynamo's, or came out of Dynamo's code. An
        error the user's model raises while Dynamo traces it counts too, so
        such a request runs twice, once per process (docs/pytorch2.md)."""
        if isinstance(error, self._torch._dynamo.exc.TorchDynamoException):
            return True
        trace = error.__traceback__
        while trace is not None:
            if f"{os.sep}torch{os.sep}_dynamo{os.sep}" in trace.tb_frame.f_code.co_filename:
                return True
            trace = trace.tb_next
        return False

    def _turn_dynamo_cache_off(self, error, recompile=True):
        """Turn Dynamo's cache off in this process; with ``recompile``, wrap
        the runtime's functions in torch.compile again, as it does."""
        torch, runtime, upstream = self._torch, self._runtime, self._upstream
        self._pb_utils.Logger.log_warn(
            f"Dynamo's cache is off for '{self._status['model']}' in this process: {error!r}"
        )
        self._dynamo_folder = None
        self._status["dynamo_cache"] = None
        torch._dynamo.config.caching_precompile = False
        torch._dynamo.reset()
        if not recompile:
            return
        params = upstream._get_torch_compile_params(runtime._model_config)
        if runtime._support_batching:
            runtime._gather = torch.compile(upstream._gather_torch_tensors, **params)
            runtime._scatter = torch.compile(upstream._scatter_torch_tensors, **params)
            self._lift_batching_recompile_limit()
        if hasattr(runtime, "_raw_model"):
            runtime._model = torch.compile(runtime._raw_model, **params)

    def finalize(self):
        # The status file stays: the helper reads the preflight's scratch
        # copy's after that copy is gone, and removes old files itself.
        self._runtime.finalize()
        # A check still running has a g++ or a probe child: it ends before
        # the stub's interpreter does.
        for thread in self._isa_checks:
            thread.join(timeout=ISA_CHECK_JOIN_S)
        release_compiled_state(self._torch)

    def _record_full_collections(self, before, requests):
        count, seconds = FULL_COLLECTIONS.snapshot()
        if count == before[0]:
            return
        collections, spent = count - before[0], seconds - before[1]
        self._status["executes_with_full_collections"] += 1
        self._status["full_collections_in_execute"] += collections
        self._status["full_collection_s_in_execute"] += spent
        self._pb_utils.Logger.log_info(
            f"full garbage collection in execute of '{self._status['model']}' version {self._status['version']}: "
            f"{collections} in {spent * 1000:.1f} ms for request shapes {json.dumps(_shapes(requests))}"
        )
        self._status.update(updated=time.time())
        if self._status_path is not None:
            self._write_status()

    def _record(self, where, before, requests, settle=False):
        after = _counts()
        if after == before:
            if settle:
                settle_garbage()
            return
        change = {key: after[key] - before[key] for key in after}
        if where == "execute":
            self._status["executes_that_compiled"] += 1
        saved = ""
        if self._dynamo_folder is not None and change["stats.unique_graphs"]:
            started = time.perf_counter()
            self._save_dynamo_output()
            saved = f", Dynamo's cache saved in {(time.perf_counter() - started) * 1000:.1f} ms"
        # Whatever compiled, its garbage goes now, before a later request's
        # allocations make Python scan it all (settle_garbage).
        settled_s = settle_garbage()
        self._pb_utils.Logger.log_info(
            f"torch.compile in {where} of '{self._status['model']}' version {self._status['version']}: "
            f"{json.dumps(change, sort_keys=True)}{saved}, garbage collected and frozen in {settled_s * 1000:.1f} ms, "
            f"for request shapes {json.dumps(_shapes(requests))}"
        )
        self._status.update(updated=time.time(), counts=after)
        if self._status_path is not None:
            self._write_status()

    def _save_dynamo_output(self):
        # torch writes each package to a temporary file and renames it in:
        # two replicas saving at once leave one whole package.
        try:
            self._torch.compiler.save_cache_artifacts()
        except Exception as error:  # noqa: BLE001 - the next start traces again, nothing worse
            self._pb_utils.Logger.log_warn(f"could not save Dynamo's cache to {self._dynamo_folder}: {error!r}")

    def _write_status(self):
        # Written beside and renamed over: a reader never sees half a file.
        try:
            self._status_path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._status_path.with_name(f".{self._status_path.name}.new")
            temporary.write_text(json.dumps(self._status, sort_keys=True))
            os.replace(temporary, self._status_path)
        except OSError as error:
            self._pb_utils.Logger.log_warn(f"could not write {self._status_path}: {error}")
