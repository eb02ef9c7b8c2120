"""Batch-norm re-estimation: where recovery after pruning starts."""

import torch

from compress import prune, recalibrate_batchnorm
from compress.criteria import l1_importance
from compress.evaluation import evaluate


def test_batchnorm_reestimation_takes_the_calibration_statistics_and_recovers_accuracy(digits_splits, digits_model):
    pruned = prune(digits_model, lambda m: l1_importance(), 0.5, digits_splits.example_batch()).model
    stale = {k: v.clone() for k, v in pruned.state_dict().items()}
    evaluation = digits_splits.loader("evaluation", 256)
    before = evaluate(pruned, evaluation)["top1"]
    images = torch.cat([x for x, _ in digits_splits.loader("calibration", 256)])[:1200]
    halves = [(images[:600], None), (images[600:], None)]

    assert recalibrate_batchnorm(pruned, halves) == 4
    with torch.no_grad():
        seen = [pruned.conv1(half) for half, _ in halves]  # what bn1 normalises (no batch norm before it)
    # a cumulative average (every batch weighs the same), not the layer's default momentum of 0.1
    torch.testing.assert_close(pruned.bn1.running_mean, torch.cat(seen).mean((0, 2, 3)))
    torch.testing.assert_close(pruned.bn1.running_var, sum(s.var((0, 2, 3)) for s in seen) / 2)
    assert pruned.bn1.momentum == 0.1 and not pruned.training  # the layers are handed back as they were
    for name, value in pruned.state_dict().items():
        moved = not torch.equal(value, stale[name])
        assert moved == ("running" in name or "num_batches" in name), name  # statistics only, never a weight
    assert evaluate(pruned, evaluation)["top1"] > before + 10  # the stale statistics were what hurt
