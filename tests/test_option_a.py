"""Option-A CIFAR ResNets (channel-padding shortcuts) prune whole: residual streams included."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from builders import batches, randomise_batchnorm
from torch.utils.data import TensorDataset

from compress import CausalScorer, prune
from compress.benchmark import make_session
from compress.causal.graph import build_channel_graph
from compress.cifar_resnet import CifarResNet
from compress.criteria import importance_factory, l1_importance
from compress.export import check_parity, export_onnx
from compress.layers import ChannelPadShortcut, learned_convs
from compress.pruning import count_macs_params, layer_widths
from compress.serialization import load_pruned, save_pruned
from compress.training import TrainSettings, train


def _padded_forward(model: CifarResNet, x: torch.Tensor) -> torch.Tensor:
    """The community implementation's forward: F.pad channel padding instead of the selection conv."""

    def block(b, x):
        out = F.relu(b.bn1(b.conv1(x)))
        out = b.bn2(b.conv2(out))
        if isinstance(b.shortcut, ChannelPadShortcut):
            pad = b.conv2.out_channels // 4
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
        else:
            short = x
        return F.relu(out + short)

    out = F.relu(model.bn1(model.conv1(x)))
    for stage in (model.layer1, model.layer2, model.layer3):
        for b in stage:
            out = block(b, out)
    return model.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _masked_original(model, pruned_channels: dict[str, list[int]], x: torch.Tensor) -> torch.Tensor:
    """The unpruned model with the removed channels' columns zeroed in every layer that reads them."""
    masked = copy.deepcopy(model).eval()
    graph = build_channel_graph(masked, x[:2])
    with torch.no_grad():
        for group in graph.groups:  # the history names a group by any of its producers
            removed = next((set(pruned_channels[n]) for n, _, _ in group.producers if n in pruned_channels), set())
            for name, idxs, root_idxs in group.links:
                columns = [i for i, r in zip(idxs, root_idxs, strict=True) if r in removed]
                masked.get_submodule(name).weight[:, columns] = 0.0
        return masked(x)


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return randomise_batchnorm(CifarResNet(20))


def test_unpruned_outputs_equal_the_channel_padding_implementation(resnet20):
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(resnet20(x), _padded_forward(resnet20, x), rtol=0, atol=1e-6)
    assert not any("shortcut" in key for key in resnet20.state_dict())  # the community layout
    assert [name for name, _ in learned_convs(resnet20)][-1] == "layer3.2.conv2"  # no shortcut "filters"


def test_every_group_prunes_streams_included_and_equals_the_masked_original(resnet20):
    data = batches(n=32, shape=(3, 32, 32), classes=10)
    x = data[0][0]
    scorer = CausalScorer().fit(resnet20, data)
    result = prune(resnet20, importance_factory("causal", scorer), 0.5, x, round_to=4)
    assert result.kept_unpruned == {}
    widths = layer_widths(result.model)
    assert widths["conv1"] == 8 and widths["layer2.0.conv2"] == 16 and widths["layer3.2.conv2"] == 32  # streams
    assert widths["layer2.0.shortcut"] == 16 and widths["linear"] == 10
    removed = result.pruned_channels()
    assert len(removed) == len(build_channel_graph(copy.deepcopy(resnet20), x[:2]).groups)  # streams too
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _masked_original(resnet20, removed, x), rtol=1e-4, atol=1e-4)
    macs, _ = count_macs_params(result.model, x)
    assert macs <= 0.30 * count_macs_params(resnet20, x)[0]


def test_the_selection_is_counted_frozen_and_stays_frozen_through_pruning_and_training(resnet20):
    x = torch.randn(4, 3, 32, 32)
    shortcut = resnet20.layer2[0].shortcut
    assert not shortcut.weight.requires_grad
    # counted like the 1x1 stride-2 convolutions the exported file runs (torch-pruning's counter skips them)
    uncounted = tp.utils.count_ops_and_params(resnet20, x[:1])[0]
    assert count_macs_params(resnet20, x)[0] - uncounted == 16 * 32 * 16 * 16 + 32 * 64 * 8 * 8
    result = prune(resnet20, lambda m: l1_importance(), 0.3, x, round_to=4)
    pruned = result.model.layer2[0].shortcut
    assert not pruned.weight.requires_grad
    selection = pruned.weight.detach().clone()
    assert set(selection.unique().tolist()) == {0.0, 1.0} and (selection.sum((1, 2, 3)) <= 1).all()
    images, labels = batches(n=16, shape=(3, 32, 32), batch_size=16, classes=10)[0]
    train(result.model, TensorDataset(images, labels), TrainSettings(epochs=1, lr=0.1, batch_size=8, augment="none"))
    assert torch.equal(result.model.layer2[0].shortcut.weight, selection)


def test_pruned_option_a_model_exports_with_parity_and_round_trips(resnet20, tmp_path):
    data = batches(n=32, shape=(3, 32, 32), classes=10)
    result = prune(resnet20, importance_factory("random", seed=1), 0.5, data[0][0], round_to=4)
    session = make_session(export_onnx(result.model, data[0][0], tmp_path / "r20.onnx").path)
    assert check_parity(session, result.model, data[1][0], tolerance=1e-4).max_abs_diff <= 1e-4
    path = tmp_path / "pruned.pt"
    info = {"name": "random-s1-0.50", "criterion": "random", "ratio": 0.5}
    save_pruned(path, result.model, result.history, "cifar_resnet20", 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3, info)
    loaded = load_pruned(path)
    assert layer_widths(loaded) == layer_widths(result.model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(data[1][0]), result.model(data[1][0]))
