"""Watch live traffic: how much of it lands on shapes the warmup covers.

Triton records request shapes only in its traces, at level ``TENSORS``, and
those hold the tensors' data too. Triton refuses to set a trace file through
its API, so the server must start with one
(``--trace-config triton,file=PATH``, tracing left off). Then the watch turns
tracing on for each READY model alone, 1 request in ``watch_rate``, one file
per trace (``PATH.0``, ``PATH.1``, ...: Triton's ``log_frequency`` 1), reads
each file with the trace reader of ``traffic/``, keeps the request's shape,
and deletes the file: what users sent is theirs, and only shapes outlive the
read. A request is cold when its shape is none of the model's warmup
samples' (``traffic.shapes.warmed_shapes``, the rule ``triton-warmup-coverage``
uses too).

It never touches a setting someone else made: where Triton traces every model
already, or a model has a trace setting of its own, the watch leaves that
alone and says so once. Such a model's traces land in the same numbered
files (Triton takes the file from the command line for every setting): a
file that holds a trace of a model the watch does not trace is left as it
is, unread and uncounted. The helper's own requests (preflight, in-place runs)
carry a request id starting with ``OWN_REQUEST_ID`` and are not counted.
Stopping turns off what it turned on and removes its files.

Pure Python: the server's endpoints, the metrics, the log and the clock are
passed in, so unit tests drive ``cycle`` with fakes.
"""

import dataclasses
import pathlib
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from triton_warmup.helper.compile_status import executes_that_compiled, is_pytorch2
from triton_warmup.helper.config_rewrite import is_learned
from triton_warmup.helper.metrics import COLD_REQUESTS, COMPILES_AFTER_READY, LEARNED_SHAPES, REQUESTS_SEEN, WARMED_SHAPES
from triton_warmup.helper.model_kind import kind_of
from triton_warmup.traffic.shapes import RejectedShape, Shape, request_shape, sample_shape, warmed_shapes
from triton_warmup.traffic.trace import ReadSummary, TraceError, read_requests

# The helper's own inference requests carry request ids that start so.
OWN_REQUEST_ID = "warmup_helper/"
TRACE_LEVEL = ["TIMESTAMPS", "TENSORS"]
TRACE_KEYS = ("trace_level", "trace_rate", "trace_count", "log_frequency")
# A trace reaches the metrics port within about two cycles.
CYCLE_S = 1.0
# Configs are read again this often (and after each of the helper's warmups),
# so that samples a re-warm in place added count as warm.
CONFIG_REFRESH_S = 15.0
# A trace file that ends inside its array and is younger than this is still
# being written: read it at a later cycle.
PART_SETTLE_S = 5.0
# The trace files never hold more than this: beyond it the oldest go unread.
DEFAULT_MAX_TRACE_BYTES = 64 * 1024 * 1024
# 1 request in this many, unless the helper's watch_rate says otherwise
# (docs/metrics.md: what it costs).
DEFAULT_RATE = 100
# Triton before 2.57.0 can crash while it traces under load: TraceRelease
# destroyed a trace's mutex while it still held it (server issue #7795, fixed
# by server PR #8144 in 2.57.0). Seen here on 2.51.0: SIGSEGV in
# libtritonserver's free after about 4,500 requests at 170 traces/s.
SAFE_TRACING_VERSION = (2, 57, 0)


def watch_setting(rate: int) -> Dict:
    """The trace setting the watch gives a model."""
    return {"trace_level": list(TRACE_LEVEL), "trace_rate": str(rate), "log_frequency": "1"}


def _same(setting: Dict, other: Dict, keys=TRACE_KEYS) -> bool:
    return all(setting.get(key) == other.get(key) for key in keys if key in setting or key in other)


