import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from builders import FlattenHead, TwoConv, batches, randomise_batchnorm

from compress import CausalScorer
from compress.criteria import GroupScoreImportance, l1_importance
from compress.zoo import DigitsCNN


def test_filter_whose_outputs_are_unused_ranks_last():
    torch.manual_seed(0)
    model = TwoConv().eval()
    with torch.no_grad():
        model.conv2.weight[:, 2] = 0.0  # nothing reads conv1's filter 2
    scores = CausalScorer().fit(model, batches(n=512)).importances_["conv1"]
    # Pooled conv outputs are linear in pooled inputs only up to border effects, so the unused filter
    # keeps a small spurious share; it must still rank last, by a clear margin.
    assert scores.argmin() == 2
    assert scores[2] < 0.5 * np.sort(scores)[1]


def test_rescaling_a_filter_and_inversely_its_consumer_keeps_the_ranking():
    torch.manual_seed(1)
    model = TwoConv().eval()
    rescaled = copy.deepcopy(model)
    factors = torch.tensor([10.0, 0.1, 1.0, 5.0, 0.5, 2.0])
    with torch.no_grad():  # ReLU(a*z) = a*ReLU(z) for a > 0: the function is unchanged
        rescaled.conv1.weight.mul_(factors.view(-1, 1, 1, 1))
        rescaled.conv1.bias.mul_(factors)
        rescaled.conv2.weight.div_(factors.view(1, -1, 1, 1))
    x = batches()
    torch.testing.assert_close(model(x[0][0]), rescaled(x[0][0]), rtol=1e-4, atol=1e-5)
    a = CausalScorer().fit(model, x).importances_["conv1"]
    b = CausalScorer().fit(rescaled, x).importances_["conv1"]
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert (np.argsort(a) == np.argsort(b)).all()
    # magnitude scores are not scale-free: the same rescaling reorders them
    magnitude = [(m.conv1.weight.abs().sum((1, 2, 3))).argsort().tolist() for m in (model, rescaled)]
    assert magnitude[0] != magnitude[1]
    assert l1_importance() is not None


def test_every_prunable_filter_is_scored_and_the_last_conv_is_not_uniform():
    torch.manual_seed(0)
    model = randomise_batchnorm(DigitsCNN())
    scorer = CausalScorer().fit(model, batches(shape=(1, 8, 8)))
    assert set(scorer.importances_) == {"conv1", "conv2", "conv3", "conv4"}
    last = scorer.importances_["conv4"]  # its only child is the classifier
    assert len(last) == 128 and np.isfinite(last).all() and last.std() > 0.05 * last.mean()
    assert scorer.graph_.output_layers == ["fc"]


def test_flattened_map_into_linear_maps_back_to_channels():
    model = randomise_batchnorm(FlattenHead())
    scorer = CausalScorer().fit(model, batches(shape=(3, 4, 4)))
    consumer = scorer.graph_.consumers["fc"]
    assert consumer.features_per_channel == 16 and consumer.n_parents == 4
    assert scorer.importances_["conv"].shape == (4,)
    # the group importance sums the per-feature shares back to one value per channel
    np.testing.assert_allclose(
        scorer.importances_["conv"], scorer.consumer_importances_["fc"].reshape(4, 16).sum(1), rtol=1e-12
    )


