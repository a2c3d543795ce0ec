"""Run every planned sample once before Triton sees it as ``model_warmup``.

A ``model_warmup`` sample that fails while a model loads can crash
tritonserver 2.51.0 (SIGSEGV while core tears down the instance whose warmup
failed; ``docs/triton-warmup-crash.md``), and every model it serves goes down
with it. An inference request that fails is only an error response. So before
a sample is written, it runs once as a request on the same model files:

* **the model is READY** and its files have not changed since that version
  loaded: each sample that the served config does not already warm goes as a
  request to the serving model;
* **otherwise** (not loaded, or its files changed since): a scratch copy is
  loaded under a private name through the Model Loading API, with the
  model's config minus ``model_warmup``. Its folder is a hidden folder of the
  repository holding that config and symbolic links to the model's own
  files, so nothing is copied; in a repository folder that cannot be written
  the files travel in the load request as ``file:`` overrides instead. It
  never has the model's own name, so no client reaches a cold model by it.
  Each sample goes to it as a request, then it is unloaded and its folder
  removed (a killed helper's is removed under the model's lock by the next
  writer, or when the helper starts).

A failing sample is named with Triton's error, and the model's config is
neither rewritten nor loaded.

Pure Python and numpy: the caller passes the model control and the function
that sends a request.
"""

import collections
import concurrent.futures
import dataclasses
import json
import pathlib
import threading
import time
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.compile_status import is_pytorch2
from triton_warmup.helper.kept_errors import without_frames
from triton_warmup.helper.model_kind import Infer, ModelKind, correlation_ids, requests_for
from triton_warmup.report import PREFLIGHT_RECORD, PREFLIGHT_SCRATCH, PREFLIGHT_SERVING, PreflightRecord, one_line
from triton_warmup.helper.config_rewrite import CONFIG_FILENAME, WARMUP_DATA_FOLDER, config_json, render_config
from triton_warmup.helper.repository_guard import folder_unwritable_reason, remove_scratch_folder, scratch_folder, write_atomically
from triton_warmup.helper.preflight_record import fingerprint, known_good, passed_samples, write_record
from triton_warmup.helper.requests_mode import sample_arrays
from triton_warmup.pytorch2 import PREFLIGHT_PARAMETER
from triton_warmup.threads import runs_in_libtorch


def pause_after(run_s: float, duty: float) -> float:
    """The pause after a run of ``run_s`` seconds on a serving instance that
    leaves the runs ``duty`` of the instance's time (1 or more: no pause)."""
    if not 0 < duty < 1:
        return 0.0
    return run_s * (1 - duty) / duty

# Where the repository folder cannot take the scratch folder (read-only),
# the model's files travel base64-encoded in the load request instead, and
# Triton holds the request, its decoded files and the loaded copy at once:
# above this many bytes (the helper's parameter ``preflight_max_model_bytes``)
# the helper refuses that (bench/results/preflight_cost.md measures both ways).
DEFAULT_PREFLIGHT_MAX_MODEL_BYTES = 256 * 1024 * 1024

# Measured with bench/warmup_benchmark.py (256 samples of model-v1 on a
# scratch copy, 2 CPUs): see bench/README.md, "What the preflight costs".
DEFAULT_PREFLIGHT_IN_FLIGHT = 4

# How the scratch copy reaches Triton when the repository folder is writable.
LINKED_FOLDER = "a hidden folder of links to the model's files"


class PreflightFailed(Exception):
    """A planned sample, or the scratch copy itself, failed; nothing may be written.

    Attributes:
        detail: Triton's whole error text, when there is one.
    """

    def __init__(self, message: str, detail: Optional[str] = None):
        super().__init__(message)
        self.detail = detail


def sample_key(sample: model_config_pb2.ModelWarmup) -> Tuple:
    """What makes two samples run the same: batch size, and per input its
    type, dims and data policy (the count and the name do not matter)."""
    inputs = []
    for name in sorted(sample.inputs):
        data = sample.inputs[name]
        policy = data.WhichOneof("input_data_type")
        source = data.input_data_file if policy == "input_data_file" else None
        inputs.append((name, data.data_type, tuple(data.dims), policy, source))
    return (max(sample.batch_size, 1), tuple(inputs))


