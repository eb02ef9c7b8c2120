"""`python -m compress` is the `compress` command (and what `torchrun -m compress` launches)."""

import sys

from .cli import main

sys.exit(main())
