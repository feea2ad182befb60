"""Hypothesis strategies for the fuzz targets: arbitrary inputs, and valid ones damaged
(bit flips, truncations, a field of the wrong type), and the corpus seeds mutated."""

from __future__ import annotations

import functools
import json
import zlib
from datetime import UTC, timedelta, timezone
from decimal import Decimal
from typing import Any

import zstandard
from hypothesis import strategies as st

from parquedb_orm.core import codec, filters, operators
from parquedb_orm.core.events import ENTITY_OPS, REL_OPS
from parquedb_orm.errors import SerializationError

from . import corpus


def pick(items: list[Any]) -> st.SearchStrategy[Any]:
    """sampled_from without the repr of every item (large corpus inputs make hypothesis warn)."""

    def item(i: int) -> Any:
        return items[i]

    return st.integers(0, len(items) - 1).map(item)


# ------------------------------------------------------------------ values
BIG_INTS = [2**53 + 1, 2**63, -(2**63) - 1, 2**1024, -(2**1030), 10**400, 10**4299]
TRICKY_STRINGS = [
    "",
    "$",
    "$date",
    "$set",
    "$gt",
    "$id",
    "0",
    "00",
    "1",
    "-1",
    "1e5",
    "٣",  # a non-ASCII digit
    "0\n",
    "a.b",
    ".",
    "..",
    "a..b",
    " ",
    "\x00",
    "\ud800",
    "9" * 4301,
    "1" * 20,
]
SEGMENTS = ["a", "b", "c", "tags", "name", "x", "0", "1", "2", "10", "-1", "9" * 4301, "$x", "", "version", "$id"]


@functools.cache
def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-5, max_value=20),
        st.integers(),
        pick(BIG_INTS),
        st.floats(),
        st.sampled_from([0.5, -0.0, 1e308, float("nan"), float("inf")]),
        st.text(max_size=8),
        pick(TRICKY_STRINGS),
    )


@functools.cache
def typed_values() -> st.SearchStrategy[Any]:
    zones = st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))])
    return st.one_of(
        st.datetimes(timezones=zones),
        st.dates(),
        st.times(timezones=zones),
        st.timedeltas(),
        st.decimals(),
        st.sampled_from([Decimal("1.10"), Decimal("1e-10000"), Decimal("9" * 50), Decimal("NaN")]),
        st.uuids(),
        st.binary(max_size=8),
    )


@functools.cache
def keys() -> st.SearchStrategy[str]:
    return st.one_of(pick(SEGMENTS), st.text(alphabet="ab$.0_", min_size=0, max_size=4))


@functools.cache
def values(typed: bool = True, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    leaves = st.one_of(scalars(), typed_values()) if typed else scalars()
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(keys(), inner, max_size=4),
            st.tuples(inner, inner),
        ),
        max_leaves=max_leaves,
    )


