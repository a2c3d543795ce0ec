"""Fuzzing the helper over HTTP and gRPC with hypothesis.

Every generated request is wrong in one known way. Each must get an error
that names the offending input, with code INVALID_ARG or NOT_FOUND; the
server stays live; the repository stays byte-identical.

FUZZ_EXAMPLES sets the cases per protocol (default 260, so 520 in all).
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from live_server import client_for, repository_snapshot, send_warmup, warmup_inputs
from triton_warmup.helper.request import REQUEST_INPUTS

EXAMPLES_PER_PROTOCOL = int(os.environ.get("FUZZ_EXAMPLES", "260"))
# Server start plus a few ms per case.
MODULE_TIMEOUT_S = 120 + EXAMPLES_PER_PROTOCOL

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(MODULE_TIMEOUT_S)]

# The shape inputs; PLAN is fuzzed by the unit tests of the plan document.
REQUIRED_INPUTS = ("MODELS", "GROUP_SIZE_MIN", "GROUP_SIZE_MAX")
INPUTS = REQUIRED_INPUTS + ("FEATURE_DIMS", "BATCH_SIZES")
INT64_MAX = 2**63 - 1
# model-v1: one sample of group g at batch 1 holds g * (64 * 4 + 8) bytes, so
# from this group size on a single sample is above the default 64 MiB cap.
GROUP_ABOVE_BYTE_CAP = 300_000

ACCEPTED_STATUS = {
    "http": {"400", "404"},
    "grpc": {"StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"},
}


@pytest.fixture(scope="module")
def server(start_server):
    return start_server("fuzz")


def base():
    return warmup_inputs(["model-v1"], 1, 2)


def int64s(values):
    return np.array(values, dtype=np.int64)


def names_array(names):
    return np.array(list(names), dtype=np.object_)


# Names that are not models in the repository: anything hypothesis invents,
# minus the real folders (the server's repository has only these).
REAL_FOLDERS = {"model-v1", "model-v2", "model-v3"}
unknown_names = st.text(min_size=0, max_size=300).filter(lambda name: name not in REAL_FOLDERS)
non_utf8 = st.binary(min_size=1, max_size=40).filter(lambda raw: not _is_utf8(raw))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def missing_input(draw):
    name = draw(st.sampled_from(REQUIRED_INPUTS))
    inputs = base()
    del inputs[name]
    return inputs, {name}


@st.composite
def extra_input(draw):
    name = draw(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True).filter(lambda n: n not in REQUEST_INPUTS))
    return {**base(), name: int64s([1])}, {name}


WRONG_DTYPES = [np.float32, np.float64, np.int32, np.int8, np.uint64, np.bool_, np.object_]


@st.composite
def wrong_dtype(draw):
    name = draw(st.sampled_from(INPUTS))
    expected = np.object_ if name == "MODELS" else np.int64
    dtype = draw(st.sampled_from([dtype for dtype in WRONG_DTYPES if dtype is not expected]))
    if dtype is np.object_:
        array = names_array([b"1"])
    else:
        array = np.ones(1, dtype=dtype)
    return {**base(), name: array}, {name}


@st.composite
def wrong_shape(draw):
    name = draw(st.sampled_from(INPUTS))
    inputs = base()
    if name in ("GROUP_SIZE_MIN", "GROUP_SIZE_MAX"):
        shape = draw(st.sampled_from([(0,), (2,), (5,), (1, 1)]))
        inputs[name] = np.ones(shape, dtype=np.int64)
    elif name == "MODELS":
        inputs[name] = names_array([b"model-v1"]).reshape(1, 1)
    else:
        inputs[name] = np.ones((1, draw(st.integers(1, 3))), dtype=np.int64)
    return inputs, {name}


@st.composite
def empty_list(draw):
    name = draw(st.sampled_from(["MODELS", "FEATURE_DIMS", "BATCH_SIZES"]))
    array = names_array([]) if name == "MODELS" else int64s([])
    return {**base(), name: array}, {name}


@st.composite
def huge_list(draw):
    name = draw(st.sampled_from(["MODELS", "FEATURE_DIMS", "BATCH_SIZES"]))
    size = draw(st.integers(1_000, 20_000))
    if name == "MODELS":
        array = names_array(f"no-such-model-{index}".encode() for index in range(size))
    else:
        array = int64s(range(1, size + 1))
    return {**base(), name: array}, {name}


@st.composite
def bad_size(draw):
    """Negative, zero and enormous sizes."""
    name = draw(st.sampled_from(["GROUP_SIZE_MIN", "GROUP_SIZE_MAX", "FEATURE_DIMS", "BATCH_SIZES", "ONE_HUGE_GROUP"]))
    inputs = base()
    if name == "ONE_HUGE_GROUP":
        size = draw(st.integers(GROUP_ABOVE_BYTE_CAP, INT64_MAX))
        inputs["GROUP_SIZE_MIN"] = inputs["GROUP_SIZE_MAX"] = int64s([size])
        return inputs, {"GROUP_SIZE_MAX"}
    if name == "GROUP_SIZE_MIN":
        # Below 1, or above GROUP_SIZE_MAX.
        value = draw(st.one_of(st.integers(-(2**63), 0), st.integers(3, INT64_MAX)))
    elif name == "GROUP_SIZE_MAX":
        # Below 1, or so many group sizes that the plan is above its cap.
        value = draw(st.one_of(st.integers(-(2**63), 0), st.integers(1025, INT64_MAX)))
    elif name == "FEATURE_DIMS":
        # model-v1 fixes its feature dimension at 64.
        value = draw(st.integers(-(2**63), INT64_MAX).filter(lambda v: v not in (0, 64)))
    else:
        # model-v1's max_batch_size is 8.
        value = draw(st.one_of(st.integers(-(2**63), 0), st.integers(9, INT64_MAX)))
    inputs[name] = int64s([value])
    return inputs, {name}


@st.composite
def bad_names(draw):
    kind = draw(st.sampled_from(["unknown", "non-utf8", "duplicate", "dangerous"]))
    if kind == "unknown":
        names = [draw(unknown_names).encode("utf-8", "surrogatepass")]
    elif kind == "non-utf8":
        names = [b"model-v1", draw(non_utf8)]
    elif kind == "duplicate":
        name = draw(st.sampled_from(sorted(REAL_FOLDERS)) | unknown_names).encode("utf-8", "surrogatepass")
        names = [name, b"model-v2", name]
    else:
        names = [
            draw(
                st.sampled_from(
                    ["..", ".", "/etc", "../model_repository/model-v1", "model-v1/1", "warmup_helper",
                     ".hidden", "model-v1\x00", "x" * 256, "model-v1\\..\\x"]
                )
            ).encode()
        ]
    inputs = {**base(), "MODELS": names_array(names)}
    return inputs, {"MODELS"}


bad_requests = st.one_of(
    missing_input(), extra_input(), wrong_dtype(), wrong_shape(), empty_list(), huge_list(), bad_size(), bad_names()
)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_fuzzed_bad_requests_are_refused_naming_the_input(server, protocol):
    before = repository_snapshot(server.model_repository)
    cases = []

    @settings(
        max_examples=EXAMPLES_PER_PROTOCOL,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(case=bad_requests)
    def refused(case):
        inputs, fields = case
        cases.append(sorted(fields))
        with pytest.raises(InferenceServerException) as caught:
            send_warmup(server, protocol, inputs)
        message = caught.value.message()
        assert any(field in message for field in fields), (fields, message)
        assert caught.value.status() in ACCEPTED_STATUS[protocol], (caught.value.status(), message)
        assert server.is_running()

    refused()
    # The battery's size is a figure in the README: make sure it ran in full.
    assert len(cases) >= EXAMPLES_PER_PROTOCOL
    print(f"{protocol}: {len(cases)} fuzzed requests refused")
    with client_for(server, protocol) as client:
        assert client.is_server_live()
    assert repository_snapshot(server.model_repository) == before