def _version(text: str) -> Tuple[int, ...]:
    """``"2.51.0"`` as (2, 51, 0); what does not read as numbers sorts first."""
    parts = []
    for part in text.split("."):
        digits = "".join(character for character in part if character.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or (0,)


def trace_parts(trace_file: pathlib.Path) -> List[pathlib.Path]:
    """The numbered files Triton wrote for ``trace_file`` (``PATH.0``, ...), oldest first."""
    parts = []
    for path in trace_file.parent.glob(trace_file.name + ".*"):
        index = path.name[len(trace_file.name) + 1:]
        if index.isdigit():
            parts.append((int(index), path))
    return [path for _, path in sorted(parts)]


@dataclasses.dataclass
class WatchedModel:
    """A READY model as the watch sees it."""

    name: str
    version: str
    config: model_config_pb2.ModelConfig
    warmed: Set[Shape]
    read_at: float
    # Counted at its composing models, not itself.
    ensemble: bool = False


class TrafficWatch:
    """One daemon thread: every ``CYCLE_S``, the READY models' warmed shapes,
    their trace settings, the new trace files and the metrics.

    Args:
        server: Triton's endpoints: ``repository_index()``, ``model_config(name)``,
            ``trace_setting(name=None)``, ``update_trace_setting(name, setting)``
            (``model_loading.HttpModelControl``).
        metrics: ``metrics.WarmupMetrics``.
        rate: observe 1 request in ``rate``; 0 turns the traffic signal off
            (warmed shapes are still published); ``None``: ``DEFAULT_RATE``
            on a Triton whose tracing is safe under load, off on an older one.
        trace_file: the server's ``--trace-config triton,file=PATH``, or ``None``.
        helper_name: the helper's own model, never watched.
        compile_cache_dir: ``TORCHINDUCTOR_CACHE_DIR``, where the PyTorch 2
            shim counts its compiles.
        in_place_samples: a model's samples that in-place re-warms ran on
            its serving instances (``rewarm.Rewarm.ran``): warm, though the
            config Triton serves lists them only after the next load.
        on_cold: told of each observed request whose shape is cold, as
            ``(model, version, shape)`` (``adapt.ShapeLearner.observe``).
    """

    def __init__(
        self,
        server,
        metrics,
        rate: Optional[int],
        trace_file: Optional[str],
        helper_name: str,
        log_info: Callable[[str], None],
        log_warn: Callable[[str], None],
        compile_cache_dir: Optional[str] = None,
        max_trace_bytes: int = DEFAULT_MAX_TRACE_BYTES,
        clock: Callable[[], float] = time.time,
        in_place_samples: Callable[[str], List[model_config_pb2.ModelWarmup]] = lambda name: [],
        on_cold: Optional[Callable[[str, str, Shape], None]] = None,
    ):
        self.server = server
        self.metrics = metrics
        # An explicit rate is the user's decision, also on a Triton whose
        # tracing can crash; the default is not.
        self.rate_explicit = rate is not None
        self.rate = DEFAULT_RATE if rate is None else rate
        self.server_version: Optional[str] = None
        self.trace_file = pathlib.Path(trace_file) if trace_file else None
        self.helper_name = helper_name
        self._log_info = log_info
        self._log_warn = log_warn
        self.compile_cache_dir = compile_cache_dir
        self.max_trace_bytes = max_trace_bytes
        self._clock = clock
        self._in_place_samples = in_place_samples
        self._on_cold = on_cold
        self.models: Dict[str, WatchedModel] = {}
        # Models whose trace setting the watch made, and those it leaves alone (why).
        self.traced: Set[str] = set()
        self.left_alone: Dict[str, str] = {}
        self.off_reason: Optional[str] = self._static_off_reason()
        self._said: Set[str] = set()
        self._refresh_all = False
        self._compile_baselines: Dict[Tuple[str, str, str], int] = {}
        self.counted: Dict[str, List[int]] = {}
        self.dropped_parts = 0
        # Numbered files that hold someone else's traces: never read again, never removed.
        self._foreign_parts: Set[str] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _static_off_reason(self) -> Optional[str]:
        if self.rate == 0:
            return "watch_rate is 0"
        if self.trace_file is None:
            return (
                "tritonserver runs without a trace file; add --trace-config triton,file=PATH (PATH in a "
                "folder only the server's user can read: the traces hold request data until the helper "
                "reads and removes them) to count the requests that land on cold shapes"
            )
        return None

    def _check_trace_folder(self) -> None:
        """Warn where the traces, which hold request data until read, could
        be read by others, or cannot be written at all."""
        folder = self.trace_file.parent
        try:
            mode = folder.stat().st_mode
        except OSError as error:
            self._say("folder", f"traffic watch: the trace folder {folder} cannot be read ({error}); Triton "
                      "writes no trace there, and nothing is counted", warn=True)
            return
        if mode & 0o077:
            self._say("folder", f"traffic watch: the trace folder {folder} has mode {oct(mode & 0o777)}: others "
                      "can read the requests' data while a trace waits to be read; make it 0700", warn=True)

    def _say(self, key: str, line: str, warn: bool = False) -> None:
        """Log ``line`` once per ``key``."""
        if key not in self._said:
            self._said.add(key)
            (self._log_warn if warn else self._log_info)(line)

    def start(self) -> None:
        if self.off_reason is not None:
            self._say("off", f"traffic watch off: {self.off_reason}")
        else:
            self._check_trace_folder()
        # Daemon: a cycle in progress never holds the stub's exit.
        self._thread = threading.Thread(target=self._run, name="traffic-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CYCLE_S):
            try:
                self.cycle()
            except Exception as error:  # noqa: BLE001 - one bad cycle must not end the watch
                self._say(f"cycle {type(error).__name__}", f"traffic watch: a cycle failed: {error!r}", warn=True)

    def refresh(self) -> None:
        """Read every model's config again at the next cycle (after a warmup)."""
        self._refresh_all = True

    def stop(self, timeout_s: float) -> bool:
        """End the thread, turn off the trace settings the watch made (where
        nobody changed them since) and remove its files. Whether the
        thread ended within ``timeout_s``."""
        self._stop.set()
        ended = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            ended = not self._thread.is_alive()
        for name in sorted(self.traced):
            try:
                if _same(self.server.trace_setting(name), watch_setting(self.rate), ("trace_level", "trace_rate")):
                    self.server.update_trace_setting(name, {key: None for key in watch_setting(self.rate)})
            except Exception:  # noqa: BLE001 - the server is going, and the setting with it
                pass
        self.traced.clear()
        if self.trace_file is not None and self.off_reason is None:
            for part in trace_parts(self.trace_file):
                if part.name not in self._foreign_parts:
                    self._remove(part)
        return ended

    # -- one cycle -------------------------------------------------------

    def cycle(self) -> None:
        try:
            index = self.server.repository_index()
        except Exception:  # noqa: BLE001 - not listening yet, or Triton's index race while a folder changes
            return
        ready = {
            entry["name"]: str(entry.get("version", ""))
            for entry in index
            if entry.get("state") == "READY" and entry["name"] != self.helper_name and not entry["name"].startswith(".")
        }
        for name in list(self.models):
            if name not in ready:
                del self.models[name]
        now = self._clock()
        refresh_all, self._refresh_all = self._refresh_all, False
        for name, version in ready.items():
            known = self.models.get(name)
            if known is None or known.version != version or refresh_all or now - known.read_at > CONFIG_REFRESH_S:
                self._read_model(name, version, now)
        self._check_tracing()
        if self.off_reason is None:
            self._count_parts()
        self._count_compiles()

    def _read_model(self, name: str, version: str, now: float) -> None:
        try:
            config = json_format.ParseDict(
                self.server.model_config(name), model_config_pb2.ModelConfig(), ignore_unknown_fields=True
            )
        except Exception:  # noqa: BLE001 - unloaded meanwhile: the next cycle sees it gone
            return
        in_place = self._in_place_samples(name)
        warmed = warmed_shapes(config) | {sample_shape(config, sample) for sample in in_place}
        model = WatchedModel(name, version, config, warmed, now, kind_of(config).ensemble)
        self.models[name] = model
        if not model.ensemble:
            self.metrics.set(WARMED_SHAPES, name, version, len(model.warmed))
            learned = {
                sample_shape(config, sample) for sample in list(config.model_warmup) + list(in_place) if is_learned(sample)
            }
            self.metrics.set(LEARNED_SHAPES, name, version, len(learned))

    def _check_tracing(self) -> None:
        """Turn tracing on for READY models where nobody traces; off everywhere
        if the server's own setting starts to trace."""
        if self._static_off_reason() is not None or not self._tracing_allowed():
            return
        try:
            server_setting = self.server.trace_setting()
        except Exception:  # noqa: BLE001 - try again next cycle
            return
        if server_setting.get("trace_level") not in (["OFF"], [], None):
            if self.off_reason is None:
                self.off_reason = (
                    f"Triton traces every model already (trace level {server_setting.get('trace_level')}); the "
                    "helper leaves that setting and its files alone"
                )
                self._say("server traces", f"traffic watch off: {self.off_reason}", warn=True)
                self.stop_tracing()
            return
        self.off_reason = None
        ours = watch_setting(self.rate)
        for name in self.models:
            if name in self.traced or name in self.left_alone:
                continue
            try:
                setting = self.server.trace_setting(name)
                if not _same(setting, server_setting) and not _same(setting, ours, ("trace_level", "trace_rate")):
                    self.left_alone[name] = f"it has a trace setting of its own ({setting.get('trace_level')})"
                    self._say(name, f"traffic watch: '{name}' not counted: {self.left_alone[name]}, left as it is")
                    continue
                self.server.update_trace_setting(name, ours)
            except Exception:  # noqa: BLE001 - unloaded meanwhile, or not READY yet
                continue
            self.traced.add(name)
            model = self.models[name]
            if not model.ensemble:
                self.metrics.add(REQUESTS_SEEN, name, model.version, 0)
                self.metrics.add(COLD_REQUESTS, name, model.version, 0)
            self._say(f"on {name}", f"traffic watch on for '{name}': 1 request in {self.rate}")

    def _tracing_allowed(self) -> bool:
        """Whether this Triton's tracing may be turned on (see
        ``SAFE_TRACING_VERSION``); False also while its version is unknown."""
        if self.server_version is None:
            try:
                self.server_version = str(self.server.server_metadata().get("version", ""))
            except Exception:  # noqa: BLE001 - not listening yet
                return False
        if _version(self.server_version) >= SAFE_TRACING_VERSION:
            return True
        hazard = (
            f"Triton {self.server_version} can crash while it traces under load (server issue #7795, fixed in "
            f"{'.'.join(map(str, SAFE_TRACING_VERSION))})"
        )
        if not self.rate_explicit:
            self.off_reason = f"{hazard}; set the helper's watch_rate to turn it on anyway"
            self._say("unsafe", f"traffic watch off: {self.off_reason}", warn=True)
            return False
        self._say("unsafe", f"traffic watch on at watch_rate {self.rate}, as the helper's config asks, although "
                  f"{hazard}", warn=True)
        return True

    def stop_tracing(self) -> None:
        for name in sorted(self.traced):
            try:
                self.server.update_trace_setting(name, {key: None for key in watch_setting(self.rate)})
            except Exception:  # noqa: BLE001
                pass
        self.traced.clear()

    def _remove(self, part: pathlib.Path) -> None:
        try:
            part.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            self._say("unlink", f"traffic watch: cannot remove {part}: {error}", warn=True)

    def _required_inputs(self, model: str) -> Optional[Set[str]]:
        watched = self.models.get(model)
        if watched is None or watched.ensemble:
            return None
        return {model_input.name for model_input in watched.config.input if not model_input.optional}

    def _count_parts(self) -> None:
        parts = [part for part in trace_parts(self.trace_file) if part.name not in self._foreign_parts]
        sizes = {}
        for part in parts:
            try:
                sizes[part] = part.stat().st_size
            except OSError:
                sizes[part] = 0
        # Over the cap, the oldest go unread, so that the disk never fills;
        # not while someone else traces too, whose files could be among them.
        while parts and sum(sizes[part] for part in parts) > self.max_trace_bytes and not self.left_alone:
            self._remove(parts.pop(0))
            self.dropped_parts += 1
            self._say("cap", f"traffic watch: trace files over {self.max_trace_bytes} bytes; the oldest go "
                      "unread (the counts then miss them)", warn=True)
        now = time.time()
        for part in parts:
            counts: Dict[str, List[int]] = {}
            cold_shapes: List[Tuple[str, str, Shape]] = []
            try:
                truncated, foreign = self._read_part(part, counts, cold_shapes)
            except TraceError as error:
                self._say(f"bad {part.name}", f"traffic watch: {error}; left unread", warn=True)
                self._foreign_parts.add(part.name)
                continue
            if truncated:
                try:
                    young = now - part.stat().st_mtime < PART_SETTLE_S
                except OSError:
                    young = False
                if young:
                    continue  # Triton is still writing it
            if foreign:
                self._foreign_parts.add(part.name)
                continue
            self._remove(part)
            self._publish(counts)
            if self._on_cold is not None:
                for model, version, shape in cold_shapes:
                    self._on_cold(model, version, shape)

    def _read_part(
        self, part: pathlib.Path, counts: Dict[str, List[int]], cold_shapes: List[Tuple[str, str, Shape]]
    ) -> Tuple[bool, bool]:
        """Count ``part``'s requests into ``counts`` (model: [seen, cold]),
        and each cold one that a warmup sample could cover into ``cold_shapes``.
        Returns whether the file ended inside its array, and whether it
        holds a trace the watch did not ask for (someone else's)."""
        summary = ReadSummary()
        foreign = False
        for request in read_requests([part], self._required_inputs, summary, show_progress=False):
            # A composing model's request is traced as part of its ensemble's.
            if request.model not in self.traced and request.parent_id is None:
                foreign = True
                continue
            if request.request_id and request.request_id.startswith(OWN_REQUEST_ID):
                continue
            watched = self.models.get(request.model)
            if watched is None or watched.ensemble:
                continue
            try:
                shape = request_shape(watched.config, request)
                cold = shape not in watched.warmed
                if cold:
                    cold_shapes.append((request.model, watched.version, shape))
            except RejectedShape:
                cold = True
            seen_cold = counts.setdefault(request.model, [0, 0])
            seen_cold[0] += 1
            seen_cold[1] += int(cold)
        for model in summary.models_without_tensors:
            if model in self.models:
                self._say(f"no tensors {model}", f"traffic watch: the traces of '{model}' hold no input tensors "
                          "(Triton 2.51 traces none for requests its sequence batcher schedules), so its requests "
                          "are not counted and its shapes cannot be learned", warn=True)
        return bool(summary.truncated), foreign

    def _publish(self, counts: Dict[str, List[int]]) -> None:
        for name, (seen, cold) in counts.items():
            watched = self.models.get(name)
            if watched is None:
                continue
            total = self.counted.setdefault(name, [0, 0])
            total[0] += seen
            total[1] += cold
            self.metrics.add(REQUESTS_SEEN, name, watched.version, seen)
            self.metrics.add(COLD_REQUESTS, name, watched.version, cold)

    def _count_compiles(self) -> None:
        """PyTorch 2 models: each instance's compiling executes since the
        watch first looked at it (its warmup's come before that)."""
        for name, watched in self.models.items():
            if not is_pytorch2(watched.config):
                continue
            for instance, count in executes_that_compiled(self.compile_cache_dir, name, watched.version).items():
                key = (name, watched.version, instance)
                baseline = self._compile_baselines.setdefault(key, count)
                if count > baseline:
                    self.metrics.add(COMPILES_AFTER_READY, name, watched.version, count - baseline)
                    self._compile_baselines[key] = count
