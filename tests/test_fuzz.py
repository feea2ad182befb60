"""The fuzz targets (tests/fuzz), bounded for the normal suite: every corpus file replayed,
then a fixed set of generated examples per target (derandomized: the same ones each run).
The long run is `python -m tests.fuzz --seconds N` (docs/development.md).

Inputs that break a contract today are listed in tests/fuzz/known.py and run here as
xfail(strict=True): fixing the library turns them into failures, to be removed from there.
"""

from __future__ import annotations

from typing import Any

import pytest
from fuzz import corpus, known, strategies, targets
from fuzz.run import bounded, tolerant
from hypothesis import given

#: generated examples per target in the normal suite (kept under ~30 s in all)
EXAMPLES = {"codec": 300, "roundtrip": 100, "records": 200, "types": 30, "filters": 250, "operators": 250, "api": 60}


def _case(target: str, path: Any) -> Any:
    name = f"{target}/{path.name}"
    reason = known.FILES.get(name)
    marks = [pytest.mark.xfail(strict=True, raises=targets.Violation, reason=reason)] if reason else []
    return pytest.param(target, path, id=name, marks=marks)


CORPUS_CASES = [_case(t, p) for t in targets.CHECKS for p in corpus.files(t)]
API_FILES = [(kind, p) for kind in ("filters", "operators") for p in corpus.files(kind)]


def test_corpus_is_there() -> None:
    for target in targets.CHECKS:
        assert len(corpus.files(target)) >= 20, target
    missing = [name for name in known.FILES if not (corpus.CORPUS / name).is_file()]
    assert not missing, f"known.py lists files that are not in the corpus: {missing}"


@pytest.mark.parametrize(("target", "path"), CORPUS_CASES)
def test_corpus(target: str, path: Any) -> None:
    targets.CHECKS[target](corpus.load(path))


def test_corpus_round_trips() -> None:
    """Every JSON corpus file reads back as what it was written from."""
    for target in targets.CHECKS:
        if target in corpus.BINARY_TARGETS:
            continue
        for path in corpus.files(target):
            text = path.read_text("utf-8")
            assert corpus.dumps_input(corpus.from_jsonable_text(text)) == text, path


# ------------------------------------------------------------------ generated inputs
@bounded(EXAMPLES["codec"])
@given(strategies.batches())
def test_fuzz_codec(blob: bytes) -> None:
    tolerant(targets.check_codec)(blob)


@bounded(EXAMPLES["roundtrip"])
@given(strategies.storable_records())
def test_fuzz_codec_round_trip(records: list[Any]) -> None:
    targets.check_codec_roundtrip(records)


@bounded(EXAMPLES["records"])
@given(strategies.records())
def test_fuzz_records(records: Any) -> None:
    tolerant(targets.check_records)(records)


@bounded(EXAMPLES["types"])
@given(strategies.wrong_type_records())
def test_fuzz_record_field_types(records: Any) -> None:
    targets.check_record_types(records)


@bounded(EXAMPLES["filters"])
@given(strategies.filter_inputs())
def test_fuzz_filters(value: Any) -> None:
    tolerant(targets.check_filter)(value)


@bounded(EXAMPLES["operators"])
@given(strategies.update_inputs())
def test_fuzz_operators(value: Any) -> None:
    tolerant(targets.check_update)(value)


# ------------------------------------------------------------------ end to end (public API)
def test_api_corpus() -> None:
    """The filter and operator corpus through ParqueDB("sqlite://"): create, then find /
    update (known failures, if any, are left to the corpus replay above)."""
    api = targets.Api()
    try:
        for kind, path in API_FILES:
            if f"{kind}/{path.name}" not in known.FILES:
                targets.check_api(api, corpus.load(path), kind)
    finally:
        api.close()


def test_fuzz_api() -> None:
    api = targets.Api()
    check = tolerant(lambda item: targets.check_api(api, item[1], item[0]))
    strategy = strategies.st.one_of(
        strategies.filter_inputs().map(lambda v: ("filters", v)),
        strategies.update_inputs().map(lambda v: ("operators", v)),
    )

    @bounded(EXAMPLES["api"])
    @given(strategy)
    def run(item: tuple[str, Any]) -> None:
        check(item)

    try:
        run()
    finally:
        api.close()
