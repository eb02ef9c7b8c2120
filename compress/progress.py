"""What the terminal shows: progress bars on a terminal (silent in logs and pipelines), and nothing of
what libraries print while they work."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence every progress bar (the CLI's --quiet and --json)."""
    global _quiet
    _quiet = quiet


def progress(iterable: Iterable[T], **kwargs) -> Iterator[T]:
    """`tqdm(iterable)`, disabled when stderr is not a terminal or output is quiet."""
    disable = _quiet or not sys.stderr.isatty()
    return iter(tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kwargs))


def progress_bar(total: int, **kwargs) -> tqdm:
    """A manual `tqdm` bar (call `.update(n)`), disabled like `progress`."""
    disable = _quiet or not sys.stderr.isatty()
    return tqdm(total=total, disable=disable, leave=False, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def quiet_library_output():
    """Exporters, quantisers and model hubs print progress, log tracebacks of what they recover from and
    warn about deprecations; failures that matter reach us as exceptions, so keep the terminal clean."""
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
