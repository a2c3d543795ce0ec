"""Warmth on Triton's own metrics endpoint: the helper's metric families.

The Python backend publishes a model's custom metrics on the port Prometheus
already scrapes (``pb_utils.MetricFamily``). A family that is dropped takes
its metrics off the endpoint (python_backend's ``~MetricFamily`` clears
them), so ``WarmupMetrics`` creates each family once and keeps it, and each
labelled metric once per model and version.

Pure Python: the family factory is passed in (``pb_utils.MetricFamily`` in
the helper, a fake in unit tests).
"""

import threading
from typing import Callable, Dict, Tuple

GAUGE = "gauge"
COUNTER = "counter"

WARMED_SHAPES = "triton_warmup_warmed_shapes"
LAST_WARMUP_SECONDS = "triton_warmup_last_warmup_seconds"
REQUESTS_SEEN = "triton_warmup_requests_seen_total"
COLD_REQUESTS = "triton_warmup_cold_requests_total"
COMPILES_AFTER_READY = "triton_warmup_compiles_after_ready_total"
LEARNED_SHAPES = "triton_warmup_learned_shapes"
ADAPTED_SAMPLES = "triton_warmup_adapted_samples_total"
ADAPTED_NOT_KEPT = "triton_warmup_adapted_samples_not_kept_total"

# name: (kind, description); every metric has the labels model and version,
# and helper_pid (see WarmupMetrics).
FAMILIES: Dict[str, Tuple[str, str]] = {
    WARMED_SHAPES: (GAUGE, "Distinct request shapes that the model's warmup samples cover"),
    LAST_WARMUP_SECONDS: (GAUGE, "Seconds the model's last warmup by the helper took, from plan to READY"),
    REQUESTS_SEEN: (COUNTER, "Requests the helper observed after READY (1 in its watch_rate)"),
    COLD_REQUESTS: (COUNTER, "Observed requests whose shape no warmup sample covers"),
    COMPILES_AFTER_READY: (
        COUNTER,
        "PyTorch 2 models: execute calls that traced or compiled after READY",
    ),
    LEARNED_SHAPES: (GAUGE, "Of the warmed shapes, those the helper learned from live traffic"),
    ADAPTED_SAMPLES: (COUNTER, "Shapes this server learned from live traffic (helper parameter adapt)"),
    ADAPTED_NOT_KEPT: (
        COUNTER,
        "Learned shapes warmed in place only: the config could not be written, so a restart starts cold for them",
    ),
}
LABELS = ("model", "version", "helper_pid")
# Triton 2.51's core (metric_family.cc) counts references to a metric per
# family object, but two objects of one family name share prometheus' family,
# and one label set is one metric in it: when a reload's new helper instance
# publishes the labels its old instance does, the old one's finalize frees
# the metric under the new one (tritonserver then aborted with "malloc():
# unaligned tcache chunk" during a helper reload). A label per stub process
# keeps the two instances' metrics apart.
INSTANCE_LABEL = "helper_pid"


class MetricsClosed(RuntimeError):
    """A metric used after ``WarmupMetrics.close``."""


class WarmupMetrics:
    """The helper's metric families, created once and kept.

    Args:
        make_family: ``(name, kind, description) -> family``; a family's
            ``Metric(labels=...)`` returns an object with ``set(value)`` and
            ``increment(value)``.
    """

    def __init__(self, make_family: Callable[[str, str, str], object], instance: str = ""):
        self._families = {name: make_family(name, kind, description) for name, (kind, description) in FAMILIES.items()}
        # The helper's stub process: its own label value (INSTANCE_LABEL).
        self.instance = instance
        self._metrics: Dict[Tuple[str, str, str], object] = {}
        # The watch's thread and the helper's requests publish at once.
        self._lock = threading.Lock()
        self.closed = False

    def _metric(self, name: str, model: str, version: str):
        if self.closed:
            raise MetricsClosed(f"{name}: the helper is finalizing")
        key = (name, model, str(version))
        if key not in self._metrics:
            self._metrics[key] = self._families[name].Metric(
                labels={"model": model, "version": str(version), INSTANCE_LABEL: self.instance}
            )
        return self._metrics[key]

    def close(self) -> None:
        """Drop every family and metric now. The helper calls it in
        ``finalize``: a family that outlives it is destroyed at the
        interpreter's exit, after the stub's link to Triton is gone, and its
        destructor's message to Triton then crashes the stub (SIGSEGV, seen
        once per server stop with python_backend r24.10)."""
        with self._lock:
            self._metrics.clear()
            self._families.clear()
            self.closed = True

    def set(self, name: str, model: str, version: str, value: float) -> None:
        if FAMILIES[name][0] != GAUGE:
            raise ValueError(f"{name} is a counter: add to it")
        with self._lock:
            self._metric(name, model, version).set(float(value))

    def add(self, name: str, model: str, version: str, amount: float) -> None:
        if FAMILIES[name][0] != COUNTER:
            raise ValueError(f"{name} is a gauge: set it")
        if amount < 0:
            raise ValueError(f"{name} only grows, got {amount}")
        with self._lock:
            # Adding 0 creates the series, so that a dashboard's share has a denominator at once.
            metric = self._metric(name, model, version)
            if amount:
                metric.increment(float(amount))
