"""The `compress` command's entry point: the heavy imports first, where a Ctrl-C still counts.

Importing the command line takes seconds (torch, torch-pruning, onnx, onnxruntime). A Ctrl-C in that
time would print an import traceback, or be lost: torch-pruning imports timm inside a bare `except:`,
which swallows the KeyboardInterrupt, and the run would go on to finish with exit 0. So SIGINT is only
noted while importing, and honoured (exit 130, one line) once the imports are done.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def console_main() -> None:
    """The `compress` command and `python -m compress`."""
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        from .cli import console_main as run_command

        with contextlib.suppress(ImportError):  # an optional extra; imported here for the same reason
            import onnxruntime  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        sys.stderr.write("compress: interrupted; no results were written\n")
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    run_command()
