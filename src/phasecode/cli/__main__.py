"""`python -m phasecode.cli …`, the same as the `phasecode` command."""

import sys

from phasecode.cli import main

sys.exit(main())
