"""Make Triton's trace files valid JSON where Triton writes text raw.

tritonserver's trace writer (server ``src/tracer.cc``, 2.51 and main alike)
writes two kinds of value into its JSON without escaping them:

* a tensor's ``data``: BYTES elements as ``\\"<the bytes>\\"`` joined by
  ``,`` (a string holding a quote, a backslash, a newline or a bracket
  breaks the JSON), and INT8/UINT8 elements as one raw character each;
* a request's ``request_id``, as the client sent it.

A tensor record is always ``{"id":N,"activity":"...","tensor":{"name":"...",
"data":"<DATA>","shape":"<dims>","dtype":"<DTYPE>"}}``: the data comes
before the shape and dtype that say how to read it. ``RawTextReader`` wraps
the file and hands ijson the same records with those values escaped, so the
stream parser never sees Triton's broken JSON. The end of a data value is the
first ``","shape":"<dims>","dtype":"<DTYPE>"}}`` after it whose dims and dtype
account for the text before it (a BYTES value runs from ``\\"`` to ``\\"``,
an INT8 value of N elements is 2N-1 characters long); a string that holds
that very pattern could still fool it, nothing short of it does.

A value's text comes out as Latin-1 characters, one per byte Triton wrote,
so ``text.encode("latin-1")`` gives those bytes back (``raw_bytes``).
"""

import json
import re
from typing import BinaryIO, Callable, Optional, Tuple

# The values Triton writes raw, found by the key in front of them.
_RAW_VALUE_START = re.compile(rb'"(data|request_id)":"')
_LONGEST_START = len(b'"request_id":"')

# What follows a tensor's data: its shape and dtype, then the two closing braces.
_DATA_END_START = b'","shape":"'
_DATA_END = re.compile(rb'","shape":"([0-9,]*)","dtype":"([A-Z0-9]{2,6})"\}\}')
# What follows a request id: an optional parent id, the record's brace, then
# the next record or the end of the array.
_REQUEST_ID_END = re.compile(rb'"(,"parent_id":[0-9]+)?\}(,\{"id":|\])')
_REQUEST_ID_END_AT_EOF = re.compile(rb'"(,"parent_id":[0-9]+)?\}\s*$')
# Longer than any end above with a shape of up to a dozen large dims.
_LONGEST_END = 256
# Bytes that cannot stand in a JSON string as they are.
_NEEDS_ESCAPING = re.compile(rb'[\x00-\x1f"\\\x80-\xff]')

TRITON_DTYPES = frozenset(
    ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32",
     "FP64", "BYTES")
)
# Element types Triton writes as one raw character each.
RAW_CHARACTER_DTYPES = frozenset(("INT8", "UINT8"))
# Triton writes no values for these (server src/tracer.cc).
NO_VALUE_DTYPES = frozenset(("FP16", "BF16"))
# Triton writes each BYTES element between these.
BYTES_QUOTE = b'\\"'

# A data value longer than this without its end is a broken file, not a tensor:
# without the bound the reader would hold the rest of the file in memory.
DEFAULT_MAX_VALUE_BYTES = 512 * 1024 * 1024
_CHUNK_BYTES = 1 << 20


class RawTextError(ValueError):
    """A raw value that does not end the way Triton ends it."""


def raw_bytes(text: str) -> bytes:
    """The bytes Triton wrote for a value that ``RawTextReader`` passed on."""
    return text.encode("latin-1")


def element_count(shape: bytes) -> int:
    count = 1
    for dim in shape.split(b","):
        if dim:
            count *= int(dim)
    return count


def data_fits(raw: bytes, start: int, end: int, shape: bytes, dtype: bytes) -> bool:
    """Whether ``raw[start:end]`` can be the whole value Triton wrote for a
    tensor of this shape and dtype (so its end was found, not a look-alike
    inside it). Takes positions so that a large numeric value is not copied."""
    name = dtype.decode("ascii")
    if name not in TRITON_DTYPES:
        return False
    count = element_count(shape)
    if name in NO_VALUE_DTYPES or count == 0:
        return end == start
    if name in RAW_CHARACTER_DTYPES:
        return end - start == 2 * count - 1 and raw[start + 1 : end : 2] == b"," * (count - 1)
    if name == "BYTES":
        quote = len(BYTES_QUOTE)
        return (
            end - start >= 2 * quote
            and raw[start : start + quote] == BYTES_QUOTE
            and raw[end - quote : end] == BYTES_QUOTE
        )
    # Numbers and booleans never hold a quote.
    return raw.find(b'"', start, end) == -1


def needs_escaping(dtype: bytes) -> bool:
    """Whether a data value of this dtype may hold what JSON must escape:
    numbers and booleans are digits, signs, dots and letters only, so a
    gigabyte of them is passed on without a scan."""
    return dtype in (b"BYTES", b"INT8", b"UINT8")


def _escaped(value: bytes) -> bytes:
    if _NEEDS_ESCAPING.search(value) is None:
        return value
    # Latin-1 maps each byte to one character; json.dumps escapes what JSON
    # needs and writes the rest as \u00XX, so ijson hands back those bytes.
    return json.dumps(value.decode("latin-1"))[1:-1].encode("ascii")