def unchecked_samples(
    config: model_config_pb2.ModelConfig, known_good: Iterable[model_config_pb2.ModelWarmup] = ()
) -> List[model_config_pb2.ModelWarmup]:
    """The samples of ``config`` not already known to pass, each key once, in config order."""
    seen = {sample_key(sample) for sample in known_good}
    unchecked = []
    for sample in config.model_warmup:
        key = sample_key(sample)
        if key not in seen:
            seen.add(key)
            unchecked.append(sample)
    return unchecked


def describe_sample(config: model_config_pb2.ModelConfig, sample: model_config_pb2.ModelWarmup) -> Dict:
    """The request shape of a sample, batch dimension included where the model batches."""
    batch = [max(sample.batch_size, 1)] if config.max_batch_size > 0 else []
    declared = {model_input.name for model_input in config.input}
    return {
        "sample": sample.name,
        "batch_size": max(sample.batch_size, 1),
        # A sequence model's control inputs are the batcher's, not the request's.
        "inputs": {name: batch + list(data.dims) for name, data in sorted(sample.inputs.items()) if name in declared},
    }


def loaded_versions(model_dir: pathlib.Path, policy: model_config_pb2.ModelVersionPolicy) -> List[str]:
    """The version folders Triton loads under ``policy``, newest first."""
    versions = sorted(
        (int(entry.name) for entry in model_dir.iterdir() if entry.is_dir() and entry.name.isdigit()),
        reverse=True,
    )
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        chosen = versions
    elif kind == "specific":
        chosen = [version for version in versions if version in set(policy.specific.versions)]
    else:
        chosen = versions[: max(policy.latest.num_versions, 1) if kind == "latest" else 1]
    return [str(version) for version in chosen]


def model_entries(model_dir: pathlib.Path, versions: Iterable[str]) -> List[pathlib.Path]:
    """The top-level entries a backend loads from: everything in the model's
    folder but its config, hidden entries (the helper's lock and temporary
    files), the warmup data folder and version folders Triton would not load."""
    wanted = set(versions)
    return [
        entry
        for entry in sorted(model_dir.iterdir())
        if not (entry.name.startswith(".") or entry.name in (CONFIG_FILENAME, WARMUP_DATA_FOLDER))
        and not (entry.is_dir() and entry.name.isdigit() and entry.name not in wanted)
    ]


def model_files(model_dir: pathlib.Path, versions: Iterable[str]) -> List[pathlib.Path]:
    """Every file of ``model_entries``, hidden ones inside folders and
    Python's bytecode caches (``__pycache__``, written when a stub imports a
    model's ``.py`` files) left out."""
    files = []
    for entry in model_entries(model_dir, versions):
        if entry.is_dir():
            files.extend(
                path
                for path in sorted(entry.rglob("*"))
                if path.is_file()
                and not any(
                    part.startswith(".") or part == "__pycache__" for part in path.relative_to(model_dir).parts
                )
            )
        elif entry.is_file():
            files.append(entry)
    return files


