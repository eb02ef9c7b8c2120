import matplotlib
import numpy as np
import pytest
import torch
import torch.nn as nn
from builders import randomise_batchnorm
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, TensorDataset

from compress import CausalCNNExplainer


def _cnn(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(
        nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1),  # a 4-filter first layer
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.Conv2d(12, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 3),
        )
    )


def _loader(channels: int, n: int = 96) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, channels, 12, 12, generator=generator)
    y = torch.randint(0, 3, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=32)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_seeds_example_runs_with_only_the_import_changed(channels, tmp_path):
    model = _cnn(channels).train()  # a caller's model in training mode must not drift
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_loader = test_loader = _loader(channels)
    sample_image = next(iter(test_loader))[0]
    device, percent = torch.device("cpu"), 25

    explainer = CausalCNNExplainer(model=model, device=device)
    explainer.collect_data(train_loader)
    explainer.learn_structural_equations()
    filter_importances = explainer.get_filter_importances()
    figures = [
        explainer.visualize_heatmap_on_input(sample_image[0]),
        explainer.visualize_first_layer_filters(n_filters=16),
        explainer.plot_importance_distribution(),
        explainer.visualize_filter_tsne(layer_idx=3),
    ]
    baseline_acc = explainer.evaluate_model(explainer.model, test_loader)
    pruned = explainer.prune_filters_by_importance(percent)
    removed = explainer.pruned_filters_
    pruned_random = explainer.prune_random_filters(percent)

    assert matplotlib.get_backend().lower() == "agg" and all(isinstance(f, Figure) for f in figures)
    assert sorted(filter_importances) == [0, 1, 2, 3]
    assert all(
        np.isfinite(v).all() and len(v) == m.out_channels
        for v, (_, m) in zip(filter_importances.values(), explainer.conv_layers, strict=True)
    )
    assert filter_importances[3].std() > 0  # the last conv layer is scored (its child is the classifier)
    assert 0.0 <= baseline_acc <= 1.0
    assert pruned[3].out_channels == 12 and pruned_random[3].out_channels == 12  # 16 filters, 25% removed
    assert len(removed["3"]) == 4 and len(explainer.pruned_filters_["3"]) == 4
    # importance pruning removes each layer's lowest-scored filters (ties may go either way); random does not
    scores = explainer.get_filter_importances_by_name()
    assert set(removed) == {"0", "3", "6", "9"}  # every conv layer, the last one (read by the classifier) too
    for layer, gone in removed.items():
        kept = np.setdiff1d(np.arange(len(scores[layer])), gone)
        assert scores[layer][gone].max() <= scores[layer][kept].min(), layer
    assert explainer.pruned_filters_ != removed
    assert pruned(sample_image).shape == (32, 3)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pictures_are_saved_and_random_pruning_is_seeded(tmp_path):
    explainer = CausalCNNExplainer(_cnn(3), criterion="causal-reference", mean=(0.5,) * 3, std=(0.25,) * 3)
    explainer.collect_data(_loader(3), max_batches=2)
    explainer.learn_structural_equations()
    explainer.plot_importance_distribution(path=tmp_path / "dist.png")
    assert (tmp_path / "dist.png").stat().st_size > 1000
    np.testing.assert_allclose(explainer.get_filter_importances()[0].sum(), 1.0)  # the seed's normalisation
    explainer.prune_random_filters(50, seed=7)
    first = explainer.pruned_filters_
    explainer.prune_random_filters(50, seed=7)
    assert explainer.pruned_filters_ == first


def test_misuse_is_named():
    explainer = CausalCNNExplainer(_cnn(3))
    with pytest.raises(RuntimeError, match="collect_data"):
        explainer.learn_structural_equations()
    with pytest.raises(RuntimeError, match="before pruning"):
        explainer.prune_filters_by_importance(10)
    explainer.collect_data(_loader(3), max_batches=1)
    explainer.learn_structural_equations()
    with pytest.raises(ValueError, match=r"percent must be in \(0, 100\)"):
        explainer.prune_filters_by_importance(150)
    with pytest.raises(ValueError, match="criterion must be one of"):
        CausalCNNExplainer(_cnn(3), criterion="l2")
