"""How the helper asks Triton to load a model.

Two ways reach the same Model Loading API inside the server:

* ``bls``: ``pb_utils.load_model`` from the helper's stub.
* ``http``: Triton's own model-repository endpoint
  (``POST /v2/repository/models/<name>/load``) on this server's HTTP port.

Why not always ``pb_utils.load_model``: in the Python backend shipped with
the Triton of nvidia-pytriton 0.7.0, a ``load_model`` call that FAILS can
abort the whole server (``boost::interprocess::lock_exception``, signal 6):
the backend frees the error string in shared memory while the stub may still
be reading it. Successful loads are fine. A load through the HTTP endpoint
does the same work (same load, same warmup, same READY) without that path, so
``auto`` (the default) uses it whenever it can find this server's HTTP port,
and falls back to ``bls`` otherwise. See docs/safety.md, "Known Triton issues".

Both ways take an optional ``config`` (JSON): Triton then loads the model
with it instead of the file's, which is how the helper warms a model whose
``config.pbtxt`` it cannot write.

When the server restricts its model-repository endpoints to clients that send
a header (``--http-restricted-api=model-repository:<key>=<value>``), the
helper finds that header on the server's command line and sends it too.

This module is pure Python (stdlib only) so that it is unit-testable.
"""

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Sequence, Tuple

LOAD_API_CHOICES = ("auto", "http", "bls")
DEFAULT_HTTP_PORT = 8000


class ModelLoadError(RuntimeError):
    """Triton answered that the model did not load."""


def _flag_values(argv: List[str], flag: str) -> List[str]:
    """Values of ``--flag=value`` and ``--flag value`` in ``argv``."""
    values = []
    for index, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == flag and index + 1 < len(argv):
            values.append(argv[index + 1])
    return values


def http_url_from_argv(argv: List[str]) -> Optional[str]:
    """The ``host:port`` of a tritonserver's HTTP endpoint, from its command line.

    Returns ``None`` when the server runs with ``--allow-http=false``.
    """
    allow = _flag_values(argv, "--allow-http")
    if allow and allow[-1].lower() in ("false", "0", "no", "off"):
        return None
    ports = _flag_values(argv, "--http-port")
    port = int(ports[-1]) if ports else DEFAULT_HTTP_PORT
    addresses = _flag_values(argv, "--http-address")
    address = addresses[-1] if addresses else "0.0.0.0"
    # A server listening on every address is reached on the loopback.
    if address in ("0.0.0.0", "::", ""):
        address = "127.0.0.1"
    if ":" in address:
        address = f"[{address}]"
    return f"{address}:{port}"


def restricted_headers_from_argv(argv: List[str]) -> Dict[str, str]:
    """Headers that ``--http-restricted-api=<apis>:<key>=<value>`` flags require.

    Every such header is returned, whatever APIs it guards: the helper calls
    the model-repository and health endpoints, and an extra header is harmless.
    """
    headers = {}
    for value in _flag_values(argv, "--http-restricted-api"):
        _, _, setting = value.partition(":")
        key, separator, header_value = setting.partition("=")
        if separator and key:
            headers[key] = header_value
    return headers


def trace_file_from_argv(argv: List[str]) -> Optional[str]:
    """The trace file of ``--trace-config triton,file=PATH`` (or the older
    ``--trace-file=PATH``), relative to nothing: Triton takes it as given.
    ``None`` when the server was started without one."""
    files = [
        value.split("=", 1)[1]
        for value in _flag_values(argv, "--trace-config")
        if value.startswith("triton,file=") or value.startswith("file=")
    ]
    files += _flag_values(argv, "--trace-file")
    return files[-1] if files else None


def model_control_mode_from_argv(argv: Optional[List[str]]) -> Optional[str]:
    """The server's ``--model-control-mode`` (Triton's default is ``none``);
    ``None`` when the command line is unknown."""
    if argv is None:
        return None
    modes = _flag_values(argv, "--model-control-mode")
    return modes[-1].lower() if modes else "none"


