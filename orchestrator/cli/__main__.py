"""`python -m orchestrator.cli ...`, as the `polyprune` console script."""

import sys

from . import main

sys.exit(main())
