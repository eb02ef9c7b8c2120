"""The output directory: staged, confined, and committed only when complete.

Everything is written into a hidden staging directory beside the target and renamed into place at the
end, so an interrupted run leaves nothing that looks like a finished result, and an existing
directory is replaced only when the user said --force.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import OutputError

PACKAGES = (
    "compress",
    "torch",
    "torchvision",
    "torch-pruning",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "numpy",
    "scikit-learn",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions from package metadata (torch-pruning's __version__ is wrong in 1.6.1)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    # onnxruntime-gpu replaces the onnxruntime distribution but keeps the module name
    if versions.get("onnxruntime") is None:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions["onnxruntime"] = metadata.version("onnxruntime-gpu")
    return versions


def environment() -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "executable": sys.executable,
    }


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Staged and scratch paths of this process not yet committed or removed. A cancelled run (SIGTERM)
# removes them from the signal handler and exits at once, rather than raising into whatever C++ code
# the main thread is in (see compress.cli).
_UNFINISHED: set[Path] = set()


def remove_unfinished() -> None:
    """Remove every staged or scratch path of this process that is not committed."""
    for path in list(_UNFINISHED):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    _UNFINISHED.clear()


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed on leaving the context and by a cancelled run."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _UNFINISHED.add(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        _UNFINISHED.discard(path)


def _output_path(target: str | Path, instead: str) -> Path:
    """`target` as an absolute path; a broken symbolic link there is refused (writing would replace the
    link, not create what it points to)."""
    target = Path(target).expanduser().absolute()
    if target.is_symlink() and not target.exists():
        raise OutputError(f"output path {target} is a broken symbolic link; remove it or choose {instead}")
    return target


def check_output_dir(target: str | Path, force: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """`target` as an absolute path, or an OutputError if it exists and may not be replaced.

    Even with `force`, only a directory compress wrote (it has a manifest.json) or an empty one is
    replaced, and never one that holds the current directory or one of the run's `inputs`: --force
    means "replace my old results", not "delete whatever is there".
    """
    if not str(target).strip():
        raise OutputError("the output directory is empty; give --out a directory name")
    target = _output_path(target, "another --out")
    if target.exists():
        if not force:
            raise OutputError(
                f"output directory {target} already exists; choose another --out or pass --force to replace it"
            )
        if not target.is_dir():
            raise OutputError(f"output path {target} exists and is not a directory")
        resolved = target.resolve()
        held = [Path.cwd(), *(Path(p).expanduser() for p in inputs if p)]
        for path in held:
            if path.exists() and path.resolve().is_relative_to(resolved):
                what = "the current directory" if path == held[0] else f"the input {path}"
                raise OutputError(f"refusing to replace {target}: it holds {what}; choose another --out")
        if any(target.iterdir()) and not (target / "manifest.json").is_file():
            raise OutputError(
                f"refusing to replace {target}: it is not a compress output directory (no manifest.json); "
                "choose another --out or remove it yourself"
            )
    return target


class OutputDir:
    """A run's output directory, written in a staging area and moved into place by `commit`.

    Use as a context manager: leaving it by an exception removes the staging area.
    """

    def __init__(self, target: str | Path, force: bool = False, inputs: Iterable[str | Path | None] = ()):
        self.target = check_output_dir(target, force, inputs)
        self.force = force
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=parent))
            _UNFINISHED.add(self.staging)
            os.chmod(self.staging, 0o777 & ~current_umask())  # mkdtemp's private 0700 is not a user's directory
        except OSError as exc:
            raise OutputError(f"cannot create the output directory in {parent}: {exc.strerror or exc}") from exc
        self.committed = False

    def path(self, relative: str) -> Path:
        """Where `relative` goes in the staging area; paths outside the directory are refused."""
        candidate = (self.staging / relative).resolve()
        if not candidate.is_relative_to(self.staging.resolve()):
            raise OutputError(f"refusing to write {relative!r} outside the output directory")
        candidate.parent.mkdir(parents=True, exist_ok=True)
        return candidate

    def write_text(self, relative: str, text: str) -> Path:
        path = self.path(relative)
        with disk_errors(path):
            path.write_text(text)
        return path

    def write_json(self, relative: str, data: Any) -> Path:
        return self.write_text(relative, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.staging)) for p in self.staging.rglob("*") if p.is_file())

    def write_manifest(self, extra: dict[str, Any]) -> Path:
        """manifest.json: sha256 of every other file, plus what the caller adds (config, seeds...)."""
        files = {
            name: {"sha256": sha256(self.staging / name), "bytes": (self.staging / name).stat().st_size}
            for name in self.files()
            if name != "manifest.json"
        }
        return self.write_json("manifest.json", {**extra, "files": files})

    def commit(self) -> Path:
        """Move the finished directory into place (replacing the old one only under --force)."""
        trash = None
        try:
            if self.target.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
                os.replace(self.target, trash / "old")
            os.replace(self.staging, self.target)
            _UNFINISHED.discard(self.staging)
        except OSError as exc:
            raise OutputError(f"cannot move the results into {self.target}: {exc.strerror or exc}") from exc
        finally:
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        self.committed = True
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        _UNFINISHED.discard(self.staging)

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()


class OutputFiles:
    """Single output files (not a directory), each staged under a hidden name beside its target and
    renamed into place by `commit` only when all are complete; an existing target is refused unless
    `force`. Leaving the context without `commit` removes every staged file."""

    def __init__(self, force: bool = False):
        self.force = force
        self.staged: dict[Path, Path] = {}  # target -> staging path
        self.committed = False

    def stage(self, target: str | Path) -> Path:
        target = _output_path(target, "another output")
        if target.exists() and not self.force:
            raise OutputError(f"{target} already exists; choose another output or pass --force to replace it")
        if target.is_dir():
            raise OutputError(f"output path {target} is a directory; give a file name")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
            os.close(handle)
        except OSError as exc:
            raise OutputError(f"cannot write in {target.parent}: {exc.strerror or exc}") from exc
        self.staged[target] = Path(name)
        _UNFINISHED.add(Path(name))
        return Path(name)

    def commit(self) -> list[Path]:
        umask = current_umask()
        for target, staging in self.staged.items():
            try:
                os.chmod(staging, 0o666 & ~umask)  # mkstemp's private 0600 is not what a user's file gets
                os.replace(staging, target)
                _UNFINISHED.discard(staging)
            except OSError as exc:
                raise OutputError(f"cannot move the result into {target}: {exc.strerror or exc}") from exc
        self.committed = True
        return list(self.staged)

    def __enter__(self) -> OutputFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            for staging in self.staged.values():
                staging.unlink(missing_ok=True)
                _UNFINISHED.discard(staging)


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def disk_errors(path: Path):
    """Turn 'no space left' and permission errors while writing `path` into a clear OutputError."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(
                f"no space left on the device while writing {path}; free space or choose another --out"
            ) from exc
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
