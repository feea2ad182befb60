"""The documentation stays true: the API reference builds with a docstring for every export,
every relative link of README.md and docs/*.md reaches a file of the repository, and the
```python blocks of README.md and docs/getting-started.md run as they are.

A ```python block that is only a fragment (it needs a server, or names a model the page
does not define) is marked by an `<!-- fragment -->` line right before its fence; those,
and only those, are not run. Pages keep them few (FRAGMENTS_ALLOWED).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pdoc.doc
import pytest

import parquedb_orm

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = sorted([REPO / "README.md", *DOCS.glob("*.md")])
RUN_BLOCKS_OF = ("README.md", "docs/getting-started.md")
FRAGMENT_MARK = "<!-- fragment -->"
FRAGMENTS_ALLOWED = 2  # per page: a fragment is a snippet no test runs, keep them rare

FENCE = re.compile(r"^(```|~~~)")
# [text](target) and ![alt](target); a target may carry a "title"
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# [text]: target (reference definitions)
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+.*)?$", re.M)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _prose(text: str) -> str:
    """The page without its fenced code blocks and inline code (a link there is an example)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def _python_blocks(text: str) -> tuple[list[str], int]:
    """The ```python blocks of a page, in order, without the fragments; and how many fragments."""
    blocks: list[str] = []
    fragments = 0
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            lang = stripped[3:].strip().lower()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            if lang == "python":
                before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
                if before == FRAGMENT_MARK:
                    fragments += 1
                else:
                    blocks.append("\n".join(lines[i + 1 : j]))
            i = j + 1
            continue
        i += 1
    return blocks, fragments


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


# --------------------------------------------------------------------------- API reference
def test_every_export_has_a_docstring() -> None:
    module = pdoc.doc.Module(parquedb_orm)
    missing = []
    for name in parquedb_orm.__all__:
        value = getattr(parquedb_orm, name)
        doc = pdoc.doc.Module(value) if isinstance(value, type(parquedb_orm)) else module.get(name)
        if doc is None or not doc.docstring.strip():
            missing.append(name)
    assert not missing, f"exported without a docstring (pdoc shows none): {missing}"


def test_the_api_reference_builds_and_shows_every_export(tmp_path: Path) -> None:
    out = tmp_path / "api"
    proc = subprocess.run(
        [sys.executable, "-m", "pdoc", "parquedb_orm", "-o", str(out)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    page = (out / "parquedb_orm.html").read_text(encoding="utf-8")
    absent = []
    for name in parquedb_orm.__all__:
        if isinstance(getattr(parquedb_orm, name), type(parquedb_orm)):
            if not (out / "parquedb_orm" / f"{name}.html").is_file():
                absent.append(name)
        elif f'id="{name}"' not in page:
            absent.append(name)
    assert not absent, f"not in the generated reference: {absent}"
    # the docstrings themselves are in it, not only the names
    assert "An event-sourced entity and relationship store on a SQL database." in page
    assert "The regular expression every namespace matches" in page


# --------------------------------------------------------------------------- links
def _links(page: Path) -> list[str]:
    prose = _prose(page.read_text(encoding="utf-8"))
    return LINK.findall(prose) + REF_DEF.findall(prose)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: the text without its markup, lower case,
    without punctuation, spaces as hyphens; a repeated one gets -1, -2, ..."""
    found: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or heading is None:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.replace("`", "").lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in found:
            n += 1
            anchor = f"{slug}-{n}"
        found.add(anchor)
    return found


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_reach_files_of_the_repository(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # a web address
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path.split("?", 1)[0]).resolve() if path else page
        if not resolved.is_relative_to(REPO):
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no such heading in {_rel(resolved)})")
    assert not broken, f"{_rel(page)}: {broken}"


def test_anchors_follow_github(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# A `Thing(...)`: its use\n## Inside the app's session\n## Notes\n## Notes\n```\n# not\n```\n")
    assert _anchors(page) == {"a-thing-its-use", "inside-the-apps-session", "notes", "notes-1"}


def test_link_extraction_sees_the_forms_the_pages_use() -> None:
    prose = _prose('See [a](docs/a.md), ![b](img/b.png "B"), `[c](not-a-link.md)`.\n[d]: ../d.md\n')
    assert LINK.findall(prose) == ["docs/a.md", "img/b.png"]
    assert REF_DEF.findall(prose) == ["../d.md"]


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_page_points_outside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text, f"{_rel(page)} mentions ../shared"


def test_the_docs_index_lists_every_page() -> None:
    index = DOCS / "README.md"
    linked = {(index.parent / t.split("#", 1)[0]).resolve() for t in _links(index)}
    unlisted = [_rel(p) for p in sorted(DOCS.glob("*.md")) if p != index and p.resolve() not in linked]
    assert not unlisted, f"docs/README.md does not link to {unlisted}"


# --------------------------------------------------------------------------- snippets
def test_fragment_marks_are_recognised() -> None:
    text = "```python\nx = 1\n```\n\n<!-- fragment -->\n```python\nmissing()\n```\n```bash\nls\n```\n"
    assert _python_blocks(text) == (["x = 1"], 1)


@pytest.mark.parametrize("name", RUN_BLOCKS_OF)
def test_python_blocks_run(name: str, tmp_path: Path) -> None:
    """A page's blocks run in order in one fresh interpreter, in an empty folder (as a reader
    pasting them one after the other would), so a later block may use an earlier one's names."""
    blocks, fragments = _python_blocks((REPO / name).read_text(encoding="utf-8"))
    assert blocks, f"{name} has no runnable ```python block"
    assert fragments <= FRAGMENTS_ALLOWED, f"{name} has {fragments} fragments; keep them few"
    script = tmp_path / "snippets.py"
    script.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, f"{name}: its python blocks failed:\n{proc.stderr[-4000:]}"


def test_the_readme_quick_start_is_two_commands_in_a_fresh_venv() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in quick.splitlines() if line.strip().startswith(("python -m venv", "pip "))]
    assert commands == [
        "python -m venv .venv && source .venv/bin/activate",
        'pip install -e ".[demo]" && parquedb demo',
        'pip install -e ".[test]" && pytest',
    ], commands
