"""``python -m clayflow``: the ``clayflow`` command."""

import sys

from clayflow.cli import main

sys.exit(main())
