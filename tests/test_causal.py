import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from builders import FlattenHead, TwoConv, batches, randomise_batchnorm

from compress import CausalScorer
from compress.criteria import CausalImportance, l1_importance
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


def test_residual_stream_sums_over_every_consumer():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    scorer = CausalScorer().fit(model, batches(n=32, shape=(3, 32, 32), classes=4))
    stream = next(g for g in scorer.graph_.groups if g.root == "conv1")  # stem + stage-1 residual stream
    consumers = {name for name, _, _ in stream.links}
    # the stage-1 stream feeds both blocks' first convs and stage 2's first conv and shortcut
    assert {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"} <= consumers
    assert all(np.isfinite(v).all() for v in scorer.importances_.values())


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


def test_causal_importance_follows_module_names_on_a_copy():
    torch.manual_seed(0)
    model = TwoConv().eval()
    scorer = CausalScorer().fit(model, batches())
    copy_ = copy.deepcopy(model)
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(copy_, example_inputs=torch.randn(2, 3, 8, 8))
    group = graph.get_pruning_group(copy_.conv1, tp.prune_conv_out_channels, idxs=list(range(6)))
    scores = CausalImportance(scorer.consumer_importances_, copy_)(group)
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
