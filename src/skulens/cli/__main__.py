"""`python -m skulens.cli ...`, the same as the `skulens` command."""

import sys

from . import main

sys.exit(main())
