"""Errors the helper keeps after their ``except`` block, made safe to keep.

A kept exception's traceback holds its frames, and each frame its callers,
up to the helper's ``execute``, whose locals hold Triton's request (and, in
a preflight run, the request's BLS objects). Where the exception also sits
in a reference cycle (a cache in an object those frames hold, a thread
pool's work item and its future), it is freed only by the interpreter's
last collection, in the stub's exit, after the stub's shared memory is gone:
the stub then crashes (SIGSEGV in libc, in ``dmesg`` only; docs/safety.md).
"""


def without_frames(error: BaseException) -> BaseException:
    """``error`` with no traceback and no chained exception; its message and type stay."""
    error.__traceback__ = None
    error.__context__ = None
    error.__cause__ = None
    return error
