"""Reproducible, safely written artifacts: same inputs and seed give the same files; writes are confined."""

import errno
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compress.artifacts import (
    OutputDir,
    OutputFiles,
    check_output_dir,
    remove_unfinished,
    scratch_directory,
    sha256,
)
from compress.cli import main
from compress.errors import OutputError
from compress.zoo import CHECKPOINTS_DIR

FAST = ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_same_inputs_and_seed_give_identical_importances_channels_and_onnx_weights(tmp_path):
    checkpoint = CHECKPOINTS_DIR / "digits_cnn.pt"
    before = (sha256(checkpoint), checkpoint.stat().st_mtime_ns)
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        args = ["run", "--out", str(out), "--ratios", "0.3", "--criteria", "causal,random", "--random-seeds", "2"]
        assert main([*args, "--quiet", *FAST]) == 0
        runs.append(out)
    first, second = runs
    assert (first / "importances.npz").read_bytes() == (second / "importances.npz").read_bytes()
    history = [torch.load(out / "pruned.pt", weights_only=True)["pruning_history"] for out in runs]
    assert history[0] == history[1] and history[0]
    for onnx_file in sorted((first / "onnx").glob("*.onnx")):
        a, b = _weights(onnx_file), _weights(second / "onnx" / onnx_file.name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), onnx_file.name
    manifests = [json.loads((out / "manifest.json").read_text()) for out in runs]
    assert manifests[0]["input_model"]["sha256"] == manifests[1]["input_model"]["sha256"]
    assert manifests[0]["seeds"] == manifests[1]["seeds"] == {"seed": 0, "random_baselines": [0, 1]}
    assert manifests[0]["files"]["importances.npz"] == manifests[1]["files"]["importances.npz"]
    assert manifests[0]["input_model"]["sha256"] == before[0]
    assert (sha256(checkpoint), checkpoint.stat().st_mtime_ns) == before  # the user's input is never written


def test_output_paths_are_confined_to_the_output_directory(tmp_path):
    with OutputDir(tmp_path / "out") as out, pytest.raises(OutputError, match="outside the output directory"):
        out.path("../escape.txt")
    assert not (tmp_path / "escape.txt").exists()


def test_a_full_disk_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with OutputDir(tmp_path / "out") as out:
        monkeypatch.setattr(Path, "write_text", no_space)
        with pytest.raises(OutputError, match=r"no space left on the device while writing .*report\.json"):
            out.write_text("report.json", "{}")
        monkeypatch.undo()
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_staged_files_appear_only_when_committed(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError), OutputFiles() as files:
        files.stage(target).write_text("half")
        raise RuntimeError("crash half-way")
    assert not list(tmp_path.iterdir())
    with OutputFiles() as files:
        files.stage(target).write_text("whole")
        files.commit()
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private 0600


def test_the_output_directory_gets_the_umask_mode_like_its_files(tmp_path):
    previous = os.umask(0o022)
    try:
        with OutputDir(tmp_path / "out") as out:
            out.write_text("report.json", "{}")
            out.commit()
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0700
    assert (tmp_path / "out" / "report.json").stat().st_mode & 0o777 == 0o644


def test_a_cancel_removes_every_staged_and_scratch_path_but_nothing_committed(tmp_path):
    with OutputDir(tmp_path / "done") as done:
        done.write_text("report.json", "{}")
        done.commit()
    out = OutputDir(tmp_path / "run")
    out.write_text("report.json", "{}")
    files = OutputFiles()
    files.stage(tmp_path / "model.onnx").write_text("half")
    with scratch_directory("compress-test-") as scratch:
        (scratch / "interim.onnx").write_text("half")
        remove_unfinished()  # what the SIGTERM handler does before exiting
        assert not scratch.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["done"]
    assert (tmp_path / "done" / "report.json").exists()


def test_force_replaces_old_results_but_never_inputs_the_working_directory_or_other_files(tmp_path, monkeypatch):
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    assert check_output_dir(old, force=True) == old  # a previous result may be replaced
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", force=True) == tmp_path / "empty"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    with pytest.raises(OutputError, match="not a compress output directory"):
        check_output_dir(mine, force=True)
    (old / "weights.pt").write_text("the run's input")
    with pytest.raises(OutputError, match="holds the input"):
        check_output_dir(old, force=True, inputs=[None, old / "weights.pt"])
    monkeypatch.chdir(old)
    for target in (".", tmp_path):  # the working directory, or a directory above it
        with pytest.raises(OutputError, match="holds the current directory"):
            check_output_dir(target, force=True)
    with pytest.raises(OutputError, match="is empty"):
        check_output_dir("", force=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="broken symbolic link"):
        check_output_dir(tmp_path / "dangling", force=False)
    with pytest.raises(OutputError, match="broken symbolic link"), OutputFiles(force=True) as files:
        files.stage(tmp_path / "dangling")
    assert (tmp_path / "dangling").is_symlink() and (mine / "notes.txt").exists()


def test_run_with_force_into_the_folder_of_its_weights_is_refused(tmp_path, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    weights = folder / "digits_cnn.pt"
    weights.write_bytes((CHECKPOINTS_DIR / "digits_cnn.pt").read_bytes())
    assert main(["run", "--weights", str(weights), "--out", str(folder), "--force", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the input" in err[0]
    assert weights.read_bytes() == (CHECKPOINTS_DIR / "digits_cnn.pt").read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["digits_cnn.pt"]
