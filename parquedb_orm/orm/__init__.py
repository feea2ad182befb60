"""The ORM layer: the session extension (`session.py`), tracked models (`tracked.py`),
their capture from flushes and bulk statements (`capture.py`), history reads
(`history.py`) and the AsyncSession adapter (`aio.py`)."""

from __future__ import annotations

from parquedb_orm.orm.install import disable, enable, handle
from parquedb_orm.orm.session import store

__all__ = ["disable", "enable", "handle", "store"]
