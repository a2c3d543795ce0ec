"""Triton's native PyTorch backend, built from source for the embedded server.

``build()`` returns the cached ``libtriton_pytorch.so`` for the sources and
toolchain at hand, building it first when the cache lacks it; README.md beside
this file tells how, and what differs from NVIDIA's image.
"""

from triton_warmup.libtorch_backend.source_build import (
    LIBRARY_NAME,
    BuildError,
    BuiltBackend,
    build,
    source_dir_from_environment,
)

__all__ = ["LIBRARY_NAME", "BuildError", "BuiltBackend", "build", "source_dir_from_environment"]
