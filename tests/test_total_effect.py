"""The total-effect criterion: do(channel := its mean) at every consumer, to first order, on g = the
log-probability of the predicted class, root mean square over images."""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from builders import TwoConv

from compress.causal.total_effect import TotalEffectScorer


def _by_hand(model: TwoConv, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The same quantity computed directly on TwoConv's layers, without hooks or the traced graph."""
    with torch.no_grad():
        a1 = F.relu(model.conv1(images))  # what conv2 reads
        pooled = F.adaptive_avg_pool2d(F.relu(model.conv2(a1)), 1).flatten(1)  # what fc reads
    a1 = a1.clone().requires_grad_(True)
    pooled_leaf = F.adaptive_avg_pool2d(F.relu(model.conv2(a1)), 1).flatten(1)
    pooled_leaf.retain_grad()
    logits = model.fc(pooled_leaf)
    F.log_softmax(logits, 1).gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    s1 = ((a1 - a1.mean((0, 2, 3), keepdim=True)) * a1.grad).sum((2, 3))
    s2 = (pooled - pooled.mean(0)) * pooled_leaf.grad
    return {"conv1": s1.pow(2).mean(0).sqrt().detach().numpy(), "conv2": s2.pow(2).mean(0).sqrt().numpy()}


def test_total_effects_equal_a_direct_computation_on_the_layers():
    torch.manual_seed(0)
    model = TwoConv().eval()
    images = torch.randn(24, 3, 8, 8)
    scorer = TotalEffectScorer(max_images=24).fit(model, [(images[:10], None), (images[10:], None)])
    expected = _by_hand(model, images)
    assert set(scorer.importances_) == set(expected)
    for root, scores in expected.items():
        np.testing.assert_allclose(scorer.importances_[root], scores, rtol=1e-4, atol=1e-7)
    assert scorer.n_images_ == 24


def test_only_the_first_max_images_are_used_and_the_model_is_unchanged():
    torch.manual_seed(1)
    model = TwoConv().eval()
    images = torch.randn(30, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    few = TotalEffectScorer(max_images=12).fit(model, [(images[:20], None), (images[20:], None)])
    assert few.n_images_ == 12
    expected = _by_hand(model, images[:12])
    np.testing.assert_allclose(few.importances_["conv1"], expected["conv1"], rtol=1e-4, atol=1e-7)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_channel_nothing_reads_or_that_never_varies_has_no_effect():
    torch.manual_seed(2)
    model = TwoConv().eval()
    with torch.no_grad():
        model.conv2.weight[:, 1] = 0.0  # conv1's channel 1 is read by nobody
        model.conv1.weight[3] = 0.0  # conv1's channel 3 is the constant relu(bias)
        model.conv1.bias[3] = 0.5
        model.fc.weight[:, 2] *= 10.0  # conv2's channel 2 weighs ten times more in the output
    scores = TotalEffectScorer(max_images=16).fit(model, [(torch.randn(16, 3, 8, 8), None)]).importances_
    assert scores["conv1"][1] == 0.0 and scores["conv1"][3] == 0.0
    assert scores["conv1"][[0, 2, 4, 5]].min() > 0
    assert scores["conv2"].argmax() == 2


def test_bad_max_images_names_the_argument():
    import pytest

    with pytest.raises(ValueError, match="max_images"):
        TotalEffectScorer(max_images=0).fit(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), [torch.randn(2, 4)])


class _SharedInput(nn.Module):
    """conv1's output is read by two convolutions: each must see only its own path's gradient (conv0
    makes conv1's output part of the autograd graph, as it is inside any real network)."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.left = nn.Conv2d(4, 5, 3, padding=1)
        self.right = nn.Conv2d(4, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        a = F.relu(self.conv1(F.relu(self.conv0(x))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.left(a)) + self.right(a), 1).flatten(1))


def test_a_tensor_read_by_two_layers_counts_each_path_once():
    torch.manual_seed(3)
    model = _SharedInput().eval()
    images = torch.randn(16, 3, 6, 6)
    with torch.no_grad():
        a = F.relu(model.conv1(F.relu(model.conv0(images))))
    leaf = a.clone().requires_grad_(True)
    logits = model.fc(F.adaptive_avg_pool2d(F.relu(model.left(leaf)) + model.right(leaf), 1).flatten(1))
    F.log_softmax(logits, 1).gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    by_hand = ((a - a.mean((0, 2, 3), keepdim=True)) * leaf.grad).sum((2, 3)).pow(2).mean(0).sqrt()
    scorer = TotalEffectScorer(max_images=16).fit(model, [(images, None)])
    np.testing.assert_allclose(scorer.importances_["conv1"], by_hand.numpy(), rtol=1e-4, atol=1e-7)
