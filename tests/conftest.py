from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
# The row meter is a development tool outside the package (tools/meter, distribution
# parquedb-meter): the tests import it from the checkout without installing it, ahead
# of any installed copy.
_METER = _TESTS.parent / "tools" / "meter"
for _path in (str(_TESTS), str(_METER)):
    if _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)
