"""Data-parallel runs: shards partition the data, summed statistics equal one process's, and
`torchrun --nproc-per-node 2 -m compress run` matches a 1-process run with only rank 0 writing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from builders import TwoConv, batches, randomise_batchnorm

from compress.causal.scorer import CausalScorer
from compress.cli import main
from compress.distributed import Distributed

FAST = ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_shards_partition_the_data_without_padding():
    data = list(range(11))
    shards = [list(Distributed(rank=r, world_size=3, backend="gloo").shard(data)) for r in range(3)]
    assert sorted(x for shard in shards for x in shard) == data
    assert [len(s) for s in shards] == [4, 4, 3]
    assert Distributed().shard(data) is data  # one process: the whole set


def test_summed_statistics_of_two_shards_equal_one_pass():
    model = randomise_batchnorm(TwoConv())
    data = batches(n=96, shape=(3, 8, 8), batch_size=16)
    example = data[0][0]
    whole = CausalScorer().fit(model, data, example)
    halves = [CausalScorer().collect(model, data[i::2], example) for i in range(2)]

    def sum_across(tensors):  # what all_reduce does, for two "processes" living here
        others = [t for name in halves[1].graph_.consumers for t in halves[1].statistics_[name].tensors()]
        count = torch.tensor(float(halves[1].n_images_), dtype=torch.float64)
        for mine, theirs in zip(tensors, [count, *others], strict=True):
            mine += theirs

    merged = halves[0].reduce_statistics(sum_across).solve()
    assert merged.n_images_ == whole.n_images_ == 96
    for root, scores in whole.importances_.items():
        np.testing.assert_allclose(merged.importances_[root], scores, rtol=1e-9)


def test_two_processes_under_torchrun_match_one(tmp_path):
    """gloo on CPU, 2 processes: importances within 1e-6 relative of a 1-process run, the same accuracy
    before fine-tuning (sharded evaluation), DDP fine-tuning, and only rank 0 writes."""
    common = ["--calibration-size", "300", "--ratios", "0.3", "--criteria", "causal", "--finetune-epochs", "1"]
    common += ["--quiet", *FAST]
    scratch_before = set(os.listdir(tempfile.gettempdir()))
    two = tmp_path / "two"
    result = subprocess.run(
        [*TORCHRUN, "-m", "compress", "run", "--out", str(two), *common],
        capture_output=True,
        text=True,
        env=TORCHRUN_ENV,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    one = tmp_path / "one"
    assert main(["run", "--out", str(one), *common]) == 0

    a, b = np.load(one / "importances.npz"), np.load(two / "importances.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        scale = np.maximum(np.abs(a[key]), 1e-12)
        assert np.max(np.abs(a[key] - b[key]) / scale) <= 1e-6, key

    report_one, report_two = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert report_two["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert report_two["scoring"]["causal"]["calibration_images"] == 300
    for v1, v2 in zip(report_one["variants"], report_two["variants"], strict=True):
        assert v1["name"] == v2["name"]
        for key in ("top1_before_recovery", "top1_before_finetune"):
            if key in v1["accuracy"]:
                assert v1["accuracy"][key] == v2["accuracy"][key]
    tuned = report_two["variants"][1]["finetune"]
    assert (
        tuned["world_size"] == 2
        and tuned["images_per_epoch"] == report_one["variants"][1]["finetune"]["images_per_epoch"]
    )
    # rank 0 alone wrote, once; the other rank's scratch directory is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - scratch_before if n.startswith("compress-rank")]


def test_a_failing_run_under_torchrun_says_why_in_one_line_and_exits_1(tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "missing"
    result = subprocess.run(
        [*TORCHRUN, "-m", "compress", "run", "--out", str(out), "--data", str(missing), "--quiet"],
        capture_output=True,
        text=True,
        env=TORCHRUN_ENV,
        timeout=300,
    )
    assert result.returncode == 1  # torchrun's own code when a rank fails (each rank exited with 2)
    # each rank that failed says why in one line; what follows is torchrun's own summary
    ours = [line for line in result.stderr.splitlines() if line.startswith("compress: ")]
    assert ours and all(line.startswith(f"compress: error: data not found: {missing}") for line in ours)
    assert not out.exists() and not list(tmp_path.iterdir())
