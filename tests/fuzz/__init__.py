"""Fuzz targets for the parsers that read untrusted or stored input.

Targets (`targets.py`), each a function of one input that raises `Violation` when the
contract is broken:

- `codec`: `core.codec.decode_batch` on arbitrary and damaged bytes: a list, or
  CorruptBatchError (SerializationError for a tag this process cannot resolve).
- `records`: `sql.wal.decode_events` / `decode_rel_events` (`Event.from_record`,
  `RelEvent.from_record`) on arbitrary records: events, or CorruptBatchError naming
  table and row; `records_types` additionally checks an accepted record's field types.
- `filters`: `core.filters.validate_filter` + `matches` + sorting: a result or a
  parquedb_orm error.
- `operators`: `core.operators.validate_update` + `apply_update`: a state or a
  parquedb_orm error.
- `api`: the filter and operator inputs end to end through `ParqueDB("sqlite://")`.

`corpus/<target>/` holds the seed inputs (binary for codec, JSON for the rest, see
`corpus.py`); `known.py` lists the inputs that still fail (xfail(strict=True) in
tests/test_fuzz.py) and the signatures of those failures. The normal suite runs
tests/test_fuzz.py (bounded, deterministic); `python -m tests.fuzz --seconds N` (or
`bash scripts/fuzz.sh N`) runs each target for longer and saves new failing inputs.
"""
