"""A plan that learns from traffic: shapes that keep arriving cold become
warmup samples, with no reload.

The traffic watch (``watch.TrafficWatch``) tells the learner each observed
request whose shape no warmup sample covers. A shape is due once it was seen
``min_requests`` times on a READY model; the learner's thread then learns
it (``learning.learn``): checked on the serving model, warmed in place on its
instances, written into its config for every next load. One shape at a
time, for every model together, and never while the helper warms (a
request, or the warmup at start): the caller's ``busy`` lock is taken
without waiting.

Bounds: a model holds at most ``max_learned`` learned samples (then each
new shape is reported once and stays cold); a shape that failed is never
tried again while the helper runs; the sightings kept are capped, so that
traffic of endless distinct shapes keeps memory flat.

Pure Python: the learning, the lock, the metrics and the log are passed in.
"""

import collections
import dataclasses
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from triton_warmup.helper.learned_samples import DEFAULT_MAX_LEARNED
from triton_warmup.helper.learning import CAPPED, IN_PLACE_ONLY, KNOWN, NOT_NOW, LearnOutcome
from triton_warmup.helper.metrics import ADAPTED_NOT_KEPT, ADAPTED_SAMPLES
from triton_warmup.traffic.shapes import Shape

DEFAULT_MIN_REQUESTS = 3
# How often the thread looks for a due shape.
POLL_S = 0.25
# Distinct (model, shape) sightings kept; beyond it the least seen go.
MAX_SIGHTINGS = 10_000
# A shape whose learning had to wait (the model not READY, its lock taken)
# is tried again after this long.
RETRY_S = 5.0

Learn = Callable[[str, Shape], LearnOutcome]


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
    """The helper's ``adapt`` parameters."""

    min_requests: int = DEFAULT_MIN_REQUESTS
    max_learned: int = DEFAULT_MAX_LEARNED


class ShapeLearner:
    """Counts cold shapes and learns those that recur, one at a time.

    Args:
        learn: ``(model, shape) -> LearnOutcome``; runs under the model's lock.
        settings: when a shape is due, and the per-model cap.
        busy: a lock the helper holds while it warms; learning takes it
            without waiting, and waits for a later turn when it is held.
        metrics: ``metrics.WarmupMetrics`` (or ``None``).
        log_info, log_warn: one line each.
    """

    def __init__(
        self,
        learn: Learn,
        settings: AdaptSettings,
        busy: threading.Lock,
        metrics,
        log_info: Callable[[str], None],
        log_warn: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._learn = learn
        self.settings = settings
        self._busy = busy
        self.metrics = metrics
        self._log_info = log_info
        self._log_warn = log_warn
        self._clock = clock
        self._lock = threading.Lock()
        self.sightings: Dict[Tuple[str, Shape], int] = collections.Counter()
        self.first_seen: Dict[Tuple[str, Shape], float] = {}
        self.versions: Dict[str, str] = {}
        # Shapes done with, for good: learned, rejected, or impossible.
        self.settled: Dict[Tuple[str, Shape], LearnOutcome] = {}
        self.capped: Set[str] = set()
        self._retry_at: Dict[Tuple[str, Shape], float] = {}
        self.outcomes: List[Tuple[str, Shape, int, LearnOutcome]] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- what the watch tells ------------------------------------------

    def observe(self, model: str, version: str, shape: Shape) -> None:
        """One observed request of ``model`` whose shape is cold."""
        key = (model, shape)
        with self._lock:
            if key in self.settled:
                return
            if key not in self.sightings and len(self.sightings) >= MAX_SIGHTINGS:
                least = min(self.sightings, key=self.sightings.get)
                del self.sightings[least]
                self.first_seen.pop(least, None)
            self.sightings[key] += 1
            self.first_seen.setdefault(key, self._clock())
            self.versions[model] = version

    def due(self) -> List[Tuple[str, Shape]]:
        """Shapes seen often enough and not settled, most seen first."""
        now = self._clock()
        with self._lock:
            ready = [
                key for key, seen in self.sightings.items()
                if seen >= self.settings.min_requests
                and key not in self.settled
                and key[0] not in self.capped
                and self._retry_at.get(key, 0.0) <= now
            ]
            return sorted(ready, key=lambda key: (-self.sightings[key], key))

    # -- the thread ----------------------------------------------------

    def start(self) -> None:
        # Daemon: a learning in progress never holds the stub's exit.
        self._thread = threading.Thread(target=self._run, name="shape-learner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.step()
            except Exception as error:  # noqa: BLE001 - one failed step must not end learning
                self._log_warn(f"learning from traffic: a step failed: {error!r}")

    def step(self) -> Optional[LearnOutcome]:
        """Learn the most seen due shape, if the helper is not warming."""
        due = self.due()
        if not due:
            return None
        if not self._busy.acquire(blocking=False):
            return None
        try:
            model, shape = due[0]
            seen = self.sightings[(model, shape)]
            outcome = self._learn(model, shape)
        finally:
            self._busy.release()
        self._settle(model, shape, seen, outcome)
        return outcome

    def _settle(self, model: str, shape: Shape, seen: int, outcome: LearnOutcome) -> None:
        key = (model, shape)
        version = self.versions.get(model, "")
        since = self._clock() - self.first_seen.get(key, self._clock())
        if outcome.status == NOT_NOW:
            self._retry_at[key] = self._clock() + RETRY_S
            return
        with self._lock:
            self.outcomes.append((model, shape, seen, outcome))
            if outcome.status == CAPPED:
                self.capped.add(model)
                self._log_warn(f"not learned: '{model}' {shape.describe()} (seen {seen} times): {outcome.reason}; "
                               "further cold shapes of this model stay cold")
                return
            self.settled[key] = outcome
            self.sightings.pop(key, None)
        line = (
            f"'{model}' {shape.describe()}, seen cold {seen} times (first {since:.1f} s ago), "
            f"in {outcome.seconds} s: {outcome.reason}"
        )
        if outcome.counted:
            self._log_info(f"learned {line}")
            if self.metrics is not None:
                self.metrics.add(ADAPTED_SAMPLES, model, version, 1)
                if outcome.status == IN_PLACE_ONLY:
                    self.metrics.add(ADAPTED_NOT_KEPT, model, version, 1)
        elif outcome.warm_now or outcome.status == KNOWN:
            self._log_info(f"covered already: {line}")
        else:
            self._log_warn(f"not learned, and not tried again: {line}")
