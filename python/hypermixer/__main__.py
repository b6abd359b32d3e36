"""``python -m hypermixer``: the same command line as ``hypermixer``."""

import sys

from .cli import main

sys.exit(main())
