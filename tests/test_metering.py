"""Verification of the row meter ``parquedb_meter`` on real engines (no mocks).

The meter is a development tool outside the product package: the distribution
``parquedb-meter`` in ``tools/meter`` (conftest.py puts that folder on sys.path).

* portable meter: SQLite always; PostgreSQL / MariaDB when reachable (skipped
  otherwise, a failure when PARQUEDB_REQUIRE_SERVERS=1);
* faithful meter: a subprocess that loads the counter-carrying libsqlite3 via
  ``metered_env()`` and measures the rows read / written that D1 / Turso bill.
  Under CI (CI=true or PARQUEDB_REQUIRE_SERVERS=1) an unavailable build fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import parquedb_meter
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parquedb_meter import (
    EngineMeter,
    FaithfulMeterUnavailable,
    Meter,
    faithful_available,
    meter,
    metered_env,
)
from sqlalchemy import event

REPO_ROOT = Path(__file__).resolve().parent.parent
METER_DIR = REPO_ROOT / "tools" / "meter"
REQUIRE_SERVERS = os.environ.get("PARQUEDB_REQUIRE_SERVERS") == "1"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes") or REQUIRE_SERVERS

SERVER_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
}


# ---------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------


def _server_engine(name: str) -> sa.Engine:
    url = SERVER_URLS[name]
    connect_args: dict[str, Any] = {"connect_timeout": 3}
    engine = sa.create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        engine.dispose()
        msg = f"{name} not reachable at {url}: {type(exc).__name__}: {exc}"
        if REQUIRE_SERVERS:
            pytest.fail(msg)
        pytest.skip(msg)
    return engine


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        eng = sa.create_engine(f"sqlite:///{tmp_path / 'meter.db'}")
    else:
        eng = _server_engine(request.param)
    yield eng
    eng.dispose()


@pytest.fixture
def table(engine: sa.Engine) -> Iterator[sa.Table]:
    # unique name: other suites may share the test databases concurrently
    md = sa.MetaData()
    t = sa.Table(
        f"pqm_{uuid.uuid4().hex[:10]}",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("x", sa.Integer, nullable=False),
        sa.Column("label", sa.String(200)),
    )
    md.create_all(engine)
    yield t
    md.drop_all(engine)


# ---------------------------------------------------------------------------
# portable meter
# ---------------------------------------------------------------------------


def test_counts_statements_rows_and_inserted_rows(engine: sa.Engine, table: sa.Table) -> None:
    t = table
    with meter(engine) as m, engine.begin() as conn:
        conn.execute(t.insert(), [{"x": i} for i in range(10)])  # executemany
        conn.execute(t.insert().values(x=100))
        # insertmanyvalues: one batch "VALUES (..), (..) ... RETURNING"
        returned_ids = conn.execute(t.insert().returning(t.c.id), [{"x": i} for i in range(7)]).all()
        conn.exec_driver_sql(f"INSERT INTO {t.name} (x, label) VALUES (1, 'a,(b)'), (2, 'it''s'), (3, NULL)")
        upd = conn.execute(t.update().where(t.c.x < 5).values(x=500))
        rows = conn.execute(sa.select(t)).all()
        conn.execute(t.delete().where(t.c.x == 500))

    assert len(returned_ids) == 7
    assert len(rows) == 21
    assert m.statements == 7 == len(m.records)
    assert m.inserted_rows(t.name) == 21
    assert m.inserted_rows(t.name.upper()) == 21  # names compare case-insensitively
    assert m.inserted_rows("some_other_table") == 0

    many, single, imv, literal, update, select, delete = m.records
    assert [r.kind for r in m.records] == ["INSERT", "INSERT", "INSERT", "INSERT", "UPDATE", "SELECT", "DELETE"]
    assert (many.params_count, many.values_rows, many.rows_affected) == (10, 1, 10)
    assert (single.params_count, single.rows_affected) == (1, 1)
    assert (imv.params_count, imv.values_rows, imv.rows_affected) == (1, 7, 7)
    assert (literal.params_count, literal.values_rows, literal.rows_affected) == (1, 3, 3)
    # x < 5: five from the executemany, five from the IMV batch, 1,2,3 literal
    assert update.rows_affected == upd.rowcount == 13
    assert delete.rows_affected == 13
    assert select.rows_affected == 0
    assert m.rows_affected == 10 + 1 + 7 + 3 + 13 + 13

    if engine.dialect.name == "sqlite":
        assert m.faithful is faithful_available()
        if m.faithful:  # pytest itself was started on the metered libsqlite3
            assert select.rows_returned == select.rows_read == 21
            assert imv.rows_returned == 7
        else:
            # pysqlite reports no rowcount for SELECTs: not countable portably
            assert select.rows_returned is None
    else:
        # psycopg / PyMySQL buffer results; rowcount is the result size
        assert select.rows_returned == 21
        assert imv.rows_returned == 7
        assert m.rows_returned == 21 + 7 + (1 if single.rows_returned else 0)
        assert m.faithful is False
    if not m.faithful:
        assert m.rows_read is None and m.rows_written is None
        assert all(r.rows_read is None and r.rows_written is None for r in m.records)

    snap = m.snapshot()
    assert snap == {
        "statements": 7,
        "rows_affected": m.rows_affected,
        "rows_returned": m.rows_returned,
        "rows_read": m.rows_read,
        "rows_written": m.rows_written,
    }
    on_t = m.statements_on(t.name)
    assert len(on_t) == 7
    assert m.statements_on("nope") == []


def test_listeners_are_symmetric(engine: sa.Engine, table: sa.Table) -> None:
    before = len(engine.dispatch.before_cursor_execute)
    after = len(engine.dispatch.after_cursor_execute)
    with meter(engine) as m:
        assert len(engine.dispatch.before_cursor_execute) == before + 1
        with engine.begin() as conn:
            conn.execute(table.insert().values(x=1))
    assert len(engine.dispatch.before_cursor_execute) == before
    assert len(engine.dispatch.after_cursor_execute) == after
    with engine.begin() as conn:  # not counted any more
        conn.execute(table.insert().values(x=2))
    assert m.statements == 1

    em = EngineMeter(engine)
    assert em.install() is em and em.install() is em  # idempotent
    assert event.contains(engine, "before_cursor_execute", em._before)
    with meter(engine) as inner, engine.begin() as conn:  # two meters at once
        conn.execute(sa.select(table)).all()
    em.uninstall()
    em.uninstall()
    assert not event.contains(engine, "before_cursor_execute", em._before)
    assert len(engine.dispatch.before_cursor_execute) == before
    assert em.meter.statements == inner.statements == 1


def test_savepoints_are_not_statements(engine: sa.Engine, table: sa.Table) -> None:
    with meter(engine) as m, engine.connect() as conn, conn.begin():
        with conn.begin_nested():
            conn.execute(table.insert().values(x=1))
        nested = conn.begin_nested()
        conn.execute(table.insert().values(x=2))
        nested.rollback()
    assert [r.kind for r in m.records] == ["INSERT", "INSERT"]
    assert m.statements == 2
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 1


def test_reset_and_record_cap(engine: sa.Engine, table: sa.Table) -> None:
    em = EngineMeter(engine, max_records=5).install()
    try:
        with engine.begin() as conn:
            for i in range(23):
                conn.execute(table.insert().values(x=i))
        m = em.meter
        assert m.statements == 23
        assert m.inserted_rows(table.name) == 23  # exact although records are capped
        assert 5 <= len(m.records) <= 11
        assert m.records[-1].sql.startswith("INSERT")
        m.reset()
        assert m.snapshot()["statements"] == 0 and m.records == []
        assert m.inserted_rows(table.name) == 0
        with engine.begin() as conn:
            conn.execute(table.delete())
        assert m.statements == 1 and m.rows_affected == 23
    finally:
        em.uninstall()


def test_server_side_cursor_rows_returned_unknown(engine: sa.Engine, table: sa.Table) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("no server-side cursors on SQLite")
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"x": i} for i in range(5)])
    with meter(engine) as m, engine.connect() as conn:
        res = conn.execution_options(stream_results=True).execute(sa.select(table))
        assert len(res.all()) == 5
    select = [r for r in m.records if r.kind == "SELECT"]
    assert select and select[0].rows_returned is None


def test_threads_share_one_meter(tmp_path: Path) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'threads.db'}", connect_args={"timeout": 30}, pool_size=4)
    md = sa.MetaData()
    t = sa.Table("tt", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("x", sa.Integer))
    md.create_all(eng)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                with eng.begin() as conn:
                    conn.execute(t.insert(), [{"x": n * 1000 + i}, {"x": -i}])
                    conn.execute(sa.select(t.c.id).where(t.c.x == i)).all()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with meter(eng) as m:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors
    assert m.statements == 4 * 40 * 2 == len(m.records)
    assert m.inserted_rows("tt") == 4 * 40 * 2
    assert m.rows_affected == 4 * 40 * 2
    eng.dispose()


_literal = st.text(alphabet=st.sampled_from(list("ab'(),; \\?\"x")), max_size=8)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(_literal, min_size=1, max_size=12),
    tail=st.sampled_from(["", " ON CONFLICT DO NOTHING", " RETURNING id", "  ;"]),
)
def test_multi_values_parsing_matches_database(values: list[str], tail: str) -> None:
    # inserted_rows() derives multi-VALUES rows from the SQL text: compare it
    # with what SQLite really stored, for literals full of quotes and parens.
    eng = sa.create_engine("sqlite://")
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE lit (id INTEGER PRIMARY KEY, s TEXT)")
    tuples = ", ".join("('" + v.replace("'", "''") + "')" for v in values)
    sql = f'INSERT INTO "lit" (s) VALUES {tuples}{tail}'
    with meter(eng) as m, eng.begin() as conn:
        res = conn.exec_driver_sql(sql)
        if res.returns_rows:
            res.all()
    with eng.connect() as conn:
        stored = conn.exec_driver_sql("SELECT count(*) FROM lit").scalar_one()
    assert stored == len(values)
    assert m.inserted_rows("lit") == len(values)
    assert m.statements_on("lit") == m.records
    eng.dispose()


def test_faithful_not_claimed_without_counters() -> None:
    # The main pytest process runs on the system libsqlite3 (no counters)
    # unless someone launched it with the metered LD_LIBRARY_PATH.
    eng = sa.create_engine("sqlite://")
    m = EngineMeter(eng).meter
    assert m.faithful is faithful_available()
    if not faithful_available():
        assert m.rows_read is None and m.rows_written is None
        assert isinstance(m, Meter)


# ---------------------------------------------------------------------------
# faithful meter (subprocess on the counter-carrying libsqlite3)
# ---------------------------------------------------------------------------

_CHILD = r"""
import json, sys
import sqlalchemy as sa
from parquedb_meter import faithful_available, meter