def choose_warmup_mode(requested: str, server_mode: Optional[str]) -> Tuple[str, str]:
    """``load`` or ``requests`` for a request's MODE, and why.

    ``auto`` loads on a server in explicit model-control mode (an unknown
    mode counts as explicit: the helper is usually loaded with
    ``--load-model`` there) and sends requests otherwise, because Triton
    refuses the Model Loading API in ``poll`` and ``none`` modes.

    Raises:
        ValueError: ``load`` asked of a server that cannot load on request.
    """
    can_load = server_mode in (None, "explicit")
    described = f"the server runs in {server_mode or 'an unknown'} model-control mode"
    if requested == "load":
        if not can_load:
            raise ValueError(
                f"load needs a server in explicit model-control mode; {described}, where "
                "Triton refuses the Model Loading API: use MODE requests"
            )
        return "load", f"MODE load; {described}"
    if requested == "requests":
        return "requests", f"MODE requests; {described}"
    if can_load:
        return "load", f"MODE auto; {described}, so the Model Loading API warms before READY"
    return "requests", (
        f"MODE auto; {described}, where Triton refuses the Model Loading API, so the "
        "helper sent inference requests to the loaded models"
    )


def server_argv(pid: int) -> List[str]:
    """The command line of process ``pid`` (the stub's parent is tritonserver)."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return [part.decode("utf-8", "replace") for part in cmdline.read().split(b"\0") if part]


def load_body(config: Optional[str] = None, files: Optional[Dict[str, bytes]] = None) -> List[bytes]:
    """The JSON body of a load request, as parts to send one after another.

    A model's files go base64-encoded inside the JSON. Each is encoded
    straight to bytes and sent as its own part: no JSON escaping pass over
    it and no joined copy of the whole body (a 20 MB model took 0.07-0.17 s
    to encode through ``json.dumps`` alone).
    """
    fields = [] if config is None else [[b'"config":', json.dumps(config).encode()]]
    for name, content in (files or {}).items():
        fields.append([json.dumps(name).encode(), b':"', base64.b64encode(content), b'"'])
    if not fields:
        return []
    parts = [b'{"parameters":{']
    for index, field in enumerate(fields):
        parts.extend(([b","] if index else []) + field)
    parts.append(b"}}")
    return parts


def process_start_time(pid: int) -> float:
    """When process ``pid`` started, in seconds since the epoch (from /proc)."""
    with open(f"/proc/{pid}/stat", "rb") as stat_file:
        # The command name in parentheses may hold spaces; fields follow it.
        fields = stat_file.read().rsplit(b")", 1)[1].split()
    started_ticks = int(fields[19])
    with open("/proc/stat", "rb") as system_stat:
        boot = next(int(line.split()[1]) for line in system_stat if line.startswith(b"btime "))
    return boot + started_ticks / os.sysconf("SC_CLK_TCK")


def _triton_error(error: urllib.error.HTTPError) -> "ModelLoadError":
    """Triton's own message of an HTTP error answer (its JSON ``error``)."""
    text = error.read().decode("utf-8", "replace")
    try:
        message = json.loads(text).get("error", text)
    except ValueError:
        message = text
    return ModelLoadError(message or f"HTTP {error.code}")


