"""Run the real tritonserver from the nvidia-pytriton wheel on this machine."""

from triton_warmup.embedded.server import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_READY_TIMEOUT_S,
    HELPER_MODEL,
    EmbeddedTriton,
    TritonNotFoundError,
    TritonStartError,
    free_port,
)

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_READY_TIMEOUT_S",
    "HELPER_MODEL",
    "EmbeddedTriton",
    "TritonNotFoundError",
    "TritonStartError",
    "free_port",
]
