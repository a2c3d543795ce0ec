"""The output the README and the docs show, run again on the embedded server.

A shown output is a fenced block right after an HTML comment that names its
scenario::

    <!-- shown: own -->
    ```
    $ triton-warmup -u localhost:8000 --models model-v1 --group-size-max 4
    warming ['model-v1'] through 'warmup_helper' at localhost:8000 (http)
    ...
    ```

Lines that start with ``$ `` are commands (a trailing ``\\`` continues one);
the lines after a command are what it printed. ``...`` alone stands for any
number of lines, and inside a line for any text. A scenario
(``SCENARIOS``) is a folder and, when a command needs one, a server: the
blocks of one scenario run in the order the docs list them, in one folder,
so a later block sees what an earlier one wrote. The paths and ports the
docs show (``/tmp/own``, ``localhost:8000``) stand for the scenario's own.

``normalize`` makes two runs comparable: numbers with a fraction (seconds,
percentages, sizes), hashes, dates, temporary paths and ports become
placeholders, runs of spaces one space. Everything else must match, so a
changed column or message fails ``test_docs.py``.

``make docs`` (``pytest tests/integration/test_docs.py --write-docs``) runs
every scenario and writes what the commands printed into the docs.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import tritonclient.http as httpclient

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCUMENTS = ["README.md", "docs/clients.md", "docs/request.md", "docs/traffic.md", "docs/safety.md", "docs/object-storage.md",
             "deploy/README.md"]
MARKER = re.compile(r"^<!-- (?P<kind>shown|file): (?P<scenario>[\w-]+)(/(?P<file>[\w./-]+))? -->$")
# The docs' stand-ins for a scenario's own URLs, and for the checkout's path
# (the docs are the same wherever the project is cloned).
SHOWN_HTTP, SHOWN_GRPC = "localhost:8000", "localhost:8001"
SHOWN_CHECKOUT = "~/triton-warmup"
COMMAND_TIMEOUT_S = 300


@dataclasses.dataclass
class Block:
    """One marked block: where it is, and its commands with their output;
    or, for a ``file`` block, the file the scenario's commands read
    (``<!-- file: own/plan.yaml -->``): written into its folder as shown."""

    path: pathlib.Path
    scenario: str
    # Line numbers (0-based) of the fence's first and last lines.
    start: int
    end: int
    commands: List[Tuple[str, List[str]]]
    file: Optional[str] = None
    content: str = ""


def read_blocks(root: pathlib.Path = PROJECT_ROOT) -> List[Block]:
    blocks = []
    for name in DOCUMENTS:
        path = root / name
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            found = MARKER.match(line.strip())
            if not found:
                continue
            start = index + 1
            assert lines[start].lstrip().startswith("```"), f"{path}:{start + 1}: a shown marker without a block"
            indent = len(lines[start]) - len(lines[start].lstrip())
            end = next(at for at in range(start + 1, len(lines)) if lines[at].strip() == "```")
            body = [text[indent:] for text in lines[start + 1 : end]]
            if found["kind"] == "file":
                blocks.append(Block(path, found["scenario"], start, end, [], found["file"], "\n".join(body) + "\n"))
            else:
                blocks.append(Block(path, found["scenario"], start, end, _commands(body)))
    return blocks


def _commands(body: List[str]) -> List[Tuple[str, List[str]]]:
    commands: List[Tuple[str, List[str]]] = []
    continued = False
    for line in body:
        if continued:
            text, output = commands[-1]
            commands[-1] = (text + "\n" + line, output)
            continued = line.endswith("\\")
        elif line.startswith("$ "):
            commands.append((line[2:], []))
            continued = line.endswith("\\")
        else:
            assert commands, f"output before any command: {line!r}"
            commands[-1][1].append(line)
    return commands


_NUMBER = re.compile(r"\d+\.\d+")
_HASH = re.compile(r"\b[0-9a-f]{16}\b")
_DATE = re.compile(r"\b\d{4}-\d\d-\d\d\b")
_TEMP = re.compile(r"/tmp/[\w.+-]+")
_PORT = re.compile(r"localhost:\d+")
_SPACES = re.compile(r" {2,}")
_DASHES = re.compile(r"-{3,}")
# Live progress lines follow Triton's index while the request runs: which
# states they catch depends on timing, so they are not compared.
LIVE_LINE = re.compile(r"^\[\s*[\d.]+s\] ")


def normalize(line: str) -> str:
    line = _NUMBER.sub("#.#", line)
    line = _HASH.sub("<hash>", line)
    line = _DATE.sub("<date>", line)
    line = _TEMP.sub("/tmp/<path>", line)
    line = _PORT.sub("localhost:<port>", line)
    line = _DASHES.sub("---", line)
    return _SPACES.sub(" ", line).rstrip()


def _line_matches(expected: str, actual: str) -> bool:
    if "..." not in expected:
        return expected == actual
    parts = [re.escape(part) for part in expected.split("...")]
    return re.fullmatch(".*".join(parts), actual) is not None


def compare(expected: List[str], actual: List[str]) -> Optional[str]:
    """None when ``actual`` shows what ``expected`` does, else where not."""
    wanted = [normalize(line) for line in expected if not LIVE_LINE.match(line)]
    got = [normalize(line) for line in actual if not LIVE_LINE.match(line)]

    def match(i: int, j: int) -> bool:
        if i == len(wanted):
            return j == len(got)
        if wanted[i] == "...":
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and _line_matches(wanted[i], got[j]) and match(i + 1, j + 1)

    if match(0, 0):
        return None
    # The first line that differs, for the message.
    for index, line in enumerate(wanted):
        if line == "..." or index >= len(got) or not _line_matches(line, got[index]):
            return f"shown: {line!r}\n  ran:   {got[index] if index < len(got) else '(nothing more)'!r}"
    return f"it printed more: {got[len(wanted):][:3]}"


class Scenario:
    """A folder (``/tmp/<name>`` in the docs) and, once a command needs one,
    a server on its ``models/`` (or the project's repository)."""

    shown_folder = ""

    def __init__(self, folder: pathlib.Path):
        self.folder = folder
        # Variables the scenario's commands run with, beyond the test's own.
        self.environment: Dict[str, str] = {}
        self.server = None
        self._stack = contextlib.ExitStack()
        # What a command printed that the docs show otherwise: this run's
        # URLs and folder, by the docs' stand-ins for them.
        self.shown: Dict[str, str] = {}

    def setup(self) -> None:
        """Lay out the folder before the first block runs."""

    def needs_server(self, command: str) -> bool:
        return SHOWN_HTTP in command or SHOWN_GRPC in command

    def start_server(self) -> None:
        from live_server import serving

        self.server = self._stack.enter_context(serving(self.folder / "models", self.folder / "server"))
        self.shown.update({self.server.http_url: SHOWN_HTTP, self.server.grpc_url: SHOWN_GRPC})

    def command_line(self, command: str) -> str:
        if self.needs_server(command) and self.server is None:
            self.start_server()
        if self.server is not None:
            command = command.replace(SHOWN_HTTP, self.server.http_url).replace(SHOWN_GRPC, self.server.grpc_url)
        if self.shown_folder:
            command = command.replace(self.shown_folder, str(self.folder))
        return command

    def output_line(self, line: str) -> str:
        line = line.replace(str(PROJECT_ROOT), SHOWN_CHECKOUT)
        if self.shown_folder:
            line = line.replace(str(self.folder), self.shown_folder)
        for real, shown in self.shown.items():
            line = line.replace(real, shown)
        return line

    @property
    def cwd(self) -> pathlib.Path:
        return self.folder

    def close(self) -> None:
        self._stack.close()


def _example_models(destination: pathlib.Path, names: List[str]) -> None:
    """The example models ``names`` (model files generated) in ``destination``."""
    from triton_warmup import example_models

    staging = destination.parent / ".staging"
    shutil.copytree(PROJECT_ROOT / "model_repository", staging,
                    ignore=shutil.ignore_patterns("__pycache__", ".*.tmp", ".warmup_helper.lock", ".*.warmup-preflight.json"))
    example_models.write_models(staging)
    destination.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(staging / name, destination / name)
    shutil.rmtree(staging)


class MakeRun(Scenario):
    """``make run`` from the project's root, on ports of its own."""

    @property
    def cwd(self) -> pathlib.Path:
        return PROJECT_ROOT

    def setup(self) -> None:
        # The docs show a run whose models are built; the first run of a fresh
        # clone also prints the model build (git sets no useful timestamps).
        subprocess.run(["make", "--no-print-directory", "models"], cwd=PROJECT_ROOT, check=True,
                       stdout=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT_S)
        # The docs show a first run, which compiles compiled-encoder; a run
        # whose Inductor cache was filled before says it reused it instead.
        self.environment["TORCHINDUCTOR_CACHE_DIR"] = str(self.folder / "torch-compile-cache")

    def command_line(self, command: str) -> str:
        from triton_warmup.embedded import free_port

        if command == "make run":
            ports = (free_port(), free_port(), free_port())
            # make echoes its command with the ports, and the server prints its URLs.
            self.shown = {str(port): str(8000 + index) for index, port in enumerate(ports)}
            return f"make --no-print-directory run HTTP_PORT={ports[0]} GRPC_PORT={ports[1]} METRICS_PORT={ports[2]}"
        return command


class OwnRepository(Scenario):
    """The README's own repository, ``/tmp/own/models``: model-v1 and
    text-encoder, into which the first block installs the helper; its
    ``plan.yaml`` is the README's (a file block), and three bad plans."""

    shown_folder = "/tmp/own"

    def setup(self) -> None:
        _example_models(self.folder / "models", ["model-v1", "text-encoder"])
        (self.folder / "bad.yaml").write_text(
            "defaults:\n  group_size_max: 4\nmodels:\n  model-v1:\n    batch_sizes: [1, 8]\n"
            "  text-encoder:\n    batch_sizes: [1]\n    # a mistake\n    group_size_max: 0\n"
        )
        (self.folder / "missing.yaml").write_text(
            "defaults:\n  group_size_max: 4\nmodels:\n  model-v1:\n    data:\n      mask:\n        file: no_such.bin\n"
        )
        (self.folder / "too-long.yaml").write_text("models:\n  text-encoder:\n    group_size_min: 129\n"
                                                    "    group_size_max: 129\n    batch_sizes: [1]\n")


class Traffic(Scenario):
    """``/tmp/traffic``: model-v1 and text-encoder with the helper, and a
    trace a recording server wrote while clients sent a skewed mix."""

    shown_folder = "/tmp/traffic"
    # (model, batch, length) -> requests
    MIX = {
        ("model-v1", 1, 4): 60, ("model-v1", 2, 8): 30, ("model-v1", 1, 16): 10,
        ("text-encoder", 1, 12): 75, ("text-encoder", 2, 12): 25, ("text-encoder", 1, 30): 15,
        ("text-encoder", 4, 7): 8, ("text-encoder", 1, 48): 2,
    }

    def setup(self) -> None:
        from live_server import serving
        from triton_warmup.traffic.trace import recording_flags

        _example_models(self.folder / "models", ["model-v1", "text-encoder", "warmup_helper"])
        (self.folder / "range.yaml").write_text("models:\n  text-encoder:\n    group_size_max: 32\n    batch_sizes: [1]\n")
        recording = self.folder / "recording"
        shutil.copytree(self.folder / "models", recording / "models")
        with serving(recording / "models", recording, extra_args=recording_flags(self.folder / "trace.json")) as server:
            self.send_mix(server.http_url)

    def send_mix(self, url: str) -> None:
        rng = np.random.default_rng(7)
        order = [shape for shape, count in self.MIX.items() for _ in range(count)]
        rng.shuffle(order)
        with httpclient.InferenceServerClient(url) as client:
            for model in sorted({model for model, _, _ in order}):
                client.load_model(model)
            for model, batch, length in order:
                if model == "model-v1":
                    arrays = {"x": rng.random((batch, length, 64), dtype=np.float32),
                              "mask": np.ones((batch, length), np.int64)}
                else:
                    arrays = {"input_ids": rng.integers(1, 1000, (batch, length), dtype=np.int64),
                              "attention_mask": np.ones((batch, length), np.int64)}
                inputs = []
                for name, array in arrays.items():
                    tensor = httpclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
                    tensor.set_data_from_numpy(array)
                    inputs.append(tensor)
                client.infer(model, inputs)


class Deploy(Scenario):
    """From the project's root, as deploy/README.md runs its commands:
    ``triton-warmup-serve`` on ports of its own (the docs' command serves a
    working copy), and for the probes a server whose models the example plan
    warmed."""

    @property
    def cwd(self) -> pathlib.Path:
        return PROJECT_ROOT

    def setup(self) -> None:
        _example_models(self.folder / "models", ["model-v1", "model-v2", "model-v3", "text-encoder", "warmup_helper"])

    def start_server(self) -> None:
        from live_server import send_warmup
        from triton_warmup.client.plan_file import load_plan

        super().start_server()
        document, _ = load_plan(PROJECT_ROOT / "plans" / "example.yaml")
        send_warmup(self.server, "http", {"PLAN": np.array([json.dumps(document).encode()], dtype=np.object_)})

    def command_line(self, command: str) -> str:
        from triton_warmup.embedded import free_port

        if not command.startswith("triton-warmup-serve "):
            return super().command_line(command)
        ports = (free_port(), free_port(), free_port())
        self.shown.update({f"localhost:{port}": f"localhost:{8000 + index}" for index, port in enumerate(ports)})
        flags = f"--http-port {ports[0]} --grpc-port {ports[1]} --metrics-port {ports[2]}"
        command = command.replace("triton-warmup-serve ", f"triton-warmup-serve {flags} ", 1)
        # The command after "--" talks to that server.
        return command.replace(SHOWN_HTTP, f"localhost:{ports[0]}")


class Replicas(Scenario):
    """Two servers of the same repository, ``localhost:8000`` and ``localhost:8100``."""

    def setup(self) -> None:
        from live_server import serving

        _example_models(self.folder / "models", ["model-v1", "model-v2", "warmup_helper"])
        servers = []
        for name in ("a", "b"):
            shutil.copytree(self.folder / "models", self.folder / name / "models")
            servers.append(self._stack.enter_context(serving(self.folder / name / "models", self.folder / name)))
        self.urls = {"localhost:8000": servers[0].http_url, "localhost:8100": servers[1].http_url}
        self.shown = {real: shown for shown, real in self.urls.items()}

    def command_line(self, command: str) -> str:
        for shown, real in self.urls.items():
            command = command.replace(shown, real)
        return command


class Restricted(Scenario):
    """A server whose model-repository endpoints want the header
    ``admin-key: s3cret`` (docs/safety.md)."""

    FLAGS = ["--http-restricted-api=model-repository:admin-key=s3cret",
             "--grpc-restricted-protocol=model-repository:admin-key=s3cret"]

    def setup(self) -> None:
        _example_models(self.folder / "models", ["model-v1", "model-v2", "model-v3", "warmup_helper"])

    def start_server(self) -> None:
        from live_server import serving

        self.server = self._stack.enter_context(
            serving(self.folder / "models", self.folder / "server", extra_args=self.FLAGS)
        )
        self.shown.update({self.server.http_url: SHOWN_HTTP, self.server.grpc_url: SHOWN_GRPC})


class NoneMode(Scenario):
    """A server in ``none`` model-control mode: every model loaded at start,
    the Model Loading API refused (docs/request.md, the requests mode)."""

    def setup(self) -> None:
        _example_models(self.folder / "models", ["model-v1", "model-v2", "model-v3", "warmup_helper"])

    def start_server(self) -> None:
        from live_server import serving

        self.server = self._stack.enter_context(
            serving(self.folder / "models", self.folder / "server", model_control_mode="none")
        )
        self.shown.update({self.server.http_url: SHOWN_HTTP, self.server.grpc_url: SHOWN_GRPC})


class ObjectStorage(Scenario):
    """A repository in S3 (moto's server; README, "Repository in S3/GCS/Azure"):
    the helper, model-v1 and text-encoder at ``s3://http://localhost:9000/models/repo``,
    served by the embedded tritonserver with the bucket's credentials."""

    def setup(self) -> None:
        from bench.object_stores import s3_server

        _example_models(self.folder / "repository", ["warmup_helper", "model-v1", "text-encoder"])
        self.s3 = self._stack.enter_context(s3_server(self.folder / "moto.log"))
        self.s3.upload(self.folder / "repository")
        self.shown[self.s3.endpoint.removeprefix("http://")] = "localhost:9000"

    def start_server(self) -> None:
        from live_server import serving

        self.server = self._stack.enter_context(
            serving(self.s3.url(), self.folder / "server", extra_env=self.s3.environment)
        )
        self.shown.update({self.server.http_url: SHOWN_HTTP, self.server.grpc_url: SHOWN_GRPC})


SCENARIOS: Dict[str, Callable[[pathlib.Path], Scenario]] = {
    "make-run": MakeRun,
    "own": OwnRepository,
    "traffic": Traffic,
    "deploy": Deploy,
    "replicas": Replicas,
    "restricted": Restricted,
    "none-mode": NoneMode,
    "s3": ObjectStorage,
}


def write_file(scenario: Scenario, block: Block) -> None:
    """A file block's content, into the scenario's folder."""
    path = scenario.folder / block.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.content)


