"""The OpenMP thread count that keeps a libtorch model's warmed shapes warm.

Why this matters (docs/warm-stays-warm.md has the evidence):

* oneDNN caches each primitive it creates (GELU, convolutions, ...) under a
  key that holds the input shape *and the number of threads*.
* libtorch sets a thread's OpenMP thread count lazily: Triton's backend
  thread runs at the OpenMP default (``OMP_NUM_THREADS``, else one thread per
  logical CPU) until the first operation large enough to ask for the intra-op
  count, and from then on at the model's ``INTRA_OP_THREAD_COUNT`` (else
  torch's default: one per physical core).
* When the two counts differ, every primitive the warmup created before that
  first large operation is cached for the wrong count: the first real request
  at those shapes creates it again, as if it had never been warmed.

The fix is to make the two counts agree before tritonserver starts
(``openmp_setting``), which the embedded launcher and ``deploy/entrypoint.sh``
do (through ``client.openmp_threads``, which reads a repository's configs). The helper also checks a running server (``mismatch``) and, when they
differ, warms the largest sample first, so that the switch happens at once.

Where the models disagree, OpenMP starts at the *smallest* count. A thread
that runs above its model's count is the worse error: a model too small ever
to make libtorch switch keeps an OpenMP team of the default size for good,
and after an idle pause its request waits for a sleeping team thread
(milliseconds on a small VM). A thread below its count only has to switch up,
which the helper's largest-first order makes happen during the warmup.

libtorch's count is one value per process (``at::set_num_threads`` on the
loading thread), and a backend thread takes the value it holds at its first
parallel loop: a model without ``INTRA_OP_THREAD_COUNT`` gets torch's default
only when no other model set a count before that loop.
"""

import dataclasses
import os
import pathlib
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from tritonclient.grpc import model_config_pb2

OPENMP_VARIABLE = "OMP_NUM_THREADS"
# torch reads MKL_NUM_THREADS for its own default over OMP_NUM_THREADS;
# OpenMP itself does not.
MKL_VARIABLE = "MKL_NUM_THREADS"
THREAD_COUNT_PARAMETER = "INTRA_OP_THREAD_COUNT"
_LIBTORCH = ("pytorch", "pytorch_libtorch")


