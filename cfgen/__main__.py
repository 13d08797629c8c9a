"""``python -m cfgen``: the same as the ``cfgen`` command."""

import sys

from cfgen.cli import main

sys.exit(main())
