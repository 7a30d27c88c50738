"""Decode records with their float arrays as numpy arrays: the bulk reader replay uses.

fastavro builds one Python float per array item. A DecisionRecord's ``node_features`` (a float per
layer and feature) and ``distribution`` are most of its decode time (~40 µs a record) and most of the
objects a replay keeps alive. ``decode_arrays`` splits a record schema at its top-level fields of type
``array<float|double>`` and ``array<array<float|double>>``: fastavro decodes the runs of other fields
(a run of up to three strings and numbers is read in Python, cheaper than a fastavro call), numpy
reads those arrays straight from the message bytes.

Top-level arrays of strings, ints or longs (a DecisionRecord's ``feature_names``, ``layer_names``,
``kernels``, ``edge_source``, ``edge_target``) mostly repeat from record to record: the same feature
names always, a model's layer names and edges at every one of its decisions. Each such field keeps
the encodings it has decoded (bounded); a message whose bytes at that field start with one of them
has that value — Avro binary is self-delimiting, so equal leading bytes mean the same items and the
same length — and gets a fresh copy of the list without decoding. A DecisionRecord (15 layers):
``decode`` ~40 µs, ``decode_arrays`` ~11 µs (measured).

The value equals ``decode``'s except for the float arrays: ``array<float>`` becomes a 1-D float32 array,
``array<double>`` float64; a nested array becomes a 2-D array [rows, items] when its rows have one
length (shape (0, 0) when it has no rows), else a list of 1-D arrays. Messages written with an older
schema version (resolved against the current one) go through ``decode`` and are converted the same way.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np

from schemas.codec import Decoded, DecodeError, _Schema, read_body, registry, writer_of

_ITEM_TYPES = {"float": np.dtype("<f4"), "double": np.dtype("<f8")}
_NATIVE = {dtype: dtype.newbyteorder("=") for dtype in _ITEM_TYPES.values()}


def _native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in this machine's byte order (the arrays returned are copies in it)."""
    native = _NATIVE.get(dtype)
    return dtype.newbyteorder("=") if native is None else native


@dataclass(frozen=True)
class _Vector:
    name: str
    dtype: np.dtype
    nested: bool  # array<array<item>>

    def read(self, data: bytes, pos: int, buf: io.BytesIO, value: dict[str, Any]) -> int:
        value[self.name], pos = (read_matrix if self.nested else read_vector)(data, pos, self.dtype)
        return pos


@dataclass(frozen=True)
class _Run:
    """A run of ordinary fields, decoded by fastavro as one record."""

    schema: Any  # parsed by fastavro

    def read(self, data: bytes, pos: int, buf: io.BytesIO, value: dict[str, Any]) -> int:
        buf.seek(pos)
        value.update(fastavro.schemaless_reader(buf, self.schema, None))
        return buf.tell()


_DOUBLE, _FLOAT = struct.Struct("<d"), struct.Struct("<f")


class _Primitives:
    """A run of at most ``MAX_FIELDS`` fields of type string, bytes, ["null", "bytes"], int, long, double
    or float, read in Python: a fastavro call costs ~1 µs before it reads a field, more than reading a
    few such fields here (a DecisionRecord's ``value_estimate`` and ``gate``: 1.7 → 0.7 µs, measured)."""

    MAX_FIELDS = 3
    TYPES = ("string", "bytes", "null|bytes", "int", "long", "double", "float")

    def __init__(self, fields: list[dict]) -> None:
        self.fields = tuple((field["name"], primitive_kind(field)) for field in fields)

    def read(self, data: bytes, pos: int, buf: io.BytesIO, value: dict[str, Any]) -> int:
        for name, kind in self.fields:
            if kind == "null|bytes":
                branch, pos = read_long(data, pos)
                if branch == 0:
                    value[name] = None
                    continue
                if branch != 1:
                    raise ValueError(f"union branch {branch} of {name} at {pos}")
                kind = "bytes"
            if kind == "string" or kind == "bytes":
                size, pos = read_long(data, pos)
                end = pos + size
                if size < 0 or end > len(data):
                    raise ValueError(f"{kind} {name} of {size} bytes at {pos} runs past the body")
                value[name] = data[pos:end].decode() if kind == "string" else data[pos:end]
                pos = end
            elif kind == "double":
                value[name] = _DOUBLE.unpack_from(data, pos)[0]
                pos += 8
            elif kind == "float":
                value[name] = _FLOAT.unpack_from(data, pos)[0]
                pos += 4
            else:  # int, long
                value[name], pos = read_long(data, pos)
        return pos