assert faithful_available(), "metered libsqlite3 not loaded"
SEQ = "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n}) "
out = {}

def case(label, setup, sql):
    # fresh in-memory database per case: schema size changes DROP TABLE reads
    eng = sa.create_engine("sqlite://")
    with eng.begin() as conn:
        for s in setup:
            conn.exec_driver_sql(s)
    with meter(eng) as m:
        with eng.begin() as conn:
            res = conn.exec_driver_sql(sql)
            if res.returns_rows:
                res.all()
    rec = m.records[0]
    out[label] = {
        "read": m.rows_read, "written": m.rows_written, "returned": m.rows_returned,
        "affected": m.rows_affected, "statements": m.statements,
        "rec": [rec.rows_read, rec.rows_written, rec.rows_returned],
    }
    eng.dispose()

big = ["CREATE TABLE big (id INTEGER PRIMARY KEY, v INTEGER)",
       SEQ.format(n=1000) + "INSERT INTO big (v) SELECT n FROM s"]
case("full scan 1000", big, "SELECT * FROM big")
case("pk lookup", big, "SELECT * FROM big WHERE id = 500")
case("unindexed filter", big, "SELECT * FROM big WHERE v = 7")
case("max unindexed", big, "SELECT MAX(v) FROM big")
case("count(*)", big, "SELECT COUNT(*) FROM big")
case("limit 5", big, "SELECT * FROM big LIMIT 5")
case("text pk insert", ["CREATE TABLE tp (id TEXT PRIMARY KEY, v)"], "INSERT INTO tp VALUES ('a', 1)")
case("without rowid insert", ["CREATE TABLE wr (id TEXT PRIMARY KEY, v) WITHOUT ROWID"],
     "INSERT INTO wr VALUES ('a', 1)")