def scratch_config(config: model_config_pb2.ModelConfig, scratch_name: str) -> model_config_pb2.ModelConfig:
    """The config the scratch copy loads with.

    No ``model_warmup`` (the point); one instance, of the kind the model's
    first group asks for (every instance loads the same files); no dynamic
    batcher (requests go one at a time, so it could only add its delay) and
    no response cache (a cached answer would skip the model). For libtorch,
    ``DISABLE_OPTIMIZED_EXECUTION``: the optimizing executor profiles and
    compiles at each new shape, which the scratch copy would pay for nothing;
    the backend sets that flag on every execute of every model, for its own
    thread, so the served models keep theirs.

    For a PyTorch 2 model, the model's name and planned samples in
    ``PREFLIGHT_PARAMETER``: the runtime shim then compiles what the real
    load's warmup will (the same batching helpers in ``initialize``, and a
    request of B rows run as B requests of one row in one ``execute``, as
    Triton's warmup sends a sample), so the real load finds every graph in
    Inductor's cache, and keeps what Dynamo traced where the real load
    looks for it, so the real load traces nothing either.
    """
    scratch = model_config_pb2.ModelConfig()
    scratch.CopyFrom(config)
    scratch.name = scratch_name
    del scratch.model_warmup[:]
    if scratch.instance_group:
        first = scratch.instance_group[0]
        group = model_config_pb2.ModelInstanceGroup(kind=first.kind, count=1, gpus=list(first.gpus[:1]))
        del scratch.instance_group[:]
        scratch.instance_group.append(group)
    scratch.ClearField("dynamic_batching")
    scratch.ClearField("response_cache")
    if runs_in_libtorch(scratch):
        scratch.parameters["DISABLE_OPTIMIZED_EXECUTION"].string_value = "true"
    if is_pytorch2(scratch):
        scratch.parameters[PREFLIGHT_PARAMETER].string_value = json.dumps({
            "model": config.name,
            "model_warmup": [
                json_format.MessageToDict(sample, preserving_proto_field_name=True) for sample in config.model_warmup
            ],
        })
    return scratch


