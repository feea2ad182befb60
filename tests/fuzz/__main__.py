"""`python -m tests.fuzz --seconds N [--target NAME]`: the long fuzz run (see run.py)."""

from __future__ import annotations

import sys

from .run import main

sys.exit(main())