def _ridge_importance(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """sum over children i of |beta_{j->i}|: every column of y regressed on all columns of x, standardised, ridge."""
    zx, zy = (x - x.mean(0)) / x.std(0), (y - y.mean(0)) / y.std(0)
    beta = np.linalg.solve(zx.T @ zx / len(x) + ridge * np.eye(x.shape[1]), zx.T @ zy / len(x))
    return np.abs(beta).sum(1)


def test_residual_stream_sums_over_every_consumer():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    data = batches(n=32, shape=(3, 32, 32), classes=4)
    scorer = CausalScorer(ridge=1e-2).fit(model, data)
    stream = next(g for g in scorer.graph_.groups if g.root == "conv1")  # stem + stage-1 residual stream
    consumers = {name for name, _, _ in stream.links}
    # the stage-1 stream feeds both blocks' first convs and stage 2's first conv and shortcut
    assert consumers == {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"}
    # I(j) computed independently: each consumer's pooled inputs and outputs, one numpy ridge fit each, summed
    pooled = {name: ([], []) for name in consumers}

    def keep(module, args, output, name):
        pooled[name][0].append(F.adaptive_avg_pool2d(args[0], 1).flatten(1))
        pooled[name][1].append(F.adaptive_avg_pool2d(output, 1).flatten(1))

    hooks = [model.get_submodule(n).register_forward_hook(functools.partial(keep, name=n)) for n in consumers]
    with torch.no_grad():
        for x, _ in data:
            model(x)
    for hook in hooks:
        hook.remove()
    each = {n: _ridge_importance(torch.cat(xs).double().numpy(), torch.cat(ys).double().numpy(), 1e-2)
            for n, (xs, ys) in pooled.items()}  # fmt: skip
    np.testing.assert_allclose(scorer.importances_["conv1"], sum(each.values()), rtol=1e-6)
    assert all(v.min() > 0.01 * scorer.importances_["conv1"].max() for v in each.values())  # every consumer counts


def test_model_is_observed_not_changed_and_scores_are_deterministic():
    torch.manual_seed(0)
    model = randomise_batchnorm(DigitsCNN()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches(shape=(1, 8, 8))
    first = CausalScorer().fit(model, data)
    second = CausalScorer().fit(model, data)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_hooks for m in model.modules())
    for name in first.importances_:
        assert np.array_equal(first.importances_[name], second.importances_[name])


def test_group_scores_follow_module_names_on_a_copy():
    torch.manual_seed(0)
    model = TwoConv().eval()
    scorer = CausalScorer().fit(model, batches())
    copy_ = copy.deepcopy(model)
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(copy_, example_inputs=torch.randn(2, 3, 8, 8))
    group = graph.get_pruning_group(copy_.conv1, tp.prune_conv_out_channels, idxs=list(range(6)))
    scores = GroupScoreImportance(scorer.importances_, copy_)(group)
    np.testing.assert_allclose(scores.numpy(), scorer.importances_["conv1"], rtol=1e-6)


def test_invalid_settings_name_the_argument():
    with pytest.raises(ValueError, match="ridge"):
        CausalScorer(ridge=-1).fit(TwoConv(), batches())
    with pytest.raises(ValueError, match="pool_grid"):
        CausalScorer(pool_grid=0).fit(TwoConv(), batches())


def test_pool_grid_adds_observations_per_image():
    model = TwoConv().eval()
    one = CausalScorer(pool_grid=1).fit(model, batches())
    two = CausalScorer(pool_grid=2).fit(model, batches())
    assert float(two.statistics_["conv2"].count) == 4 * float(one.statistics_["conv2"].count)
    assert float(two.statistics_["fc"].count) == float(one.statistics_["fc"].count) == 64
    assert isinstance(model.conv1, nn.Conv2d)


def test_importances_file_holds_groups_filters_and_consumer_inputs_by_criterion(tmp_path):
    from compress.serialization import save_importances

    torch.manual_seed(0)
    scorer = CausalScorer().fit(TwoConv().eval(), batches())
    for name in ("first", "second"):
        save_importances(tmp_path / f"{name}.npz", {"mine": scorer})
    assert (tmp_path / "first.npz").read_bytes() == (tmp_path / "second.npz").read_bytes()  # same scores, same bytes
    with np.load(tmp_path / "first.npz") as npz:
        scores = {key: npz[key] for key in npz.files}
    assert set(scores) == {
        "mine/group:conv1", "mine/group:conv2", "mine/layer:conv1", "mine/layer:conv2",
        "mine/consumer:conv2", "mine/consumer:fc",  # the layers that read filters, one score per input channel
    }  # fmt: skip
    np.testing.assert_array_equal(scores["mine/consumer:conv2"], scorer.consumer_importances_["conv2"])
    np.testing.assert_array_equal(scores["mine/consumer:conv2"], scores["mine/group:conv1"])  # conv1's one reader
    np.testing.assert_array_equal(scores["mine/consumer:fc"], scores["mine/group:conv2"])
    np.testing.assert_array_equal(scores["mine/layer:conv2"], scorer.layer_importances_["conv2"])
