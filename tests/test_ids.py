"""Entity ids: sqids of the counter value (core/ids.py). Ids this process encoded lately
decode without sqids, from a bounded map; every other id goes through sqids."""

from __future__ import annotations

import pytest

from parquedb_orm.core import ids


def test_recent_ids_decode_from_a_bounded_map(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_RECENT_MAX", 100)
    ids._RECENT.clear()
    try:
        made = {n: ids.encode_id(n) for n in range(1, 1_001)}
        assert len(ids._RECENT) == 100  # the oldest went first
        assert list(ids._RECENT.values()) == list(range(901, 1_001))
        # every id decodes, from the map or through sqids (and the check that it is canonical)
        assert all(ids.decode_id(e) == n for n, e in made.items())
        assert ids.decode_id(made[5] + "x") is None
    finally:
        ids._RECENT.clear()
