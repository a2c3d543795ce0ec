"""Which share of recorded requests hit a warmed shape.

The warmed shapes of a model come from its ``model_warmup`` samples: those a
plan would write (planned by the helper's own code, hand-written samples
kept), or those its config on disk holds.
"""

import dataclasses
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from tritonclient.grpc import model_config_pb2

from triton_warmup import HELPER_MODEL
from triton_warmup.helper.job_planning import plan_jobs
from triton_warmup.helper.request import parse_plan_document
from triton_warmup.traffic.shapes import Shape, TrafficProfile, counted_dicts, rejected_dicts, warmed_shapes
from triton_warmup.traffic.trace import TraceId


@dataclasses.dataclass
class ModelCoverage:
    """How well one model's warmup covers its recorded requests.

    Attributes:
        source: where the warmed shapes came from (``plan`` or ``config``;
            for an ensemble, its members).
        requests: recorded requests of the model.
        covered: those whose shape is warmed.
        warmed_shapes: distinct shapes the warmup runs.
        uncovered: shapes the config can take but the warmup misses, with
            their request counts, most frequent first.
        rejected: requests the config cannot take, (raw shapes, reason, count).
    """

    model: str
    source: str
    requests: int
    covered: int
    shapes_seen: int
    warmed_shapes: int
    uncovered: List[Tuple[Shape, int]]
    rejected: List[Tuple[str, str, int]]
    # An ensemble, covered through its composing models' warmed shapes.
    ensemble: bool = False

    @property
    def share(self) -> float:
        return self.covered / self.requests if self.requests else 1.0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model,
            "source": self.source,
            "requests": self.requests,
            "covered": self.covered,
            "share": self.share,
            "shapes_seen": self.shapes_seen,
            "warmed_shapes": self.warmed_shapes,
            "uncovered": counted_dicts(self.uncovered),
            "rejected": rejected_dicts(self.rejected),
            "ensemble": self.ensemble,
        }


def planned_configs(
    repository: pathlib.Path, document: Any, helper_name: str = HELPER_MODEL
) -> Dict[str, model_config_pb2.ModelConfig]:
    """The config each model of the plan would have after the helper wrote
    it: planned with the helper's own code, hand-written samples kept.

    Raises:
        WarmupRequestError: the plan, or a model it names, is refused.
    """
    request = parse_plan_document(document, helper_name)
    return {job.name: job.rewrite.config for job in plan_jobs(repository, request, helper_name=helper_name)}


def _ensemble_coverage(profile: TrafficProfile, warmed: Mapping[str, Set[Shape]]) -> List[ModelCoverage]:
    """An ensemble's requests covered through its composing models: a request
    is covered when every request it sent a member (and, through a nested
    ensemble, every one that sent) hit a warmed shape of that member."""
    requests_of = {
        trace_id: children for traffic in profile.ensembles.values() for trace_id, children in traffic.children.items()
    }

    def covered(trace_id: TraceId, depth: int = 0) -> bool:
        children = requests_of.get(trace_id, [])
        if not children or depth > 16:
            return False
        return all(
            covered(shape, depth + 1) if model == "" else shape is not None and shape in warmed.get(model, set())
            for model, shape in children
        )

    results = []
    for name, traffic in sorted(profile.ensembles.items()):
        results.append(
            ModelCoverage(
                model=name,
                source="members: " + ", ".join(traffic.members),
                requests=traffic.requests,
                covered=sum(1 for trace_id in traffic.children if covered(trace_id)),
                shapes_seen=0,
                warmed_shapes=0,
                uncovered=[],
                rejected=[],
                ensemble=True,
            )
        )
    return results


def measure_coverage(
    profile: TrafficProfile, configs: Mapping[str, model_config_pb2.ModelConfig], sources: Mapping[str, str]
) -> List[ModelCoverage]:
    """Coverage of every model in ``profile`` by the samples of ``configs``;
    an ensemble's through its composing models, after them."""
    results = []
    warmed_of = {name: warmed_shapes(configs[name]) for name in profile.models}
    for name, traffic in sorted(profile.models.items()):
        warmed = warmed_of[name]
        ranked = traffic.most_frequent()
        covered = sum(count for shape, count in ranked if shape in warmed)
        results.append(
            ModelCoverage(
                model=name,
                source=sources.get(name, "config"),
                requests=traffic.requests,
                covered=covered,
                shapes_seen=len(ranked),
                warmed_shapes=len(warmed),
                uncovered=[(shape, count) for shape, count in ranked if shape not in warmed],
                rejected=traffic.rejected_list(),
            )
        )
    return results + _ensemble_coverage(profile, warmed_of)


def overall_share(results: List[ModelCoverage]) -> Optional[float]:
    """The share of recorded requests to models that hit a warmed shape; an
    ensemble's requests are counted through its members' already."""
    models = [result for result in results if not result.ensemble]
    requests = sum(result.requests for result in models)
    return sum(result.covered for result in models) / requests if requests else None