def _count_from(environ: Mapping[str, str], name: str) -> Optional[int]:
    """The first count of an OpenMP-style list ("4" or "4,2"); ``None`` when unset or not a count."""
    value = environ.get(name, "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _physical_cores(cpus: Iterable[int]) -> int:
    """Distinct (package, core) pairs among ``cpus``, as the kernel reports them."""
    cores = set()
    cpus = list(cpus)
    for cpu in cpus:
        topology = pathlib.Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


@dataclasses.dataclass(frozen=True)
class Machine:
    """What decides a server's thread counts: its environment and CPUs."""

    # Out of repr: the helper logs its settings, and the environment holds
    # credentials (AWS_SECRET_ACCESS_KEY and the like).
    environ: Mapping[str, str] = dataclasses.field(repr=False)
    logical_cpus: int
    physical_cores: int

    @classmethod
    def here(cls, environ: Optional[Mapping[str, str]] = None) -> "Machine":
        """This process's machine; in the helper's Python stub, the server's
        environment (the stub inherits it) and the CPUs it may run on."""
        cpus = sorted(os.sched_getaffinity(0))
        return cls(dict(os.environ if environ is None else environ), len(cpus), _physical_cores(cpus))

    @property
    def openmp_default(self) -> int:
        """The OpenMP thread count a new thread starts with (libgomp's rule)."""
        return _count_from(self.environ, OPENMP_VARIABLE) or self.logical_cpus

    @property
    def torch_default(self) -> int:
        """torch's intra-op count when no model sets one. ATen's
        ``intraop_default_num_threads`` reads ``MKL_NUM_THREADS`` over
        ``OMP_NUM_THREADS`` (checked on torch 2.13: 1 and 2 give 2)."""
        return _count_from(self.environ, MKL_VARIABLE) or _count_from(self.environ, OPENMP_VARIABLE) or self.physical_cores


def runs_in_libtorch(config: model_config_pb2.ModelConfig) -> bool:
    """A TorchScript model that Triton's native libtorch backend runs in the
    server process (not the PyTorch 2 runtime, which runs in a Python stub)."""
    libtorch = config.backend in _LIBTORCH or config.platform in _LIBTORCH
    return libtorch and not config.runtime.endswith(".py")


def _own_count(config: model_config_pb2.ModelConfig) -> Optional[int]:
    """``INTRA_OP_THREAD_COUNT``; ``None`` when unset or a value the backend would refuse."""
    parameter = config.parameters.get(THREAD_COUNT_PARAMETER)
    value = parameter.string_value.strip() if parameter is not None else ""
    return int(value) if value.isdigit() and int(value) > 0 else None


def intra_op_threads(config: model_config_pb2.ModelConfig, machine: Machine) -> Optional[int]:
    """The thread count libtorch runs ``config``'s model with; ``None`` when
    libtorch does not run it. A value the backend would refuse counts as unset."""
    if not runs_in_libtorch(config):
        return None
    return _own_count(config) or machine.torch_default


# How the note of a model that switches up begins its second part; the
# clients tell it from a warning by it (the report carries only the note).
SWITCHES_UP = "libtorch switches its backend thread to"


@dataclasses.dataclass(frozen=True)
class ThreadMismatch:
    """A libtorch model whose warmth the server's OpenMP default would undo."""

    model: str
    intra_op: int
    openmp_default: int

    @property
    def switches_up(self) -> bool:
        """The model runs more threads than OpenMP starts with: what a
        repository whose models disagree gets on purpose (``openmp_setting``)."""
        return self.intra_op > self.openmp_default

    @property
    def note(self) -> str:
        if self.switches_up:
            return (
                f"{OPENMP_VARIABLE} is {self.openmp_default} on the server and the model runs {self.intra_op} "
                f"intra-op thread(s): {SWITCHES_UP} {self.intra_op} at its first "
                f"parallel loop, so its largest sample was warmed first, to switch before the other samples "
                f"are cached (where models disagree, OpenMP starts at the smallest count)"
            )
        return (
            f"{OPENMP_VARIABLE} is {self.openmp_default} on the server but the model runs {self.intra_op} "
            f"intra-op thread(s): until libtorch switches its backend thread (at its first parallel loop, which "
            f"a small model may never reach) it runs OpenMP teams of {self.openmp_default}, so oneDNN primitives "
            f"warmed before may be made again at the first request, and a request after an idle pause can wait "
            f"milliseconds for a sleeping OpenMP thread; start tritonserver with {OPENMP_VARIABLE}={self.intra_op} "
            f"(or the repository's smallest count, which triton-warmup-threads prints)"
        )


def mismatch(config: model_config_pb2.ModelConfig, machine: Machine) -> Optional[ThreadMismatch]:
    """The mismatch for ``config`` on ``machine``; ``None`` when the counts agree."""
    threads = intra_op_threads(config, machine)
    if threads is None or threads == machine.openmp_default:
        return None
    return ThreadMismatch(config.name, threads, machine.openmp_default)


@dataclasses.dataclass(frozen=True)
class OpenMPSetting:
    """What to set ``OMP_NUM_THREADS`` to for a server, and why.

    ``value`` is ``None`` when nothing should be set: the user set it, the
    counts already agree, or the models disagree among themselves (libtorch's
    count is one per process: the last model loaded sets it for all).
    """

    value: Optional[int]
    reason: str


def _spread(counts: Mapping[int, List[str]]) -> str:
    return "; ".join(f"{threads}: {', '.join(sorted(names))}" for threads, names in sorted(counts.items()))


def openmp_setting(configs: Sequence[model_config_pb2.ModelConfig], machine: Machine) -> OpenMPSetting:
    """The ``OMP_NUM_THREADS`` that makes every libtorch model of ``configs``
    run its warmup and its requests at one thread count; where they
    disagree, the smallest of their counts (the module's docstring says why)."""
    counts: Dict[int, List[str]] = {}
    for config in configs:
        threads = intra_op_threads(config, machine)
        if threads is not None:
            counts.setdefault(threads, []).append(config.name)
    if OPENMP_VARIABLE in machine.environ:
        reason = f"{OPENMP_VARIABLE}={machine.environ[OPENMP_VARIABLE]} is already set"
        if counts and machine.openmp_default > min(counts):
            reason += (f"; above the smallest intra-op count ({_spread(counts)}): those models' threads run "
                       f"OpenMP teams larger than their count until libtorch switches them")
        return OpenMPSetting(None, reason)
    if not counts:
        return OpenMPSetting(None, "no model runs in libtorch")
    if len(counts) > 1:
        smallest = min(counts)
        unset = sorted(config.name for config in configs
                       if runs_in_libtorch(config) and _own_count(config) is None)
        reason = (
            f"the libtorch models run different intra-op thread counts ({_spread(counts)}); OpenMP starts "
            f"at the smallest, so that no model runs more threads than its count, which can cost milliseconds "
            f"after an idle pause; libtorch switches each model with a larger count at its first parallel loop, "
            f"and the helper warms those models' largest sample first"
        )
        if unset:
            reason += (f". Without {THREAD_COUNT_PARAMETER}, {', '.join(unset)} then run(s) {smallest} too: "
                       f"torch's default follows {OPENMP_VARIABLE}; set the parameter for more")
        if smallest == machine.openmp_default:
            return OpenMPSetting(None, reason + f" ({smallest} is OpenMP's default)")
        return OpenMPSetting(smallest, reason)
    (threads, names), = counts.items()
    if threads == machine.openmp_default:
        return OpenMPSetting(None, f"the libtorch models run {threads} intra-op thread(s), OpenMP's default")
    return OpenMPSetting(
        threads,
        f"the libtorch models run {threads} intra-op thread(s) and OpenMP would start threads at "
        f"{machine.openmp_default}",
    )


def largest_first(samples: Sequence[model_config_pb2.ModelWarmup]) -> List[model_config_pb2.ModelWarmup]:
    """``samples`` with the one of most elements moved to the front.

    Its first run makes libtorch switch the backend thread to the model's
    count (operations that large ask for it), so that the samples after it
    are cached for the count requests will run at.
    """
    if len(samples) < 2:
        return list(samples)

    def elements(sample: model_config_pb2.ModelWarmup) -> int:
        total = 0
        for data in sample.inputs.values():
            size = max(sample.batch_size, 1)
            for dim in data.dims:
                size *= dim
            total += size
        return total

    largest = max(range(len(samples)), key=lambda index: (elements(samples[index]), -index))
    return [samples[largest]] + [sample for index, sample in enumerate(samples) if index != largest]