@functools.cache
def json_values(max_leaves: int = 10) -> st.SearchStrategy[Any]:
    """What a JSON payload can decode to."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        pick(TRICKY_STRINGS[:12]),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys(), inner, max_size=4)),
        max_leaves=max_leaves,
    )


@functools.cache
def paths() -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(pick(SEGMENTS[:10]), min_size=1, max_size=4).map(".".join),
        st.lists(pick(SEGMENTS), min_size=1, max_size=4).map(".".join),
        pick(TRICKY_STRINGS),
        st.just(".".join(["a"] * 101)),
    )


@functools.cache
def states() -> st.SearchStrategy[dict[str, Any]]:
    fields = st.sampled_from(["a", "b", "c", "tags", "name", "n", "x"])
    return st.dictionaries(st.one_of(fields, keys()), values(max_leaves=8), max_size=5)


# ------------------------------------------------------------------ mutations
@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "append"]))
        if kind in ("flip", "set", "delete") and not data:
            continue
        if kind == "flip":
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            i = draw(st.integers(0, len(data) - 1))
            del data[i : i + draw(st.integers(1, 8))]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def frame(payload: bytes, zstd: bool, version: int = codec.FORMAT_VERSION) -> bytes:
    """A batch around any payload, with a correct CRC (so the JSON layer is reached)."""
    crc = zlib.crc32(payload)
    if zstd:
        return codec._HEADER.pack(codec.MAGIC, version, codec.FLAG_ZSTD, crc) + zstandard.ZstdCompressor().compress(
            payload
        )
    return codec._HEADER.pack(codec.MAGIC, version, 0, crc) + payload


def _tag_texts() -> st.SearchStrategy[str]:
    tag = st.sampled_from(["$date", "$decimal", "$uuid", "$day", "$time", "$interval", "$bytes", "$enum", "$ext"])
    return st.builds(lambda t, v: json.dumps([{t: v}]), tag, json_values(max_leaves=4)) | st.sampled_from(
        [
            '[{"$enum": ["enum:Enum", 1]}]',
            '[{"$enum": ["re:RegexFlag", 99999999999]}]',
            '[{"$enum": ["http:HTTPStatus", "x"]}]',
            '[{"$enum": ["parquedb_orm.core.codec:_ENUMS", 1]}]',
            '[{"$enum": [":", 1]}]',
            '[{"$interval": 99999999999999999999999}]',
            '[{"$decimal": "1e999999999999999999"}]',
            '[{"$bytes": "!!"}]',
            '[{"$date": "2024-02-30T00:00:00"}]',
            '[{"$time": "25:00"}]',
            '[{"$ext": ["nope", 1]}]',
        ]
    )


def _dumps(records: list[Any]) -> str:
    try:
        return codec.dumps(records)
    except SerializationError:  # NaN, a "$" key...: not storable, so not a batch the store writes
        return "[]"


@st.composite
def payload_texts(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["records", "mutated", "tags", "nested", "text"]))
    if kind == "records":
        text = _dumps(draw(st.lists(values(), max_size=3)))
    elif kind == "mutated":
        text = draw(mutated_bytes(_dumps(draw(st.lists(values(), max_size=3))).encode())).decode("utf-8", "replace")
    elif kind == "tags":
        text = draw(_tag_texts())
    elif kind == "nested":
        depth = draw(st.one_of(st.integers(0, 120), st.integers(500, 3000)))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"$enum":["x:y",', "]}]")]))
        text = opener * depth + "1" + closer * depth
        if draw(st.booleans()):
            text = "[" + text + "]"
    else:
        return draw(st.binary(max_size=40))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def batches(draw: st.DrawFn) -> bytes:
    """Inputs for decode_batch."""
    seeds = corpus.load_all("codec")
    kind = draw(st.sampled_from(["binary", "header", "valid", "reframed"] + (["seed"] if seeds else [])))
    if kind == "binary":
        return draw(st.binary(max_size=64))
    if kind == "header":
        head = codec._HEADER.pack(
            codec.MAGIC, draw(st.integers(0, 255)), draw(st.integers(0, 255)), draw(st.integers(0, 2**32 - 1))
        )
        return head + draw(st.binary(max_size=48))
    if kind == "valid":
        return draw(mutated_bytes(codec.encode_json(_dumps(draw(st.lists(values(), max_size=4))))))
    if kind == "reframed":
        return frame(draw(payload_texts()), draw(st.booleans()))
    return draw(mutated_bytes(draw(pick(seeds))))


def storable_records() -> st.SearchStrategy[list[Any]]:
    return st.lists(values(), max_size=4)


# ------------------------------------------------------------------ event records
@functools.cache
def _event_fields() -> st.SearchStrategy[list[Any]]:
    op = st.sampled_from(sorted(ENTITY_OPS))
    return st.builds(
        lambda seq, ts, op, id_, actor, data, version, meta: (
            [seq, ts, op, id_, actor, data, version] + ([] if meta is None else [meta])
        ),
        st.integers(1, 10**6),
        st.integers(0, 2**53),
        op,
        st.text(alphabet="abcXYZ019", min_size=1, max_size=6),
        st.none() | st.text(max_size=4),
        st.none() | st.dictionaries(keys(), json_values(4), max_size=3),
        st.integers(1, 100),
        st.none() | json_values(3),
    )


@functools.cache
def _rel_fields() -> st.SearchStrategy[list[Any]]:
    return st.builds(
        lambda seq, ts, op, fr, pred, to, rev, actor, data: [seq, ts, op, fr, pred, to, rev, actor, data],
        st.integers(1, 10**6),
        st.integers(0, 2**53),
        st.sampled_from(sorted(REL_OPS)),
        st.text(alphabet="abc019", min_size=1, max_size=6),
        st.sampled_from(["author", "tags", ""]),
        st.sampled_from(["users/a", "x", ""]),
        st.none() | st.text(max_size=4),
        st.none() | st.text(max_size=4),
        st.none() | st.dictionaries(keys(), json_values(4), max_size=3),
    )


_WRONG = st.one_of(
    st.text(max_size=4),
    st.integers(-3, 3),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@st.composite
def damaged_record(draw: st.DrawFn, *, keep_op: bool = False) -> list[Any]:
    """A valid-looking record with some fields replaced, dropped or added."""
    rec: list[Any] = list(draw(_event_fields() | _rel_fields()))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add"]))
        if kind == "replace":
            i = draw(st.integers(0, len(rec) - 1))
            if keep_op and i == 2:
                i = 0
            rec[i] = draw(_WRONG | json_values(3))
        elif kind == "drop" and not keep_op:
            del rec[draw(st.integers(0, len(rec) - 1))]
        elif kind == "add" and not keep_op:
            rec.append(draw(json_values(2)))
    return rec


def records() -> st.SearchStrategy[Any]:
    """Inputs for the record decoders: what a batch can decode to (a list of anything)."""
    seeds = [s for s in corpus.load_all("records") if isinstance(s, list)]
    one = st.one_of(_event_fields(), _rel_fields(), damaged_record(), json_values(6))
    out = st.lists(one, max_size=4)
    if seeds:
        out = out | st.builds(lambda s, extra: [*s, *extra], pick(seeds), st.lists(one, max_size=1))
    return out


def wrong_type_records() -> st.SearchStrategy[list[Any]]:
    """Records of the right length and op with a field of another type: from_record should refuse them."""
    return st.lists(damaged_record(keep_op=True), min_size=1, max_size=3)


# ------------------------------------------------------------------ filters
FILTER_OPS = [*sorted(filters.FIELD_OPERATORS), "$regex", "$elemMatch", "$foo", "$", "$and", "$type"]


@functools.cache
def conditions() -> st.SearchStrategy[Any]:
    operand = st.one_of(values(max_leaves=4), st.lists(values(max_leaves=3), max_size=3))
    simple = st.one_of(
        values(max_leaves=4),
        st.dictionaries(st.sampled_from(FILTER_OPS), operand, min_size=1, max_size=3),
        st.dictionaries(st.sampled_from([*FILTER_OPS, "a", "b"]), operand, min_size=1, max_size=2),
    )
    return st.recursive(
        simple, lambda inner: st.dictionaries(st.sampled_from(FILTER_OPS), inner, min_size=1, max_size=2), max_leaves=6
    )


@functools.cache
def filter_docs() -> st.SearchStrategy[Any]:
    field = st.dictionaries(st.one_of(paths(), keys()), conditions(), max_size=3)
    logical = st.sampled_from(["$and", "$or", "$nor", "$not", "$where", "$expr"])

    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.dictionaries(logical, st.one_of(st.lists(inner, max_size=3), inner, values(max_leaves=2)), max_size=2),
            st.builds(
                lambda a, b: {**a, **b}, field, st.dictionaries(logical, st.lists(inner, max_size=2), max_size=1)
            ),
        )

    return st.one_of(
        st.recursive(field, extend, max_leaves=6),
        values(max_leaves=3),
        st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=1),
    )


@functools.cache
def sorts() -> st.SearchStrategy[Any]:
    return st.none() | st.dictionaries(st.one_of(paths(), keys()), st.sampled_from([1, -1, 0, True, "1", None, 1.0]))


@st.composite
def _deep_not(draw: st.DrawFn) -> dict[str, Any]:
    flt: dict[str, Any] = {"a": draw(conditions())}
    for _ in range(draw(st.integers(90, 110))):
        flt = {draw(st.sampled_from(["$not", "$and"])): flt} if draw(st.booleans()) else {"$and": [flt]}
    return flt


def filter_inputs() -> st.SearchStrategy[dict[str, Any]]:
    seeds = corpus.load_all("filters")
    flt = st.one_of(filter_docs(), _deep_not())
    out: st.SearchStrategy[dict[str, Any]] = st.builds(
        lambda f, d, s: {"filter": f, "doc": d, "sort": s}, flt, states(), sorts()
    )
    if seeds:
        out = out | st.builds(
            lambda seed, d: {**seed, "doc": d} if isinstance(seed, dict) else seed, pick(seeds), states()
        )
    return out


# ------------------------------------------------------------------ updates
UPDATE_OPS = sorted(operators.OPERATORS) + sorted(operators.LINK_OPERATORS) + ["$pop", "$setOnInsert", "$bit", "set"]


@functools.cache
def update_operands(op: str) -> st.SearchStrategy[Any]:
    common = values(max_leaves=5)
    extra: dict[str, st.SearchStrategy[Any]] = {
        "$inc": st.one_of(st.integers(), st.floats(), st.decimals(), pick(BIG_INTS)),
        "$mul": st.one_of(st.integers(), st.floats(), st.decimals(), pick(BIG_INTS)),
        "$push": st.dictionaries(st.sampled_from(["$each", "$slice", "$position"]), common, min_size=1, max_size=2),
        "$addToSet": st.dictionaries(st.sampled_from(["$each", "$x"]), common, min_size=1, max_size=2),
        "$pull": st.one_of(conditions(), filter_docs()),
        "$rename": paths(),
        "$currentDate": st.sampled_from([True, False, {"$type": "date"}, {"$type": "timestamp"}, 1, None]),
    }
    return common | extra[op] if op in extra else common


@st.composite
def update_docs(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(values(max_leaves=4))
    update: dict[Any, Any] = {}
    for op in draw(st.lists(st.sampled_from(UPDATE_OPS), min_size=1, max_size=3, unique=True)):
        n = draw(st.integers(0, 3))
        update[op] = {draw(paths()): draw(update_operands(op)) for _ in range(n)}
    return update


def update_inputs() -> st.SearchStrategy[dict[str, Any]]:
    seeds = corpus.load_all("operators")
    out: st.SearchStrategy[dict[str, Any]] = st.builds(lambda u, s: {"update": u, "state": s}, update_docs(), states())
    if seeds:
        out = out | st.builds(
            lambda seed, s: {**seed, "state": s} if isinstance(seed, dict) else seed, pick(seeds), states()
        )
    return out


STRATEGIES: dict[str, Any] = {
    "codec": batches,
    "records": records,
    "filters": filter_inputs,
    "operators": update_inputs,
}
