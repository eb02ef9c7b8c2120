"""Predicted MACs of pruned shapes against the MACs counted on the pruned models."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from builders import Depthwise, FlattenHead, TwoConv

from compress.cifar_resnet import CifarResNet
from compress.costs import MacsModel
from compress.criteria import importance_factory
from compress.pruning import count_macs_params, group_widths, output_layer_names, prune
from compress.zoo import DigitsCNN


@pytest.mark.parametrize(
    "build, shape",
    [
        (DigitsCNN, (1, 8, 8)),
        (TwoConv, (3, 8, 8)),
        (FlattenHead, (3, 4, 4)),
        (Depthwise, (3, 8, 8)),
        (CifarResNet, (3, 32, 32)),  # option-A shortcuts: fixed selection layers
    ],
)
def test_predicted_macs_match_the_pruned_models_and_never_undercount(build, shape):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(4, *shape)
    protected = output_layer_names(model, x)
    costs = MacsModel(model, x, protected)
    assert costs.total_ == count_macs_params(model, x)[0]
    assert costs.macs(costs.channels_) == pytest.approx(costs.total_)
    assert costs.channels_ == group_widths(model, x, protected)
    rng = np.random.default_rng(0)
    for _ in range(3):
        keep = {root: int(rng.integers(1, width + 1)) for root, width in costs.channels_.items()}
        pruned = prune(model, importance_factory("l1"), 0.5, x, protected=protected, keep=keep).model
        measured = count_macs_params(pruned, x)[0]
        predicted = costs.macs(keep)
        assert measured <= predicted <= 1.03 * measured  # batch norms etc. held at their full cost


class Attending(nn.Module):
    """Tokens -> linear -> multi-head attention (counted by torch-pruning as one block, its inner
    projections left without a count) -> classifier."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h.mean(1))


def test_layers_counted_inside_a_block_are_held_at_the_blocks_cost():
    model, x = Attending().eval(), torch.randn(4, 6, 8)
    costs = MacsModel(model, x, ["head"])
    assert costs.macs({}) == costs.total_ == count_macs_params(model, x)[0]
    assert costs.macs({"embed": 8}) < costs.total_  # the embedding's own cost still follows its width