two_idx = ["CREATE TABLE i2 (id INTEGER PRIMARY KEY, a, b, c)",
           "CREATE INDEX i2_a ON i2 (a)", "CREATE INDEX i2_b ON i2 (b)"]
case("insert, 2 secondary indexes", two_idx, "INSERT INTO i2 (a, b, c) VALUES (1, 1, 1)")
row = two_idx + ["INSERT INTO i2 VALUES (1, 1, 1, 1)", "INSERT INTO i2 VALUES (2, 2, 2, 2)"]
case("update unindexed column", row, "UPDATE i2 SET c = 9 WHERE id = 1")
case("update indexed column", row, "UPDATE i2 SET a = 9 WHERE id = 1")
case("insert or replace", row, "INSERT OR REPLACE INTO i2 VALUES (1, 7, 7, 7)")
case("delete one row", row, "DELETE FROM i2 WHERE id = 1")
case("delete from t (3 rows)", ["CREATE TABLE d3 (id INTEGER PRIMARY KEY, v)",
                                "INSERT INTO d3 (v) VALUES (1), (2), (3)"], "DELETE FROM d3")
lk = ["CREATE TABLE lk (id INTEGER PRIMARY KEY, k)", "CREATE INDEX lk_k ON lk (k)",
      SEQ.format(n=100) + "INSERT INTO lk (k) SELECT n FROM s"]