@dataclasses.dataclass
class Preflight:
    """The helper's preflight: its settings and what it knows across requests.

    Args:
        infer: sends one request (``Infer``).
        max_model_bytes: the largest model a scratch copy is made of.
        server_started_at: the server's start (epoch seconds), when known:
            files older than that are the files of any version it serves.
    """

    infer: Infer
    max_model_bytes: int = DEFAULT_PREFLIGHT_MAX_MODEL_BYTES
    server_started_at: Optional[float] = None
    # preflight_record.server_identity: with it, samples that passed are
    # recorded beside the model and not run again while nothing changed.
    server_identity: Optional[str] = None
    # Requests in flight at once on a scratch copy (the serving model gets one
    # at a time: its dynamic batcher could merge them).
    in_flight: int = DEFAULT_PREFLIGHT_IN_FLIGHT
    rng: np.random.Generator = dataclasses.field(default_factory=np.random.default_rng)
    # When the helper last started a load of each model that then succeeded.
    loaded_at: Dict[str, float] = dataclasses.field(default_factory=dict)
    # The share of a serving instance's time its samples may take: the same
    # pacing as an in-place re-warm (``pause_after``); 1 is unpaced.
    serving_duty: float = 1.0

    def check(self, job, control, was_ready: Optional[bool]) -> PreflightRecord:
        """Run every sample of ``job``'s planned config not known to pass.

        Returns the report's ``preflight`` record; ``error`` is set when a
        sample (or the scratch copy) failed, and ``failed_sample`` names it.
        """
        started = time.monotonic()
        config = job.rewrite.config
        record = PreflightRecord()
        try:
            try:
                versions = loaded_versions(job.model_dir, config.version_policy)
                files = model_files(job.model_dir, versions)
                record.model_bytes = sum(path.stat().st_size for path in files)
            except OSError as error:
                raise PreflightFailed(f"reading the model's files failed: {error}") from None
            current = self._fingerprint(job, files, versions, config)
            # Read once: the write below compares against the same record.
            passed = passed_samples(job.model_dir, job.name, current) if current else frozenset()
            recorded = known_good(job.model_dir, job.name, current, config, passed) if current else []
            record.samples_recorded = len(recorded)
            serving, why = self._serving_runs_these_files(job.name, files) if was_ready else (False, None)
            if serving:
                record.how = PREFLIGHT_SERVING
                record.why = why
                samples = unchecked_samples(config, self.served_samples(job, control) + recorded)
                record.samples_known_good = len(config.model_warmup) - len(samples)
                self._send(
                    job.name, job.kind, config, samples, job.model_dir, record, versions, duty=self.serving_duty
                )
            elif not unchecked_samples(config, recorded):
                record.how = PREFLIGHT_RECORD
                record.why = "these samples passed before against the same model files, config and server"
                record.samples_known_good = len(config.model_warmup)
            else:
                record.how = PREFLIGHT_SCRATCH
                record.why = why or "model not loaded"
                record.samples_known_good = len(recorded)
                self._check_scratch(job, control, config, versions, files, record, recorded)
            if current is not None:
                try:
                    write_record(job.model_dir, job.name, current, config.model_warmup, passed)
                except OSError:
                    pass  # the record only saves time; the next preflight runs the samples
        except PreflightFailed as failure:
            record.error = str(failure)
            record.detail = failure.detail
        record.seconds = round(time.monotonic() - started, 6)
        return record

    def _fingerprint(self, job, files, versions, config) -> Optional[Dict]:
        """What a record of this model's samples holds against; ``None``
        when the server's identity is unknown or a file cannot be read."""
        if self.server_identity is None:
            return None
        try:
            return fingerprint(job.model_dir, files, versions, config, self.server_identity)
        except OSError:
            return None

    def serving_since(self, name: str) -> Tuple[Optional[float], str]:
        """When the serving version of ``name`` began loading (epoch), as far
        as the helper knows, and what that time is; ``None`` when unknown."""
        since = self.loaded_at.get(name)
        if since is not None:
            return since, "the helper's last load of it"
        return self.server_started_at, "the server started"

    def serves_the_files_on_disk(self, job) -> bool:
        """Whether the READY version of ``job``'s model runs the model files
        on disk, as far as the helper can tell: then a load of the same
        config runs its samples on code they already ran on."""
        try:
            files = model_files(job.model_dir, loaded_versions(job.model_dir, job.rewrite.config.version_policy))
            return self._serving_runs_these_files(job.name, files)[0]
        except OSError:
            return False

    def _serving_runs_these_files(self, name: str, files: List[pathlib.Path]) -> Tuple[bool, str]:
        """Whether the READY version runs the files on disk, and why it is
        known (else the scratch copy checks them)."""
        since, described = self.serving_since(name)
        if since is None:
            return False, "the server's start time is unknown, so the files the serving version runs are too"
        newest = max((path.stat().st_mtime for path in files), default=0.0)
        if newest > since:
            return False, f"model files changed since {described}"
        return True, f"its files are unchanged since {described}"

    @staticmethod
    def served_samples(job, control) -> List[model_config_pb2.ModelWarmup]:
        """The samples Triton ran when it loaded the serving version: from the
        config it serves when the control can ask, else from the file."""
        served_config = getattr(control, "served_config", None)
        served = served_config(job.name) if served_config else None
        if served is None:
            return list(job.rewrite.current.model_warmup)
        config = model_config_pb2.ModelConfig()
        try:
            json_format.ParseDict(served, config, ignore_unknown_fields=True)
        except json_format.ParseError:
            return list(job.rewrite.current.model_warmup)
        return list(config.model_warmup)

    def _check_scratch(self, job, control, config, versions, files, record, known=()) -> None:
        if not versions:
            raise PreflightFailed(f"{job.model_dir} holds no version folder to load")
        samples = unchecked_samples(config, known)
        if not samples:
            return
        folder = scratch_folder(job.model_dir)
        scratch_name = folder.name
        scratch = scratch_config(config, scratch_name)
        # Respected even when the server runs as root, as for config writes.
        no_folder = folder_unwritable_reason(folder.parent)
        if no_folder is None:
            try:
                record.scratch = self._link_scratch_folder(job.model_dir, folder, scratch, versions)
            except OSError as error:
                no_folder = str(error)
        if no_folder is not None:
            record.scratch = f"file overrides in the load request (no scratch folder: {no_folder})"
            self._check_size(record.model_bytes)
        try:
            load_started = time.monotonic()
            try:
                if no_folder is None:
                    control.load(scratch_name)
                else:
                    overrides = {
                        "file:" + path.relative_to(job.model_dir).as_posix(): path.read_bytes() for path in files
                    }
                    control.load(scratch_name, config=config_json(scratch), files=overrides)
            except Exception as error:  # noqa: BLE001 - Triton's answer goes into the report
                raise PreflightFailed(
                    f"the model does not load even without warmup samples: {one_line(str(error))}", str(error)
                ) from None
            finally:
                record.load_s = round(time.monotonic() - load_started, 6)
            # No dynamic batcher on the scratch copy: requests in flight
            # together stay apart. A PyTorch 2 model's go one at a time, in
            # the plan's order, as Triton's warmup runs them: torch.compile's
            # graphs depend on the order of the shapes it sees (a second
            # size makes a dimension dynamic), and the real load must find
            # every one of them in the cache.
            in_flight = 1 if is_pytorch2(config) else self.in_flight
            try:
                self._send(scratch_name, job.kind, config, samples, job.model_dir, record, versions, in_flight)
            finally:
                try:
                    control.unload(scratch_name)
                except Exception:  # noqa: BLE001 - the scratch copy is private; its unload is best effort
                    pass
        finally:
            try:
                remove_scratch_folder(folder)
            except OSError:
                pass  # the next writer of this model, or the helper's next start, removes it

    def _check_size(self, model_bytes: int) -> None:
        if model_bytes > self.max_model_bytes:
            raise PreflightFailed(
                f"its files hold {model_bytes} bytes, above preflight_max_model_bytes "
                f"({self.max_model_bytes}), and the repository folder cannot take a scratch folder, "
                "so a scratch copy would travel in one load request. Load the model first (its "
                "samples are then checked on the serving model), raise preflight_max_model_bytes, "
                "or turn the preflight off"
            )

    @staticmethod
    def _link_scratch_folder(model_dir, folder, scratch, versions) -> str:
        """Make ``folder`` a model Triton can load: the scratch config and
        symbolic links to the model's loaded versions and other entries.
        Nothing is copied, so this costs the same for any model size."""
        remove_scratch_folder(folder)  # a killed writer's, found under the model's lock
        folder.mkdir()
        try:
            write_atomically(folder / CONFIG_FILENAME, render_config(scratch))
            for entry in model_entries(model_dir, versions):
                (folder / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
        except OSError:
            remove_scratch_folder(folder)
            raise
        return LINKED_FOLDER

    def _send(
        self, model, kind: ModelKind, config, samples, model_dir, record, versions, in_flight=1, duty=1.0
    ) -> None:
        """Send each sample to each version, in the requests the model's kind
        takes (``model_kind.requests_for``); raise for the first that fails,
        in plan order. Up to ``in_flight`` samples at once: only where no
        dynamic batcher can merge them into a batch no sample asked for.
        One at a time, each run is followed by a pause that leaves it
        ``duty`` of the time (``pause_after``)."""
        runs = [(index, version) for index in range(len(samples)) for version in versions]
        ids = correlation_ids(self.rng)
        ids_lock = threading.Lock()

        def next_id():
            with ids_lock:
                return next(ids)

        def run(index_and_version):
            index, version = index_and_version
            started = time.monotonic()
            try:
                arrays = sample_arrays(config, samples[index], model_dir, self.rng)
                for request in requests_for(kind, model, version, config, arrays, iter(next_id, None)):
                    self.infer(request)
            except Exception as error:  # noqa: BLE001 - Triton's answer goes into the report
                # Returned through a thread pool's future: kept_errors says why bare.
                return without_frames(error)
            if in_flight <= 1:
                time.sleep(pause_after(time.monotonic() - started, duty))
            return None

        if in_flight > 1 and len(runs) > 1:
            with concurrent.futures.ThreadPoolExecutor(min(in_flight, len(runs))) as pool:
                errors = list(pool.map(run, runs))
        else:
            errors = []
            for one in runs:
                errors.append(run(one))
                if errors[-1] is not None:
                    break
        passed = collections.Counter(index for (index, _), error in zip(runs, errors) if error is None)
        record.samples_checked = sum(1 for count in passed.values() if count == len(versions))
        failure = next(((runs[at], error) for at, error in enumerate(errors) if error is not None), None)
        if failure is None:
            return
        (index, version), error = failure
        sample = samples[index]
        record.failed_sample = describe_sample(config, sample)
        shape = ", ".join(f"{name} {dims}" for name, dims in record.failed_sample["inputs"].items())
        raise PreflightFailed(
            f"sample '{sample.name}' ({shape}) failed"
            + (f" on version {version}" if version and len(versions) > 1 else "")
            + f": {one_line(str(error))}",
            str(error),
        )
