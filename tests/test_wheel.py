"""The wheel carries the migrations: build it, install it into a fresh venv, run `parquedb upgrade`.

The venv sees the site-packages of the interpreter running the tests (so no dependency is
downloaded): the system ones, and those of the user's own venv when the tests run in one
(`--system-site-packages` alone would see only the base interpreter's). The package
itself must come from the wheel: it is installed into the venv (which comes first on
sys.path), commands run from a temporary directory with PYTHONPATH cleared, and the test
checks where `parquedb_orm` and its migrations were imported from.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from parquedb_orm import migrate
from parquedb_orm.sql.models import metadata

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _build_wheel(out: Path, env: dict[str, str]) -> Path:
    # Without isolation when the build backend is at hand (fast, offline); else let
    # pip/build fetch hatchling from the package index as usual.
    isolated = importlib.util.find_spec("hatchling") is None
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out)]
        cmd += [] if isolated else ["--no-isolation"]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out)]
        cmd += [] if isolated else ["--no-build-isolation"]
        cmd.append(str(REPO))
    _run(cmd, cwd=REPO, env=env)
    (wheel,) = out.glob("parquedb_orm-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_installs_and_migrates(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PARQUEDB_URL")}
    wheel = _build_wheel(tmp_path / "dist", env)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "parquedb_orm/migrations/env.py" in names
    assert "parquedb_orm/migrations/script.py.mako" in names
    assert {
        f"parquedb_orm/migrations/versions/{p.name}" for p in (REPO / "migrations/versions").glob("pq*.py")
    } <= names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], cwd=tmp_path, env=env)
    py, parquedb = venv / "bin" / "python", venv / "bin" / "parquedb"
    if sys.prefix != sys.base_prefix:
        # plain path lines: the outer venv's own .pth files (its editable install of this
        # package among them) are not processed, so parquedb_orm still comes from the wheel
        site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path, env=env)
        outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        (Path(site.stdout.strip()) / "_outer_venv.pth").write_text("".join(f"{p}\n" for p in outer))
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheel], cwd=tmp_path, env=env)

    work = tmp_path / "work"
    work.mkdir()
    where = _run(
        [
            py,
            "-c",
            "import parquedb_orm, parquedb_orm.migrate as m; print(parquedb_orm.__file__); print(m.migrations_dir())",
        ],
        cwd=work,
        env=env,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the wheel's copy, not the source tree
    # what an app's alembic.ini may name in version_locations (docs/migrations.md)
    resource = _run(
        [
            py,
            "-c",
            "from alembic.util import coerce_resource_to_filename as c; print(c('parquedb_orm:migrations/versions'))",
        ],
        cwd=work,
        env=env,
    ).stdout.strip()
    assert Path(resource).is_relative_to(venv) and (Path(resource) / "pq0001_legacy_layout.py").is_file()

    db = work / "x.db"
    url = f"sqlite:///{db}"
    _run([parquedb, "upgrade", url], cwd=work, env=env)
    with sqlite3.connect(db) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(metadata.tables) | {migrate.VERSION_TABLE} <= tables
    assert not tables & {"event_batches", "relationships"}

    head = migrate.heads()[0]
    out = _run([parquedb, "current", url], cwd=work, env=env).stdout
    assert out.strip() == f"{head} (head)"

    _run([parquedb, "downgrade", url, "pq0001"], cwd=work, env=env)
    assert _run([parquedb, "current", url], cwd=work, env=env).stdout.strip() == "pq0001"
