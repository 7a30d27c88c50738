"""decode_arrays: the same values as decode, float arrays as numpy arrays, same errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import schemas.codec as codec
import schemas.numeric_arrays as numeric_arrays
from schemas import DecodeError, decode, encode
from schemas.codec import SCHEMA_DIR, SchemaRegistry
from schemas.numeric_arrays import decode_arrays, read_matrix, read_vector
from tests.samples import SAMPLES

F4, F8 = np.dtype("<f4"), np.dtype("<f8")


def _long(n: int) -> bytes:
    """Avro zig-zag varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _decision(layers: int, features: int, kernels: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    dist = rng.random(1 + layers * kernels)
    dist /= dist.sum()
    return SAMPLES["DecisionRecord"] | {
        "distribution": dist.tolist(), "kernels": [f"k{i}" for i in range(kernels)],
        "feature_names": [f"f{i}" for i in range(features)], "layer_names": [f"l{i}" for i in range(layers)],
        "node_features": rng.normal(size=(layers, features)).astype(np.float32).tolist(),
        "edge_source": list(range(max(0, layers - 1))), "edge_target": list(range(1, layers)),
        "propensity": float(dist[0]), "legal_mask": bytes(rng.integers(0, 2, 1 + layers * kernels).tolist()),
    }


def _same(plain: dict, arrays: dict) -> None:
    assert plain.keys() == arrays.keys()
    for key, value in plain.items():
        if key in ("distribution", "node_features"):
            assert isinstance(arrays[key], np.ndarray)
            assert np.array_equal(np.asarray(value, dtype=arrays[key].dtype).reshape(arrays[key].shape), arrays[key])
        else:
            assert arrays[key] == value, key


@pytest.mark.parametrize("layers,features", [(1, 1), (12, 19), (40, 3), (0, 0), (200, 19)])
def test_decision_records_decode_to_the_same_values_with_arrays(layers: int, features: int) -> None:
    record = _decision(layers, features, seed=layers)
    data = encode("DecisionRecord", record)
    plain, arrays = decode(data).value, decode_arrays(data).value
    _same(plain, arrays)
    assert arrays["distribution"].dtype == np.float64 and arrays["node_features"].dtype == np.float32
    assert arrays["node_features"].shape == ((layers, features) if layers else (0, 0))
    assert arrays["node_features"].flags.writeable and arrays["node_features"].flags.c_contiguous


def test_other_records_decode_exactly_as_decode_does() -> None:
    for name, sample in SAMPLES.items():
        if name in ("DecisionRecord", "HealthBatch"):
            continue
        data = encode(name, sample)
        assert decode_arrays(data) == decode(data), name


def test_a_health_batch_has_its_float_columns_as_numpy_and_the_rest_as_decode_gives() -> None:
    data = encode("HealthBatch", SAMPLES["HealthBatch"])
    arrays, plain = decode_arrays(data).value, decode(data).value
    assert arrays.keys() == plain.keys()
    for name, value in plain.items():
        if isinstance(arrays[name], np.ndarray):
            assert arrays[name].dtype == np.float64 and arrays[name].tolist() == value, name
        else:
            assert arrays[name] == value, name
    assert sum(isinstance(v, np.ndarray) for v in arrays.values()) == 6  # the six per-signal float fields


def test_corrupt_bodies_are_decode_errors() -> None:
    data = encode("DecisionRecord", _decision(12, 19))
    for broken in (data[:-3], data[: len(data) // 2], data + b"\x00"):
        with pytest.raises(DecodeError) as err:
            decode_arrays(broken)
        assert err.value.kind == "bad_body"
    with pytest.raises(DecodeError) as err:
        decode_arrays(b"\xc3\x01" + b"\x00" * 8)
    assert err.value.kind == "unknown_schema"


def test_a_short_run_of_primitives_is_read_in_python_with_decode_values_and_errors() -> None:
    from schemas.codec import registry

    steps = numeric_arrays._plan(registry().current["DecisionRecord"])
    short = [step for step in steps if isinstance(step, numeric_arrays._Primitives)]
    assert [name for step in short for name, _ in step.fields] == ["value_estimate", "gate", "legal_mask"]
    gate = "cooldown-ü"
    data = encode("DecisionRecord", _decision(3, 2) | {"value_estimate": -1.25, "gate": gate})
    assert decode_arrays(data).value["gate"] == gate and decode_arrays(data).value["value_estimate"] == -1.25
    at = data.index(_long(len(gate.encode())) + gate.encode())
    past_the_end = data[:at] + _long(len(data)) + data[at + 1:]
    not_utf8 = data[:at + 1] + b"\xff" + data[at + 2:]
    for bad in (past_the_end, not_utf8):
        for reader in (decode, decode_arrays):
            with pytest.raises(DecodeError) as err:
                reader(bad)
            assert err.value.kind == "bad_body"


def test_read_long_reads_one_and_many_byte_varints() -> None:
    values = [0, -1, 1, 63, -64, 64, -65, 300, -(2**31), 2**40, 2**63 - 1, -(2**63)]
    data = b"\x07" + b"".join(_long(v) for v in values)
    pos, got = 1, []
    for _ in values:
        value, pos = numeric_arrays.read_long(data, pos)
        got.append(value)
    assert got == values and pos == len(data)
    with pytest.raises(ValueError):
        numeric_arrays.read_long(b"\xff" * 11, 0)


def test_repeated_name_and_edge_arrays_are_remembered_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    long_name = "a_layer_name_longer_than_the_index_key"
    variants = [
        [long_name, "x"], [long_name, "y"], [long_name, "x", "z"], [long_name], ["x"], [], [long_name, "x"],
    ]
    records = [_decision(len(names), 3, seed=i) | {"layer_names": names} for i, names in enumerate(variants)]
    monkeypatch.setattr(numeric_arrays, "_plans", {})  # fresh caches, for the count below
    monkeypatch.setattr(numeric_arrays._Repeated, "_MAX_SPANS", 3)  # forgotten and relearned on the way
    for _ in range(2):
        for record in records:
            data = encode("DecisionRecord", record)
            got = decode_arrays(data).value
            _same(decode(data).value, got)
            got["layer_names"].append("mutated")  # a fresh list every time: the cache keeps its own
            got["feature_names"].clear()
    again = decode_arrays(encode("DecisionRecord", records[0])).value
    assert again["layer_names"] == [long_name, "x"] and again["feature_names"] == ["f0", "f1", "f2"]
    plan = numeric_arrays._plan(codec.writer_of(encode("DecisionRecord", records[0]))[0])
    repeated = [step for step in plan if isinstance(step, numeric_arrays._Repeated)]
    assert {step.name for step in repeated} == {"kernels", "feature_names", "layer_names", "edge_source",
                                                 "edge_target"}
    assert all(step.count <= 3 for step in repeated)


def test_a_decision_records_legal_mask_is_read_in_python_null_or_bytes() -> None:
    """``legal_mask`` (["null", "bytes"], v2) is read without a fastavro call, both branches; a
    record of v1 (no such field) still decodes, with the default."""
    import io

    import fastavro

    for mask in (b"\x01\x00\x01", None, b""):
        data = encode("DecisionRecord", _decision(1, 2) | {"legal_mask": mask})
        assert decode_arrays(data).value["legal_mask"] == decode(data).value["legal_mask"] == mask
    plan = numeric_arrays._plan(codec.writer_of(encode("DecisionRecord", _decision(1, 2)))[0])
    assert any(isinstance(step, numeric_arrays._Primitives) and ("legal_mask", "null|bytes") in step.fields
               for step in plan)
    v1 = next(s for s in codec.registry().releases["DecisionRecord"] if "legal_mask" not in s.text)
    buf = io.BytesIO(v1.header)
    buf.seek(len(v1.header))
    fastavro.schemaless_writer(buf, v1.fast, {k: v for k, v in _decision(2, 2).items() if k != "legal_mask"})
    assert decode_arrays(buf.getvalue()).value["legal_mask"] is None
    data = encode("DecisionRecord", _decision(1, 2) | {"legal_mask": b"\x01"})
    assert data.endswith(b"\x02\x02\x01")  # the body ends with the union branch 1, the length 1, the byte
    for bad in (data[:-3] + b"\x04\x02\x01", data[:-3] + b"\x02\x04\x01"):  # branch 2; 2 bytes of 1
        with pytest.raises(DecodeError) as err:
            decode_arrays(bad)
        assert err.value.kind == "bad_body"


def test_vectors_in_several_blocks_and_with_byte_sizes() -> None:
    a, b = np.array([1.5, -2.0], F8), np.array([3.25], F8)
    data = _long(2) + a.tobytes() + _long(-1) + _long(8) + b.tobytes() + _long(0) + b"tail"
    got, end = read_vector(data, 0, F8)
    assert got.tolist() == [1.5, -2.0, 3.25] and data[end:] == b"tail"
    got, end = read_vector(_long(0), 0, F4)
    assert got.shape == (0,) and end == 1


def test_one_block_with_a_byte_size_and_a_big_endian_item_type() -> None:
    a = np.array([1.0, 2.0], F4)
    data = _long(-2) + _long(8) + a.tobytes() + _long(0)
    got, end = read_vector(data, 0, F4)
    assert got.tolist() == [1.0, 2.0] and end == len(data)
    big = np.dtype(">f8")
    got, end = read_vector(_long(1) + np.array([3.5], big).tobytes() + _long(0), 0, big)
    assert got.tolist() == [3.5] and got.dtype == np.dtype("=f8") and end == 10


def _row(values: list[float]) -> bytes:
    return (_long(len(values)) + np.asarray(values, F4).tobytes() + _long(0)) if values else _long(0)


def test_matrices_ragged_split_or_uniform() -> None:
    uniform = _long(3) + b"".join(_row([i, i + 0.5]) for i in range(3)) + _long(0) + b"!"
    got, end = read_matrix(uniform, 0, F4)
    assert isinstance(got, np.ndarray) and got.tolist() == [[0, 0.5], [1, 1.5], [2, 2.5]] and uniform[end:] == b"!"
    ragged = _long(2) + _row([1.0]) + _row([2.0, 3.0]) + _long(0)
    got, end = read_matrix(ragged, 0, F4)
    assert [r.tolist() for r in got] == [[1.0], [2.0, 3.0]] and end == len(ragged)
    # Two outer blocks, the second with a byte size; a row split into two blocks.
    split_row = _long(1) + np.asarray([4.0], F4).tobytes() + _long(1) + np.asarray([5.0], F4).tobytes() + _long(0)
    blocks = _long(1) + _row([6.0, 7.0]) + _long(-1) + _long(len(split_row)) + split_row + _long(0)
    got, end = read_matrix(blocks, 0, F4)
    assert got.tolist() == [[6.0, 7.0], [4.0, 5.0]] and end == len(blocks)
    # Rows whose first item count looks uniform but whose later rows differ.
    tricky = _long(2) + _row([1.0, 2.0]) + _row([3.0]) + _long(0)
    got, _ = read_matrix(tricky, 0, F4)
    assert [r.tolist() for r in got] == [[1.0, 2.0], [3.0]]
    # The first row split into two one-item blocks, the second whole: the same shape, read the slow way.
    first_split = _long(2) + split_row + _row([8.0, 9.0]) + _long(0)
    got, end = read_matrix(first_split, 0, F4)
    assert got.tolist() == [[4.0, 5.0], [8.0, 9.0]] and end == len(first_split)
    empty, end = read_matrix(_long(0), 0, F4)
    assert empty.shape == (0, 0) and end == 1


def test_messages_of_an_older_version_are_resolved_then_converted(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = json.loads((SCHEMA_DIR / "DecisionRecord.avsc").read_text())
    v2 = json.loads(json.dumps(v1))
    v2["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    (tmp_path / "releases").mkdir()
    (tmp_path / "releases" / "DecisionRecord.v1.avsc").write_text(json.dumps(v1))
    (tmp_path / "releases" / "DecisionRecord.v2.avsc").write_text(json.dumps(v2))
    (tmp_path / "DecisionRecord.avsc").write_text(json.dumps(v2))
    record = _decision(5, 4)
    old = encode("DecisionRecord", record)  # today's schema is v1 of the evolved registry
    evolved = SchemaRegistry(tmp_path)
    monkeypatch.setattr(codec, "registry", lambda: evolved)
    monkeypatch.setattr(numeric_arrays, "registry", lambda: evolved)
    value = decode_arrays(old).value
    assert value["note"] is None
    _same({k: v for k, v in record.items()}, {k: v for k, v in value.items() if k != "note"})


def test_enum_arrays_read_from_their_bytes_decode_as_decode_does() -> None:
    """A HealthBatch's seed_states (one byte per seed) are read with numpy; empty, and every symbol."""
    from schemas.codec import registry

    symbols = next(f for f in json.loads(registry().current["HealthBatch"].text)["fields"]
                   if f["name"] == "seed_states")["type"]["items"]["symbols"]
    for states, seeds in ((symbols * 2, [3, 3, 3, 3]), ([], [0, 0, 0, 0])):
        sample = dict(SAMPLES["HealthBatch"], seed_states=states, total_seeds=seeds, active_seeds=[0] * 4)
        data = encode("HealthBatch", sample)
        assert decode_arrays(data).value["seed_states"] == decode(data).value["seed_states"] == states


def test_an_enum_index_out_of_range_is_a_decode_error() -> None:
    data = bytearray(encode("HealthBatch", SAMPLES["HealthBatch"]))
    states = len(SAMPLES["HealthBatch"]["seed_states"])
    # The body ends with seed_states: its count, the items (2 * index each), then 0.
    assert data[-1] == 0 and data[-2 - states] == 2 * states
    data[-2] = 2 * 40  # index 40 of a 6-symbol enum
    with pytest.raises(DecodeError) as err:
        decode_arrays(bytes(data))
    assert err.value.kind == "bad_body"
