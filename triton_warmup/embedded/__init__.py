"""Run the real tritonserver from the nvidia-pytriton wheel on this machine."""

from triton_warmup.embedded.server import (
    AUTO_COMPLETE_AUTO,
    AUTO_COMPLETE_CHOICES,
    AUTO_COMPLETE_KEEP,
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
    "AUTO_COMPLETE_AUTO",
    "AUTO_COMPLETE_CHOICES",
    "AUTO_COMPLETE_KEEP",
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