class _Repeated:
    """A top-level array<string|int|long> field, with the encodings of it seen so far and their values.

    Indexed by their first ``_KEY_BYTES`` bytes; at most ``_MAX_SPANS`` are kept (then forgotten all
    at once), so a field that never repeats costs little more than decoding it."""

    _KEY_BYTES = 24
    _MAX_SPANS = 1024  # per field: a fleet's architectures, with room; bounds the memory kept

    def __init__(self, name: str, schema: Any) -> None:
        self.name = name
        self.schema = schema  # a one-field record, for fastavro
        self.spans: dict[bytes, list[tuple[bytes, list, int]]] = {}
        self.count = 0

    def read(self, data: bytes, pos: int, buf: io.BytesIO, value: dict[str, Any]) -> int:
        key = data[pos:pos + self._KEY_BYTES]
        seen = self.spans.get(key)
        if seen is not None:
            for span, items, size in seen:
                if data.startswith(span, pos):
                    value[self.name] = items.copy()
                    return pos + size
        buf.seek(pos)
        items = fastavro.schemaless_reader(buf, self.schema, None)[self.name]
        end = buf.tell()
        if self.count >= self._MAX_SPANS:
            self.spans.clear()
            self.count = 0
        self.spans.setdefault(key, []).append((data[pos:end], items, end - pos))
        self.count += 1
        value[self.name] = list(items)
        return end


class _Enums:
    """A top-level array<enum> field of at most 64 symbols. Each item is then a one-byte varint (twice
    its symbol's index), so a one-block array is its bytes: read with numpy, not item by item (a
    HealthBatch's ``seed_states`` holds every seed of every signal). Other layouts go to fastavro."""

    def __init__(self, name: str, symbols: list[str], schema: Any) -> None:
        self.name = name
        self.symbols = np.array(symbols, dtype=object)
        self.schema = schema  # a one-field record, for fastavro

    def read(self, data: bytes, pos: int, buf: io.BytesIO, value: dict[str, Any]) -> int:
        count, at = read_long(data, pos)
        if count == 0:
            value[self.name] = []
            return at
        end = at + count
        if count > 0 and end < len(data) and data[end] == 0:
            codes = np.frombuffer(data, np.uint8, count, at)
            # All even and below 2 * symbols: one-byte varints of valid indices, so exactly ``count`` items.
            if not (codes & 1).any() and int(codes.max()) < 2 * len(self.symbols):
                value[self.name] = self.symbols[codes >> 1].tolist()
                return end + 1
        buf.seek(pos)
        value[self.name] = fastavro.schemaless_reader(buf, self.schema, None)[self.name]
        return buf.tell()


_Step = _Run | _Primitives | _Vector | _Repeated | _Enums


def decode_arrays(data: bytes | None, lookup: bool = True) -> Decoded:
    """Like ``schemas.decode`` (same checks, same errors), with float arrays as numpy arrays."""
    writer, start = writer_of(data, lookup)
    assert data is not None  # writer_of raised otherwise
    return Decoded(writer.name, read_arrays(writer, data, start))