case("index lookup 1 row", lk, "SELECT * FROM lk WHERE k = 50")
case("empty table select", ["CREATE TABLE em (id INTEGER PRIMARY KEY, v)"], "SELECT * FROM em")
# DESIGN.md table
case("insert int pk", ["CREATE TABLE ip (id INTEGER PRIMARY KEY, v)"], "INSERT INTO ip (v) VALUES (1)")
ip1 = ["CREATE TABLE ip1 (id INTEGER PRIMARY KEY, v)", "CREATE INDEX ip1_v ON ip1 (v)"]
case("insert int pk + 1 index", ip1, "INSERT INTO ip1 (v) VALUES (1)")
case("insert autoincrement", ["CREATE TABLE ai (id INTEGER PRIMARY KEY AUTOINCREMENT, v)"],
     "INSERT INTO ai (v) VALUES (1)")
case("update by pk, indexed column", ip1 + ["INSERT INTO ip1 VALUES (1, 1)"], "UPDATE ip1 SET v = 2 WHERE id = 1")
b10k = ["CREATE TABLE b (id INTEGER PRIMARY KEY, v INTEGER)",
        SEQ.format(n=10000) + "INSERT INTO b (v) SELECT n FROM s"]
case("delete where id <= 5000", b10k, "DELETE FROM b WHERE id <= 5000")
case("delete from t (5000 rows)", ["CREATE TABLE b (id INTEGER PRIMARY KEY, v INTEGER)",
                                   SEQ.format(n=5000) + "INSERT INTO b (v) SELECT n FROM s"], "DELETE FROM b")
case("drop table 10000 rows", b10k, "DROP TABLE b")
case("drop table, 1 more schema row", b10k + ["CREATE TABLE other (id INTEGER PRIMARY KEY)"], "DROP TABLE b")

# SQLAlchemy-level attribution: insertmanyvalues, executemany, partial fetch
eng = sa.create_engine("sqlite://")
md = sa.MetaData()
tp = sa.Table("tp", md, sa.Column("id", sa.String(20), primary_key=True), sa.Column("v", sa.Integer))
ip = sa.Table("ip", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Integer))
md.create_all(eng)
with eng.begin() as conn:
    # unmetered runs of the lookup below: pysqlite keeps the prepared statement
    # and its counters; the meter must not bill these to the metered run
    for _ in range(5):
        conn.execute(sa.select(ip.c.v).where(ip.c.id == 4)).all()