def run_command(scenario: Scenario, command: str) -> List[str]:
    """What ``command`` printed (stdout and stderr as they came), in the docs' terms."""
    environment = dict(os.environ)
    # The package's commands, as a user who installed it has them.
    environment["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["COLUMNS"] = "200"
    # Both streams in one, in the order a terminal shows them.
    environment["PYTHONUNBUFFERED"] = "1"
    environment.update(scenario.environment)
    finished = subprocess.run(
        ["bash", "-c", scenario.command_line(command).replace("\\\n", " ")],
        cwd=scenario.cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    printed = finished.stdout.splitlines()
    return [scenario.output_line(line) for line in printed]


@contextlib.contextmanager
def scenarios(workdir: pathlib.Path) -> Iterator[Dict[str, Scenario]]:
    """Every scenario, set up on first use; all closed at the end."""
    made: Dict[str, Scenario] = {}

    class Lazy(dict):
        def __missing__(self, name):
            scenario = SCENARIOS[name](workdir / name)
            scenario.folder.mkdir(parents=True, exist_ok=True)
            scenario.setup()
            made[name] = self[name] = scenario
            return scenario

    try:
        yield Lazy()
    finally:
        for scenario in made.values():
            scenario.close()


def rewrite(blocks: List[Block], outputs: Dict[int, List[List[str]]]) -> None:
    """Put what each block's commands printed into the docs."""
    by_path: Dict[pathlib.Path, List[int]] = {}
    for number, block in enumerate(blocks):
        by_path.setdefault(block.path, []).append(number)
    for path, numbers in by_path.items():
        numbers = [number for number in numbers if blocks[number].file is None]
        lines = path.read_text().splitlines()
        for number in sorted(numbers, key=lambda at: blocks[at].start, reverse=True):
            block = blocks[number]
            indent = lines[block.start][: len(lines[block.start]) - len(lines[block.start].lstrip())]
            body = []
            for (command, _), printed in zip(block.commands, outputs[number]):
                body.append("$ " + command.replace("\n", "\n" + indent))
                body.extend(printed)
            lines[block.start + 1 : block.end] = [indent + line if line else line for line in body]
        path.write_text("\n".join(lines) + "\n")
