"""The total-effect criterion: removing a channel, less what batch-norm re-estimation repairs (the mean
it leaves behind, wherever a batch norm re-estimates it on the way to the output), to first order, on
g = the log-probability of the predicted class, root mean square over images."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from builders import TwoConv, randomise_batchnorm

from compress.causal.total_effect import TotalEffectScorer, read_by_batchnorm


def _by_hand(model: TwoConv, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The same quantity computed directly on TwoConv's layers, without hooks or the traced graph.
    TwoConv has no batch norm, so nothing repairs a removed channel's mean: do(channel := 0)."""
    with torch.no_grad():
        a1 = F.relu(model.conv1(images))  # what conv2 reads
        pooled = F.adaptive_avg_pool2d(F.relu(model.conv2(a1)), 1).flatten(1)  # what fc reads
    a1 = a1.clone().requires_grad_(True)
    pooled_leaf = F.adaptive_avg_pool2d(F.relu(model.conv2(a1)), 1).flatten(1)
    pooled_leaf.retain_grad()
    logits = model.fc(pooled_leaf)
    F.log_softmax(logits, 1).gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    s1 = (a1 * a1.grad).sum((2, 3))
    s2 = pooled * pooled_leaf.grad
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
        # no batch norm repairs anything: do(channel := 0) counted everywhere is the same effect
        np.testing.assert_allclose(scorer.unrepaired_importances_[root], scores, rtol=1e-4, atol=1e-7)
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


def test_a_channel_nothing_reads_has_no_effect():
    torch.manual_seed(2)
    model = TwoConv().eval()
    with torch.no_grad():
        model.conv2.weight[:, 1] = 0.0  # conv1's channel 1 is read by nobody
        model.fc.weight[:, 2] *= 10.0  # conv2's channel 2 weighs ten times more in the output
    scores = TotalEffectScorer(max_images=16).fit(model, [(torch.randn(16, 3, 8, 8), None)]).importances_
    assert scores["conv1"][1] == 0.0
    assert scores["conv1"][[0, 2, 3, 4, 5]].min() > 0
    assert scores["conv2"].argmax() == 2


class _ConstantChannels(nn.Module):
    """conv1's channel 0 and conv3's channel 0 never vary (a constant after the ReLU). conv2 reads
    conv1 with a batch norm after it; the classifier reads conv3 (pooled) with none."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            self.conv1.weight[0] = 0.0
            self.conv1.bias[0] = 0.7
            self.conv3.weight[0] = 0.0
            self.conv3.bias[0] = 0.7

    def forward(self, x):
        a = F.relu(self.conv1(x))
        b = F.relu(self.conv3(F.relu(self.bn2(self.conv2(a)))))
        return self.fc(F.adaptive_avg_pool2d(b, 1).flatten(1))


def test_a_constant_channel_counts_only_where_no_batch_norm_repairs_its_mean():
    torch.manual_seed(4)
    model = randomise_batchnorm(_ConstantChannels())
    scorer = TotalEffectScorer(max_images=16).fit(model, [(torch.randn(16, 3, 8, 8), None)])
    assert scorer.renormalised_ == {"conv2"}
    # conv1's constant channel: conv2's batch norm absorbs the shift its removal leaves
    assert scorer.importances_["conv1"][0] == pytest.approx(0.0, abs=1e-9)
    # conv3's constant channel: its removal moves the classifier's input, and nothing re-centres it
    assert scorer.importances_["conv3"][0] > 0.1 * scorer.importances_["conv3"].max()
    # do(channel := 0) with nothing repaired counts conv1's lost mean too
    assert scorer.unrepaired_importances_["conv1"][0] > 0.1 * scorer.unrepaired_importances_["conv1"].max()


def test_bad_max_images_names_the_argument():
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
    by_hand = (a * leaf.grad).sum((2, 3)).pow(2).mean(0).sqrt()  # no batch norm: do(channel := 0)
    scorer = TotalEffectScorer(max_images=16).fit(model, [(images, None)])
    np.testing.assert_allclose(scorer.importances_["conv1"], by_hand.numpy(), rtol=1e-4, atol=1e-7)


class _Stream(nn.Module):
    """conv1's channels are read by `inner`, which a batch norm reads, and by `side`, a shortcut added
    into a stream that `conv3` (batch norm after it) and, pooled, the classifier read."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.inner = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn_inner = nn.BatchNorm2d(8)
        self.side = nn.Conv2d(6, 8, 1, bias=False)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(F.relu(self.bn1(self.conv1(F.relu(self.bn0(self.conv0(x)))))))

    def head(self, c, stop=lambda t: t, c_side=None):
        """From conv1's output on; `stop` is applied to every batch norm's input (the by-hand
        computation detaches there) and `c_side` is what the shortcut reads (default: `c`)."""
        c_side = c if c_side is None else c_side
        y = F.relu(self.bn_inner(stop(self.inner(c))) + self.side(c_side))
        z = F.relu(self.bn3(stop(self.conv3(y))))
        pooled = torch.cat([F.adaptive_avg_pool2d(y, 1), F.adaptive_avg_pool2d(z, 1)], 1).flatten(1)
        return self.fc(pooled)


