"""Warm TorchScript models on Triton Inference Server before they are READY.

``helper`` is the pure logic of the ``warmup_helper`` Python-backend model
(model_repository/warmup_helper/1/model.py is its Triton glue), ``report`` the
schema of what the helper answers, ``client`` the command-line tools, and
``embedded`` with ``libtorch_backend`` the real tritonserver that this
repository's tests and ``make run`` start on a machine without NVIDIA's image.
"""

# The helper's model name in the shipped repository; every client flag and
# every check that a request does not name the helper itself starts from it.
HELPER_MODEL = "warmup_helper"