class RawTextReader:
    """A binary trace file whose ``read`` gives JSON: the values Triton
    writes raw arrive escaped.

    Args:
        handle: the trace file, opened in binary mode.
        on_read: called with the number of bytes read from the file.
        max_value_bytes: a raw value longer than this is a broken file.
        chunk_bytes: how much of the file one read takes.

    Attributes:
        offset: bytes read from the file so far.
        values_escaped: values that needed escaping.
    """

    def __init__(
        self,
        handle: BinaryIO,
        on_read: Callable[[int], None] = lambda size: None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        chunk_bytes: int = _CHUNK_BYTES,
    ):
        self._handle = handle
        self._chunk_bytes = chunk_bytes
        self._on_read = on_read
        self._max_value_bytes = max_value_bytes
        # Read from the file, not yet settled; _position: where settling goes on.
        self._raw = bytearray()
        self._position = 0
        # Settled JSON, handed on from _ready_position.
        self._ready = bytearray()
        self._ready_position = 0
        self._eof = False
        # Inside a raw value: which one, and where in _raw the search for
        # its end goes on.
        self._inside: Optional[bytes] = None
        self._search_from = 0
        self.offset = 0
        self.values_escaped = 0

    @property
    def at_end(self) -> bool:
        return self._eof and self._ready_position >= len(self._ready) and not self._raw

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of JSON (all there is with -1); b"" at the end."""
        while not self._eof and (size < 0 or self._ready_position >= len(self._ready)):
            self._fill()
        end = len(self._ready) if size < 0 else min(self._ready_position + size, len(self._ready))
        out = bytes(self._ready[self._ready_position : end])
        self._ready_position = end
        if end == len(self._ready):
            self._ready = bytearray()
            self._ready_position = 0
        return out

    def _fill(self) -> None:
        chunk = self._handle.read(self._chunk_bytes)
        self.offset += len(chunk)
        self._on_read(len(chunk))
        if chunk:
            self._raw += chunk
        else:
            self._eof = True
        while self._step():
            pass
        # One move per chunk: deleting each settled record's bytes from the
        # front would copy the buffer once per record.
        del self._raw[: self._position]
        self._search_from -= self._position
        self._position = 0
        if self._eof and self._raw:
            # The file ends inside a raw value (a killed server): hand on what
            # is there, escaped, and let the JSON parser see the cut.
            self._ready += _escaped(bytes(self._raw)) if self._inside else self._raw
            self._raw = bytearray()

    def _step(self) -> bool:
        """Settle what can be settled of ``_raw``; False when more of the
        file is needed."""
        raw, position = self._raw, self._position
        if self._inside is None:
            found = _RAW_VALUE_START.search(raw, position)
            if found is None:
                # Keep a tail that may hold the start of a key cut by the chunk.
                keep = 0 if self._eof else _LONGEST_START - 1
                settled = max(len(raw) - keep, position)
                with memoryview(raw) as view:
                    self._ready += view[position:settled]
                self._position = settled
                return False
            with memoryview(raw) as view:
                self._ready += view[position : found.end()]
            self._position = found.end()
            self._inside = found.group(1)
            self._search_from = self._position
            return True
        found = self._find_end()
        if found is None:
            if len(raw) - position > self._max_value_bytes:
                raise RawTextError(
                    f"a {self._inside.decode()} value runs on for more than {self._max_value_bytes} bytes "
                    f"without the end Triton writes after it, near byte {self.offset - len(raw) + position}"
                )
            return False
        end, may_need_escaping = found
        if may_need_escaping and _NEEDS_ESCAPING.search(raw, position, end) is not None:
            self.values_escaped += 1
            self._ready += _escaped(bytes(raw[position:end]))
        else:
            with memoryview(raw) as view:
                self._ready += view[position:end]
        self._position = end
        self._inside = None
        return True

    def _find_end(self) -> Optional[Tuple[int, bool]]:
        """Where the raw value at ``_position`` ends and whether it may need
        escaping; None when the file read so far does not hold its end yet."""
        raw, start = self._raw, self._position
        search_from = max(self._search_from, start)
        if self._inside == b"data":
            while True:
                # A literal find runs at memory speed over large numeric values.
                found = raw.find(_DATA_END_START, search_from)
                if found < 0:
                    break
                match = _DATA_END.match(raw, found)
                if match is None and len(raw) - found < _LONGEST_END and not self._eof:
                    break  # the end may be cut by the chunk: wait for more
                if match is not None and data_fits(raw, start, found, match.group(1), match.group(2)):
                    return found, needs_escaping(match.group(2))
                search_from = found + 1
        else:
            match = _REQUEST_ID_END.search(raw, search_from)
            if match is None and self._eof:
                match = _REQUEST_ID_END_AT_EOF.search(raw, start)
            if match is not None:
                return match.start(), True
        # An end cut by the chunk starts within its longest length of the tail.
        self._search_from = max(len(raw) - _LONGEST_END, start, search_from if self._inside == b"data" else start)
        return None
