"""Progress bars that show on a terminal and stay silent in logs and pipelines."""

from __future__ import annotations

import sys
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
