"""`python -m parquedb_orm.cli`: the same as the `parquedb` console script."""

import sys

from parquedb_orm.cli import main

sys.exit(main())
