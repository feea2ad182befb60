"""Layout figures (run on demand: `python tools/layout_figures.py`, from any directory):

- the package's largest modules (lines);
- the call chain inside the package when one event is built (`db.create`), reaches its WAL
  INSERT (by `db.create` and by an ORM commit) and its Parquet file (`db.flush`): frames
  and modules on each, and the modules a reader opens to follow all four.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as ppq
from sqlalchemy import event
from sqlalchemy.orm import sessionmaker

import parquedb_orm as pq

pkg = Path(pq.__file__).parent
sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(pkg))) for p in pkg.rglob("*.py")), reverse=True)
print("modules:", len(sizes), "largest:", sizes[:3])
stacks: dict[str, Any] = {}


def capture(label: str) -> None:
    frames = [f for f in inspect.stack() if str(pkg) in f.filename]
    stacks[label] = [(Path(f.filename).relative_to(pkg).as_posix(), f.function) for f in reversed(frames)]


tmp = Path(tempfile.mkdtemp())
db = pq.ParqueDB(f"sqlite:///{tmp / 'x.db'}", archive=str(tmp / "a"), policy=pq.FlushPolicy(mode="manual"))


def before_exec(conn: Any, clauseelement: Any, multiparams: Any, params: Any, execution_options: Any) -> None:
    text = str(clauseelement)
    if "INSERT INTO events_wal" in text and stacks.get("_label") not in stacks:
        capture(stacks.get("_label", "?"))


event.listen(db.engine, "before_execute", before_exec)
g = pq.Store.create.__globals__
Orig = g["Event"]


class Ev(Orig):  # type: ignore[misc, valid-type]
    def __init__(self, *a: Any, **k: Any) -> None:
        if "event built" not in stacks:
            capture("event built")
        super().__init__(*a, **k)


g["Event"] = Ev
stacks["_label"] = "create"
db.create("posts", {"n": 1})
g["Event"] = Orig
S = sessionmaker(db.engine)
handle = pq.enable(S)
stacks["_label"] = "orm commit"
with S() as s:
    pq.store(s).create("posts", {"n": 2})
    s.commit()
orig = ppq.write_table


def wt(*a: Any, **k: Any) -> Any:
    if "flush" not in stacks:
        capture("flush")
    return orig(*a, **k)


ppq.write_table = wt
stacks["_label"] = "flush-done"
db.flush()
for label in ("event built", "create", "orm commit", "flush"):
    st = stacks.get(label, [])
    print(
        f"{label}: depth {len(st)} frames in package; modules {len({m for m, _ in st})}: "
        + " > ".join(f"{m}:{fn}" for m, fn in st)
    )
allmods = {m for lbl in ("event built", "create", "orm commit", "flush") for m, _ in stacks.get(lbl, [])}
print("modules to follow one event (create + orm commit + flush):", len(allmods), sorted(allmods))
handle.close()
db.close()
