"""The errors users see.

Every failure a user can cause (a missing file, a bad flag, data that does not fit the model) is a
`CompressError`: the CLI prints its message as one line and exits with its `exit_code`, without a
traceback. Anything else escaping the pipeline is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message (libraries often follow it with pages of detail), or its type
    name when the message is empty: what a one-line error quotes."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class CompressError(Exception):
    """A failure the user can act on; the message says what, where and what to do."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(CompressError):
    """An option value is invalid or options contradict each other."""


class DataError(CompressError):
    """The data source is missing, empty, unreadable or does not fit the model."""


class ModelError(CompressError):
    """The model name, checkpoint or weights are missing, corrupt or do not fit."""


class PruningError(CompressError):
    """The model cannot be traced or pruned."""


class TrainingError(CompressError):
    """Fine-tuning diverged (the loss is no longer finite): the settings need changing."""


class ExportError(CompressError):
    """The model cannot be exported to ONNX, or the export does not match PyTorch."""


class OutputError(CompressError):
    """The output location cannot be written (exists, not writable, no space)."""


class CompressWarning(UserWarning):
    """Something the user should know that did not stop the run (e.g. a group kept unpruned)."""


@contextlib.contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Within the block, every distinct CompressWarning is logged once, as one line on the "compress"
    logger ("warning: <message>", without a source line), and kept in order in the list yielded, for
    the report. Other warnings are left to the enclosing handler."""
    seen: list[str] = []
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, CompressWarning):
            return previous(message, category, filename, lineno, file, line)
        text = " ".join(str(message).split())
        if text not in seen:
            seen.append(text)
            logging.getLogger("compress").warning("warning: %s", text)
        return None

    with warnings.catch_warnings():
        warnings.simplefilter("always", CompressWarning)  # repeats reach `show`, which drops them
        warnings.showwarning = show
        yield seen
