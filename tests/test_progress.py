"""Progress bars: shown on a terminal, silent in logs and pipelines and under --quiet."""

import io

import pytest

from compress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def not_quiet():
    progress.set_quiet(False)  # the test session runs quiet (conftest)
    yield
    progress.set_quiet(True)


def test_progress_is_silent_when_stderr_is_not_a_terminal(not_quiet, monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    assert list(progress.progress(range(3), desc="scoring")) == [0, 1, 2]
    bar = progress.progress_bar(3, desc="timing")
    bar.update(3)
    bar.close()
    assert stderr.getvalue() == ""


def test_progress_shows_on_a_terminal_unless_quiet(not_quiet, monkeypatch):
    stderr = _Terminal()
    monkeypatch.setattr("sys.stderr", stderr)
    assert list(progress.progress(range(3), desc="scoring")) == [0, 1, 2]
    assert "scoring" in stderr.getvalue()
    bar = progress.progress_bar(3)
    assert not bar.disable
    bar.close()
    progress.set_quiet(True)  # --quiet and --json
    assert progress.progress_bar(3).disable
    assert list(progress.progress(range(2), desc="quiet")) == [0, 1] and "quiet" not in stderr.getvalue()
