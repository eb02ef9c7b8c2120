"""`python -m compress` is the `compress` command (and what `torchrun -m compress` launches)."""

from ._console import console_main

console_main()