def test_the_mean_counts_along_the_paths_no_batch_norm_repairs():
    """conv1's channel c: s_c = sum_p (a - mean) * (grad via inner + grad via side) + mean * grad~ via
    side, grad~ the gradient with every batch norm's input detached (the path side -> stream -> pool ->
    classifier; the one through conv3 is repaired by its batch norm)."""
    torch.manual_seed(5)
    model = randomise_batchnorm(_Stream())
    images = torch.randn(20, 3, 8, 8)
    with torch.no_grad():
        c = F.relu(model.bn1(model.conv1(F.relu(model.bn0(model.conv0(images))))))
    mean = c.mean((0, 2, 3), keepdim=True)

    def g(logits):
        return F.log_softmax(logits, 1).gather(1, logits.argmax(1, keepdim=True)).sum()

    with torch.no_grad():
        predicted = model.head(c).argmax(1, keepdim=True)
    inner_leaf, side_leaf = c.clone().requires_grad_(True), c.clone().requires_grad_(True)
    g(model.head(inner_leaf, c_side=side_leaf)).backward()
    free_leaf = c.clone().requires_grad_(True)
    logits = model.head(c, stop=torch.Tensor.detach, c_side=free_leaf)
    F.log_softmax(logits, 1).gather(1, predicted).sum().backward()  # the predicted class of the real model
    s = ((c - mean) * (inner_leaf.grad + side_leaf.grad) + mean * free_leaf.grad).sum((2, 3))
    by_hand = s.pow(2).mean(0).sqrt().numpy()
    zeroed = (c * (inner_leaf.grad + side_leaf.grad)).sum((2, 3))  # do(c := 0), the mean lost on every path
    unrepaired_by_hand = zeroed.pow(2).mean(0).sqrt().numpy()

    scorer = TotalEffectScorer(max_images=20).fit(model, [(images[:8], None), (images[8:], None)])
    assert scorer.renormalised_ == {"conv1", "inner", "conv3"}  # the layers reading group channels
    np.testing.assert_allclose(scorer.importances_["conv1"], by_hand, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(scorer.unrepaired_importances_["conv1"], unrepaired_by_hand, rtol=1e-4, atol=1e-7)
    assert not np.allclose(by_hand, unrepaired_by_hand, rtol=1e-2)  # the two interventions differ here


def test_read_by_batchnorm_names_the_layers_whose_output_a_batch_norm_reads():
    model = _Stream().eval()
    names = ["conv0", "conv1", "inner", "side", "conv3", "fc"]
    assert read_by_batchnorm(model, names, torch.randn(2, 3, 8, 8)) == {"conv0", "conv1", "inner", "conv3"}


class ChannelsLast(nn.Module):
    """conv -> a linear layer over the channels of a channels-last map (ConvNeXt's pointwise layers) -> fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.pointwise = nn.Linear(6, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.pointwise(x.permute(0, 2, 3, 1)))  # (images, height, width, channels)
        return self.fc(x.mean((1, 2)))


def test_a_linear_layer_reading_a_channels_last_map_reads_its_last_dimension():
    torch.manual_seed(5)
    model = ChannelsLast().eval()
    images = torch.randn(12, 3, 4, 5)
    scorer = TotalEffectScorer(max_images=12).fit(model, [(images, None)])
    a1 = F.relu(model.conv1(images)).detach().requires_grad_(True)  # what the pointwise layer reads
    logits = model.fc(F.relu(model.pointwise(a1.permute(0, 2, 3, 1))).mean((1, 2)))
    F.log_softmax(logits, 1).gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    expected = (a1 * a1.grad).sum((2, 3)).pow(2).mean(0).sqrt().detach().numpy()  # per conv1 channel
    np.testing.assert_allclose(scorer.importances_["conv1"], expected, rtol=1e-4, atol=1e-7)
