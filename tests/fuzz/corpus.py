"""The seed corpus: `corpus/<target>/<name>.bin` (raw bytes, the codec target) or
`<name>.json` (every other target).

A JSON input is plain JSON with the store's value tags (`{"$date": ...}`, `{"$decimal":
...}`: `core.codec`) for typed values, plus tags of its own for what neither JSON nor the
codec can hold, so any input a strategy generates can be written and read back:
`{"$fuzz:float": "nan"}`, `{"$fuzz:tuple": [...]}`, `{"$fuzz:dict": [[key, value], ...]}`
(non-string keys, or a one-key `$` dict that would otherwise read as a tag),
`{"$fuzz:repr": "..."}` (anything else: read back as that text).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from parquedb_orm.core import codec

CORPUS = Path(__file__).resolve().parent / "corpus"
BINARY_TARGETS = frozenset({"codec"})
_TAG = "$fuzz:"


def _is_tagish(d: dict[Any, Any]) -> bool:
    """A one-key dict that reading would turn into something else (a codec tag, ours)."""
    return len(d) == 1 and all(isinstance(k, str) and (k in codec._DECODERS or k.startswith(_TAG)) for k in d)


def to_jsonable(value: Any) -> Any:
    t = type(value)
    if value is None or t is bool or t is str or t is int:
        return value
    if t is float:
        return value if math.isfinite(value) else {_TAG + "float": repr(value)}
    if t is list:
        return [to_jsonable(v) for v in value]
    if t is tuple:
        return {_TAG + "tuple": [to_jsonable(v) for v in value]}
    if t is dict:
        if _is_tagish(value) or not all(type(k) is str for k in value):
            return {_TAG + "dict": [[to_jsonable(k), to_jsonable(v)] for k, v in value.items()]}
        return {k: to_jsonable(v) for k, v in value.items()}
    try:
        return json.loads(codec.dumps(value))  # a typed value: the store's own tag
    except Exception:
        return {_TAG + "repr": repr(value)}


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((key, raw),) = obj.items()
        if key == _TAG + "float":
            return float(raw)
        if key == _TAG + "tuple":
            return tuple(raw)
        if key == _TAG + "dict":
            return {(tuple(k) if isinstance(k, list) else k): v for k, v in raw}
        if key == _TAG + "repr":
            return raw
        if key in codec._DECODERS:
            try:
                return codec.loads(json.dumps(obj))  # a codec tag: its typed value
            except Exception:
                return obj
    return obj


def from_jsonable_text(text: str) -> Any:
    return json.loads(text, object_hook=_hook)


def dumps_input(value: Any) -> str:
    return json.dumps(to_jsonable(value), indent=None, ensure_ascii=False, allow_nan=False) + "\n"


def files(target: str) -> list[Path]:
    folder = CORPUS / target
    if not folder.is_dir():
        return []
    suffix = ".bin" if target in BINARY_TARGETS else ".json"
    return sorted(p for p in folder.iterdir() if p.suffix == suffix)


def load(path: Path) -> Any:
    if path.suffix == ".bin":
        return path.read_bytes()
    return from_jsonable_text(path.read_text("utf-8"))


def load_all(target: str) -> list[Any]:
    return [load(p) for p in files(target)]


def save(target: str, value: Any, prefix: str = "found") -> Path:
    """Write an input under a name derived from its content (the same input twice is one file)."""
    data = value if target in BINARY_TARGETS else dumps_input(value).encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()[:12]
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-{digest}{'.bin' if target in BINARY_TARGETS else '.json'}"
    path.write_bytes(data)
    return path