class HttpModelControl:
    """Load and probe models through Triton's HTTP endpoints.

    Args:
        url: ``host:port`` of the server's HTTP endpoint.
        timeout_s: per-call timeout; ``None`` waits as long as the load takes.
        headers: sent with every call (the server's restricted-API headers).
    """

    def __init__(
        self, url: str, timeout_s: Optional[float] = None, headers: Optional[Dict[str, str]] = None
    ):
        self.url = url
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.description = f"HTTP model-repository endpoint {url}" + (
            f" (with restricted-API header {', '.join(sorted(self.headers))})" if self.headers else ""
        )

    def _post(self, path: str, body: Sequence[bytes] = ()) -> None:
        """POST the concatenation of ``body``'s parts (sent one by one, never joined)."""
        headers = dict(self.headers)
        if body:
            headers.update({"Content-Type": "application/json", "Content-Length": str(sum(map(len, body)))})
        request = urllib.request.Request(
            f"http://{self.url}{path}", data=iter(body) if body else b"", method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s):
                return
        except urllib.error.HTTPError as error:
            raise _triton_error(error) from None

    @staticmethod
    def _quoted(model_name: str) -> str:
        return urllib.parse.quote(model_name, safe="")

    def load(
        self, model_name: str, config: Optional[str] = None, files: Optional[Dict[str, bytes]] = None
    ) -> None:
        """Block until Triton has loaded the model (warmup included).

        Args:
            config: a model config as JSON to load with instead of the file's.
            files: ``{"file:<path in the model folder>": content}``: Triton
                loads the model from these instead of its repository (a
                ``config`` is then required).

        Raises:
            ModelLoadError: with Triton's own message when the load fails.
            OSError: when the endpoint cannot be reached at all.
        """
        self._post(f"/v2/repository/models/{self._quoted(model_name)}/load", load_body(config, files))

    def unload(self, model_name: str) -> None:
        """Ask Triton to unload the model (it returns before the unload ends)."""
        self._post(f"/v2/repository/models/{self._quoted(model_name)}/unload")

    def served_config(self, model_name: str) -> Optional[Dict]:
        """The config Triton serves the model with, as JSON; ``None`` if it cannot tell."""
        request = urllib.request.Request(
            f"http://{self.url}/v2/models/{self._quoted(model_name)}/config", headers=self.headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def server_live(self) -> bool:
        """Whether the server answers ``/v2/health/live`` with 200: its
        start-up is over (core's ``IsLive`` is true in state SERVER_READY,
        whatever its models' states; the endpoint listens only after
        start-up). ``/v2/health/ready`` would stay 400 for good after a
        model of the command line failed to load."""
        request = urllib.request.Request(f"http://{self.url}/v2/health/live", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status == 200
        except (OSError, ValueError):
            return False

    def server_stopping(self) -> bool:
        """Whether the server is going away: its endpoint refuses the
        connection (Triton stops listening first on SIGTERM), or its
        liveness says no. A slow answer is not taken for one: a busy server
        is still a server."""
        request = urllib.request.Request(f"http://{self.url}/v2/health/live", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=2):
                return False
        except urllib.error.HTTPError:
            return True
        except urllib.error.URLError as error:
            return isinstance(error.reason, (ConnectionRefusedError, ConnectionResetError))
        except (ConnectionRefusedError, ConnectionResetError):
            return True
        except OSError:
            return False

    def _json(self, path: str, body: Optional[Dict] = None, timeout_s: float = 10.0):
        """GET ``path`` (or POST ``body`` as JSON) and return the answer's JSON.

        Raises:
            ModelLoadError: Triton answered with an error (its message).
            OSError: the endpoint cannot be reached.
        """
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers, **({"Content-Type": "application/json"} if data else {}))
        request = urllib.request.Request(f"http://{self.url}{path}", data=data, headers=headers,
                                         method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise _triton_error(error) from None

    def server_metadata(self) -> Dict:
        """``/v2``: the server's name, version and extensions."""
        return self._json("/v2")

    def repository_index(self) -> List[Dict]:
        """Triton's repository index: name, version, state and reason per model."""
        return self._json("/v2/repository/index", body={})

    def model_config(self, model_name: str) -> Dict:
        """The config Triton serves the model with, as JSON."""
        return self._json(f"/v2/models/{self._quoted(model_name)}/config")

    def trace_setting(self, model_name: Optional[str] = None) -> Dict:
        """The server's trace setting, or the one a model runs with (its
        own where it has one, else the server's)."""
        return self._json(f"/v2/models/{self._quoted(model_name)}/trace/setting" if model_name else "/v2/trace/setting")

    def update_trace_setting(self, model_name: str, setting: Dict) -> Dict:
        """Change a model's own trace setting (a ``None`` value puts a key
        back to the server's); Triton's answer is the setting it now runs."""
        return self._json(f"/v2/models/{self._quoted(model_name)}/trace/setting", body=setting)

    def is_ready(self, model_name: str) -> bool:
        request = urllib.request.Request(
            f"http://{self.url}/v2/models/{self._quoted(model_name)}/ready", headers=self.headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return False


def choose_model_control(
    load_api: str,
    http_url: Optional[str],
    bls_control,
    headers: Optional[Dict[str, str]] = None,
):
    """The model control the helper uses.

    Args:
        load_api: ``auto``, ``http`` or ``bls``.
        http_url: this server's HTTP ``host:port``, or ``None`` if unknown.
        bls_control: an object with the same methods built on ``pb_utils``.
        headers: for the HTTP way: the server's restricted-API headers.
    """
    if load_api not in LOAD_API_CHOICES:
        raise ValueError(f"load_api must be one of {LOAD_API_CHOICES}, got {load_api!r}")
    if load_api == "bls" or (load_api == "auto" and http_url is None):
        return bls_control
    if http_url is None:
        raise ValueError("load_api is 'http' but this server's HTTP endpoint is unknown")
    return HttpModelControl(http_url, headers=headers)