def read_arrays(writer: _Schema, data: bytes, start: int) -> dict[str, Any]:
    """``decode_arrays``'s value of a message whose writer schema the caller found already (its Avro
    body starts at ``start``): bulk readers skip the header lookup twice."""
    reader = registry().current.get(writer.name, writer)
    if reader is not writer:  # an older version: resolved by fastavro, then converted
        return _converted(writer.name, read_body(writer, data, start, reader))
    steps = _plans.get(writer.fingerprint, _UNPLANNED)
    if steps is _UNPLANNED:
        steps = _plan(writer)
    if steps is None:  # no float arrays: exactly what ``decode`` gives
        return read_body(writer, data, start, reader)
    value: dict[str, Any] = {}
    buf = io.BytesIO(data)
    pos = start
    try:
        for step in steps:
            pos = step.read(data, pos, buf, value)
    except Exception as exc:  # fastavro and the readers below raise many types on corrupt bodies
        raise DecodeError("bad_body", f"{writer.name} body does not decode: {type(exc).__name__}: {exc}") from None
    if pos != len(data):
        raise DecodeError("bad_body", f"{writer.name} body has {len(data) - pos} trailing bytes")
    return value


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro long (zig-zag varint) at ``pos``; returns it and the position after it."""
    byte = data[pos]
    if byte < 0x80:  # one byte: lengths, counts and small ints mostly are
        return (byte >> 1) ^ -(byte & 1), pos + 1
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError(f"varint longer than 10 bytes at {pos}")


def _block_count(data: bytes, pos: int) -> tuple[int, int]:
    """An array block's item count (a negative count is followed by the block's byte size)."""
    count, pos = read_long(data, pos)
    if count < 0:
        _size, pos = read_long(data, pos)
        count = -count
    return count, pos


def read_vector(data: bytes, pos: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """An Avro array of float/double at ``pos`` (any number of blocks) as a 1-D array (a copy)."""
    count, at = read_long(data, pos)
    if count > 0:  # fast path: one block, then the 0 that ends the array
        end = at + count * dtype.itemsize
        if end < len(data) and data[end] == 0:
            return np.frombuffer(data, dtype, count, at).astype(_native(dtype)), end + 1
    parts = []
    while True:
        count, pos = _block_count(data, pos)
        if count == 0:
            break
        parts.append(np.frombuffer(data, dtype, count, pos))
        pos += count * dtype.itemsize
    if len(parts) == 1:
        return parts[0].astype(_native(dtype)), pos
    return np.concatenate(parts).astype(_native(dtype)) if parts else np.zeros(0, _native(dtype)), pos


def read_matrix(data: bytes, pos: int, dtype: np.dtype) -> tuple[np.ndarray | list[np.ndarray], int]:
    """An Avro array of arrays of float/double: 2-D when rectangular, else a list of 1-D arrays.

    Fast path, the way fastavro and most writers lay it out (one outer block, every row one block
    of the same length): a strided view over the bytes, checked row by row with numpy."""
    fast = _uniform_rows(data, pos, dtype)
    if fast is not None:
        return fast
    rows = []
    while True:
        count, pos = _block_count(data, pos)
        if count == 0:
            break
        for _ in range(count):
            row, pos = read_vector(data, pos, dtype)
            rows.append(row)
    return _matrix(rows, dtype), pos


def _uniform_rows(data: bytes, pos: int, dtype: np.dtype) -> tuple[np.ndarray, int] | None:
    rows, first = read_long(data, pos)
    if rows <= 0:
        return None
    items, body = read_long(data, first)
    if items <= 0:
        return None
    head = body - first  # bytes of the row's item count
    stride = head + items * dtype.itemsize + 1  # count, items, the 0 that ends the row
    stop = first + rows * stride
    if stop >= len(data):
        return None
    # Byte columns of the rows, as strided slices: every row ends with a 0 block and starts with
    # the first row's count bytes (cheaper than numpy for rows of tens of bytes).
    if data[first + stride - 1:stop:stride].count(0) != rows:
        return None
    for k in range(first, body):
        if data[k:stop:stride].count(data[k]) != rows:
            return None
    end, after = read_long(data, stop)
    if end != 0:
        return None
    view = np.ndarray((rows, items), dtype, data, body, (stride, dtype.itemsize))
    return view.astype(_native(dtype)), after


def _matrix(rows: list, dtype: np.dtype) -> np.ndarray | list[np.ndarray]:
    if not rows:
        return np.zeros((0, 0), dtype.newbyteorder("="))
    if len({len(row) for row in rows}) == 1:
        return np.stack(rows)
    return rows


_UNPLANNED: Any = object()
_plans: dict[bytes, tuple[_Step, ...] | None] = {}


def _plan(writer: _Schema) -> tuple[_Step, ...] | None:
    """The decode steps of a record schema (cached), or None when it has no float arrays to split out."""
    if writer.fingerprint not in _plans:
        _plans[writer.fingerprint] = _steps_of(writer)
    return _plans[writer.fingerprint]


def _steps_of(writer: _Schema) -> tuple[_Step, ...] | None:
    raw = json.loads(writer.text)
    if raw.get("type") != "record":
        return None
    steps: list[_Step] = []
    run: list[dict] = []
    named: dict[str, Any] = {}  # named types defined in earlier runs, for references in later ones

    def record_of(fields: list[dict]) -> Any:
        part = {"type": "record", "name": f"{raw['name']}_part{len(steps)}", "fields": list(fields)}
        if raw.get("namespace"):
            part["namespace"] = raw["namespace"]
        return fastavro.parse_schema(part, named_schemas=named)

    def close_run() -> None:
        if run and len(run) <= _Primitives.MAX_FIELDS and all(primitive_kind(f) in _Primitives.TYPES for f in run):
            steps.append(_Primitives(run))
        elif run:
            steps.append(_Run(record_of(run)))
        run.clear()

    for field in raw["fields"]:
        vector = _vector_of(field)
        if vector is not None:
            close_run()
            steps.append(vector)
        elif _repeats(field):
            close_run()
            steps.append(_Repeated(field["name"], record_of([field])))
        elif _enum_symbols(field) is not None:
            close_run()
            steps.append(_Enums(field["name"], _enum_symbols(field), record_of([field])))
        else:
            run.append(field)
    close_run()
    if not any(isinstance(step, _Vector) for step in steps):
        return None
    return tuple(steps)


def primitive_kind(field: dict) -> str:
    """A field's type as ``_Primitives`` names it: a union's branches joined by '|'; '' for complex types."""
    kind = field["type"]
    if isinstance(kind, list) and all(isinstance(branch, str) for branch in kind):
        return "|".join(kind)
    return kind if isinstance(kind, str) else ""


def _vector_of(field: dict) -> _Vector | None:
    kind = field["type"]
    if not isinstance(kind, dict) or kind.get("type") != "array":
        return None
    items = kind["items"]
    if isinstance(items, str) and items in _ITEM_TYPES:
        return _Vector(field["name"], _ITEM_TYPES[items], nested=False)
    if isinstance(items, dict) and items.get("type") == "array" and items.get("items") in _ITEM_TYPES:
        return _Vector(field["name"], _ITEM_TYPES[items["items"]], nested=True)
    return None


def _repeats(field: dict) -> bool:
    kind = field["type"]
    return isinstance(kind, dict) and kind.get("type") == "array" and kind.get("items") in ("string", "int", "long")


def _enum_symbols(field: dict) -> list[str] | None:
    """The symbols of an array<enum> field with at most 64 of them (an inline enum), else None."""
    kind = field["type"]
    if not isinstance(kind, dict) or kind.get("type") != "array":
        return None
    items = kind["items"]
    if isinstance(items, dict) and items.get("type") == "enum" and len(items["symbols"]) <= 64:
        return list(items["symbols"])
    return None


def _converted(name: str, value: dict[str, Any]) -> dict[str, Any]:
    """A ``decode`` value with its float arrays (per the current schema of ``name``) as numpy arrays."""
    current = registry().current.get(name)
    steps = _plan(current) if current is not None else None
    if steps is None:
        return value
    out = dict(value)
    for step in steps:
        if isinstance(step, _Vector) and step.name in out:
            dtype = step.dtype.newbyteorder("=")
            if step.nested:
                out[step.name] = _matrix([np.asarray(row, dtype) for row in out[step.name]], dtype)
            else:
                out[step.name] = np.asarray(out[step.name], dtype)
    return out