with meter(eng) as m:
    with eng.begin() as conn:
        ids = conn.execute(tp.insert().returning(tp.c.id), [{"id": f"k{i}", "v": i} for i in range(10)]).all()
        conn.execute(ip.insert(), [{"v": i} for i in range(10)])
        res = conn.execute(sa.select(ip))
        first = res.fetchmany(3)
        res.close()
        conn.execute(sa.select(ip.c.v).where(ip.c.id == 4)).all()
out["sqlalchemy"] = {
    "returned_ids": len(ids), "first": len(first),
    "records": [[r.kind, r.params_count, r.rows_affected, r.rows_returned, r.rows_read, r.rows_written]
                for r in m.records],
    "read": m.rows_read, "written": m.rows_written, "inserted_tp": m.inserted_rows("tp"),
}
print(json.dumps(out))
"""

# label -> (rows read, rows written)
EXPECTED: dict[str, tuple[int, int]] = {
    "full scan 1000": (1000, 0),
    "pk lookup": (1, 0),
    "unindexed filter": (1000, 0),
    "max unindexed": (1000, 0),
    "count(*)": (1000, 0),
    "limit 5": (5, 0),
    "text pk insert": (0, 2),
    "without rowid insert": (0, 1),
    "insert, 2 secondary indexes": (0, 3),
    "update unindexed column": (1, 1),
    "update indexed column": (1, 2),
    "insert or replace": (1, 3),
    "delete one row": (1, 1),
    "delete from t (3 rows)": (0, 3),
    "index lookup 1 row": (2, 0),
    "empty table select": (1, 0),
    "insert int pk": (0, 1),
    "insert int pk + 1 index": (0, 2),
    "insert autoincrement": (1, 2),
    "update by pk, indexed column": (1, 2),
    "delete where id <= 5000": (5001, 5000),
    "delete from t (5000 rows)": (0, 5000),
    # DROP TABLE reads sqlite_schema (1 row here) + rewinds one empty
    # ephemeral table (root-page relocation list): 2, independent of the rows
    "drop table 10000 rows": (2, 0),
    "drop table, 1 more schema row": (3, 0),
}


@pytest.fixture(scope="module")
def faithful_results() -> dict[str, Any]:
    try:
        env = metered_env()
    except FaithfulMeterUnavailable as exc:
        if IN_CI:
            pytest.fail(f"faithful SQLite meter unavailable under CI: {exc}")
        pytest.skip(f"faithful SQLite meter unavailable: {exc}")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(METER_DIR), str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"metered child failed:\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("label", "read", "written"), [(k, *v) for k, v in EXPECTED.items()])
def test_faithful_rows_read_written(faithful_results: dict[str, Any], label: str, read: int, written: int) -> None:
    got = faithful_results[label]
    assert (got["read"], got["written"]) == (read, written), got
    assert got["statements"] == 1
    # the whole count lands on the statement's record
    assert got["rec"][:2] == [read, written]


def test_faithful_rows_returned_and_affected(faithful_results: dict[str, Any]) -> None:
    assert faithful_results["full scan 1000"]["returned"] == 1000
    assert faithful_results["limit 5"]["returned"] == 5
    assert faithful_results["count(*)"]["returned"] == 1
    assert faithful_results["empty table select"]["returned"] == 0
    assert faithful_results["delete where id <= 5000"]["affected"] == 5000


def test_faithful_attribution_through_sqlalchemy(faithful_results: dict[str, Any]) -> None:
    sa_res = faithful_results["sqlalchemy"]
    assert sa_res["returned_ids"] == 10 and sa_res["first"] == 3
    imv, many, partial, lookup = sa_res["records"]
    # insertmanyvalues batch into a TEXT PRIMARY KEY table: 2 written per row;
    # 2 read per row because SQLite buffers a multi-row VALUES .. RETURNING in
    # two ephemeral tables and scans both (libSQL bills ephemeral reads, not
    # ephemeral writes).  rows_affected is recovered from the RETURNING rows.
    assert imv == ["INSERT", 1, 10, 10, 20, 20]
    # executemany: one profile event per parameter set, summed on one record
    assert many == ["INSERT", 10, 10, 0, 0, 10]
    # a SELECT closed after 3 rows: billed for what the VM visited
    assert partial[0] == "SELECT" and partial[3] >= 3 and partial[4] >= 3 and partial[5] == 0
    assert lookup == ["SELECT", 1, 0, 1, 1, 0]
    assert sa_res["inserted_tp"] == 10
    assert sa_res["read"] == sum(r[4] for r in sa_res["records"])
    assert sa_res["written"] == sum(r[5] for r in sa_res["records"])


# ---------------------------------------------------------------------------
# where the meter lives: tools/meter, the distribution parquedb-meter
# ---------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}


def test_meter_is_outside_the_product_package() -> None:
    assert Path(parquedb_meter.__file__).resolve() == METER_DIR / "parquedb_meter" / "__init__.py"
    assert importlib.util.find_spec("parquedb_orm.metering") is None
    assert (METER_DIR / "parquedb_meter" / "py.typed").is_file()
    assert issubclass(FaithfulMeterUnavailable, RuntimeError)  # what callers caught before
    for name in parquedb_meter.__all__:
        assert hasattr(parquedb_meter, name), name
    # a tool for any SQLAlchemy engine: importing it does not import parquedb_orm
    code = (
        "import sys; import parquedb_meter as m; "
        "assert 'parquedb_orm' not in sys.modules, sorted(k for k in sys.modules if k.startswith('parquedb_orm')); "
        "print(m.__file__)"
    )
    env = dict(_clean_env(), PYTHONPATH=str(METER_DIR))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=METER_DIR, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == METER_DIR / "parquedb_meter" / "__init__.py"


def test_build_script_found_relative_to_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tools/meter -> ../../scripts
    assert parquedb_meter._BUILD_SCRIPT == REPO_ROOT / "scripts" / "build_metered_sqlite.sh"
    assert parquedb_meter._BUILD_SCRIPT.is_file()
    # without the script (an installed copy outside a checkout): a clear refusal ...
    missing = tmp_path / "no-repo" / "scripts" / "build_metered_sqlite.sh"
    monkeypatch.setattr(parquedb_meter, "_BUILD_SCRIPT", missing)
    lib_dir = tmp_path / "lib"
    monkeypatch.setenv("PARQUEDB_METER_DIR", str(lib_dir))
    assert parquedb_meter.metered_lib_dir() == lib_dir
    with pytest.raises(FaithfulMeterUnavailable, match=r"scripts/build_metered_sqlite\.sh is missing"):
        parquedb_meter.build_metered_sqlite()
    if sys.platform.startswith("linux"):
        with pytest.raises(FaithfulMeterUnavailable, match="is missing"):
            metered_env()
    # ... unless the library was built before: then it is reused
    lib_dir.mkdir()
    (lib_dir / "libsqlite3.so.0").write_bytes(b"")
    assert parquedb_meter.build_metered_sqlite() == lib_dir


@pytest.mark.slow
def test_meter_distribution_builds_on_its_own(tmp_path: Path) -> None:
    # `pip install ./tools/meter`: a wheel of its own holding only parquedb_meter
    env = _clean_env()
    isolated = importlib.util.find_spec("hatchling") is None
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), *([] if isolated else ["-n"])]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path)]
        cmd += [*([] if isolated else ["--no-build-isolation"]), "."]
    proc = subprocess.run(cmd, cwd=METER_DIR, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    (wheel,) = tmp_path.glob("parquedb_meter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"parquedb_meter/__init__.py", "parquedb_meter/py.typed"} <= set(names)
    assert all(n.startswith(("parquedb_meter/", "parquedb_meter-")) for n in names), names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: parquedb-meter" in meta and "Requires-Dist: sqlalchemy" in meta
    # imported from the wheel (a pure zip on sys.path), far from the repository: no
    # build script there, so the faithful meter says what is missing
    code = (
        "import sys, parquedb_meter as m\n"
        "assert m.__file__.startswith(sys.argv[1]), m.__file__\n"
        "assert 'parquedb_orm' not in sys.modules\n"
        "try:\n    m.build_metered_sqlite()\nexcept m.FaithfulMeterUnavailable as e:\n    print(e)\n"
        "else:\n    raise SystemExit('no refusal')\n"
    )
    env = dict(env, PYTHONPATH=str(wheel), PARQUEDB_METER_DIR=str(tmp_path / "nolib"))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(wheel)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "scripts/build_metered_sqlite.sh is missing" in proc.stdout
