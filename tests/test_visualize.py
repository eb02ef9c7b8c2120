"""The explanation pictures render headless, save, stay finite on degenerate scores, and leave models alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from compress.visualize import filter_tsne, first_layer_filters, heatmap_on_input, importance_distribution

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_model(channels: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _image(channels: int, size: int = 12) -> torch.Tensor:
    return torch.randn(channels, size, size, generator=torch.Generator().manual_seed(1))


def _image_data(fig: Figure, axes_index: int, image_index: int = 0) -> np.ndarray:
    return np.asarray(fig.axes[axes_index].get_images()[image_index].get_array())


def _assert_png(path) -> None:
    assert path.exists()
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000


# ---------------------------------------------------------------- heatmap_on_input


@pytest.mark.parametrize(("channels", "shown_shape"), [(1, (12, 12)), (3, (12, 12, 3))])
def test_heatmap_renders_grey_and_colour_inputs(channels, shown_shape):
    model = _tiny_model(channels).eval()
    fig = heatmap_on_input(model, _image(channels), "3", np.arange(8.0), mean=[0.5], std=[0.25])
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["Input", "Filter importance heatmap (3)", "Overlay"]
    assert all(not ax.axison for ax in fig.axes[:3])
    colour_bar = fig.axes[3]  # the heatmap's scale
    assert colour_bar.get_ylabel() == "importance-weighted activation (scaled)"
    assert colour_bar.get_ylim() == (0.0, 1.0)
    shown = _image_data(fig, 0)
    assert shown.shape == shown_shape
    if channels == 1:
        assert fig.axes[0].get_images()[0].get_cmap().name == "gray"
    assert shown.min() >= 0.0 and shown.max() <= 1.0
    heat = _image_data(fig, 1)
    assert heat.shape == (12, 12)  # upsampled to the input size
    assert np.isfinite(heat).all()
    assert heat.min() == pytest.approx(0.0) and heat.max() == pytest.approx(1.0)
    assert len(fig.axes[2].get_images()) == 2  # input under the heatmap


def test_heatmap_unnormalises_with_mean_and_std():
    model = _tiny_model(3).eval()
    image = torch.zeros(3, 8, 8)  # normalised zeros are the mean itself
    fig = heatmap_on_input(model, image, "0", np.ones(4), mean=[0.2, 0.4, 0.6], std=[0.1, 0.1, 0.1])
    np.testing.assert_allclose(_image_data(fig, 0)[0, 0], [0.2, 0.4, 0.6])


def test_heatmap_without_mean_std_stretches_image_to_unit_range():
    model = _tiny_model(3).eval()
    fig = heatmap_on_input(model, _image(3)[None] * 7 + 3, "0", np.ones(4))  # batched input accepted
    shown = _image_data(fig, 0)
    assert shown.min() == pytest.approx(0.0) and shown.max() == pytest.approx(1.0)


def test_heatmap_is_the_importance_weighted_activation():
    model = _tiny_model(1).eval()
    image = _image(1)
    only_filter = np.zeros(4)
    only_filter[2] = 1.0
    fig = heatmap_on_input(model, image, "0", only_filter)
    with torch.no_grad():
        act = model[0](image[None])[0, 2].numpy()
    expected = (act - act.min()) / (act.max() - act.min())
    np.testing.assert_allclose(_image_data(fig, 1), expected, atol=1e-5)  # same size: the resize is identity


@pytest.mark.parametrize("zero_weights", [False, True])
def test_heatmap_with_all_zero_importances_or_zeroed_filters_is_finite_zeros(zero_weights):
    model = _tiny_model(3).eval()
    importances = np.ones(4)
    if zero_weights:
        with torch.no_grad():
            model[0].weight.zero_()
            model[0].bias.zero_()
    else:
        importances = np.zeros(4)
    fig = heatmap_on_input(model, _image(3), "0", importances)
    heat = _image_data(fig, 1)
    assert np.isfinite(heat).all()
    assert np.all(heat == 0.0)
    assert np.isfinite(_image_data(fig, 2, 1)).all()


def test_heatmap_leaves_training_flags_and_batchnorm_statistics_unchanged():
    model = _tiny_model(3).train()
    model[1].eval()  # a deliberately frozen BatchNorm inside a training model stays frozen
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    heatmap_on_input(model, _image(3), "1", np.ones(4))
    assert model.training
    assert not model[1].training
    assert model[0].training and model[3].training
    for key, value in model[1].state_dict().items():
        assert torch.equal(value, before[key]), key


def test_heatmap_rejects_wrong_importance_length_and_unknown_layer():
    model = _tiny_model(3).eval()
    with pytest.raises(ValueError, match=r"'3'.*8 filters.*5 importances"):
        heatmap_on_input(model, _image(3), "3", np.ones(5))
    with pytest.raises(ValueError, match=r"'1'"):  # BatchNorm has no out_channels: checked on the activation
        heatmap_on_input(model, _image(3), "1", np.ones(3))
    with pytest.raises(ValueError, match=r"'features\.9' not found"):
        heatmap_on_input(model, _image(3), "features.9", np.ones(4))


def test_heatmap_saves_png(tmp_path):
    path = tmp_path / "nested" / "heat.png"
    fig = heatmap_on_input(_tiny_model(1).eval(), _image(1), "0", np.ones(4), path=path)
    assert isinstance(fig, Figure)
    _assert_png(path)


# ---------------------------------------------------------------- first_layer_filters


@pytest.mark.parametrize(("in_channels", "panel_shape"), [(1, (3, 3)), (3, (3, 3, 3)), (5, (3, 3))])
def test_filters_render_rgb_for_three_channels_else_grey(in_channels, panel_shape):
    weight = _tiny_model(in_channels)[0].weight
    fig = first_layer_filters(weight, np.array([0.5, 0.25, 0.0, 1.0]), layer="0")
    assert len(fig.axes) == 4  # 4 filters: one row of 4
    data = _image_data(fig, 0)
    assert data.shape == panel_shape
    assert data.min() == pytest.approx(0.0) and data.max() == pytest.approx(1.0)
    assert fig.axes[1].get_title() == "filter 1\nimportance 0.25"
    assert fig._suptitle.get_text() == "Filters of 0"


def test_filters_grid_clamps_and_turns_off_spare_axes():
    weight = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    fig = first_layer_filters(weight, n_filters=100)
    assert len(fig.axes) == 8  # 2 rows of 4 for 6 filters
    assert [len(ax.get_images()) for ax in fig.axes] == [1] * 6 + [0] * 2
    assert not any(ax.axison for ax in fig.axes)
    assert fig.axes[0].get_title() == "filter 0"  # no importance line when none given
    few = first_layer_filters(weight, n_filters=2)
    assert len(few.axes) == 2
    with pytest.raises(ValueError, match="n_filters"):
        first_layer_filters(weight, n_filters=0)


def test_filters_zeroed_and_1x1_kernels_are_finite_mid_grey(tmp_path):
    weight = np.random.default_rng(0).normal(size=(4, 3, 1, 1))
    weight[1] = 0.0
    path = tmp_path / "filters.png"
    fig = first_layer_filters(weight, np.zeros(4), path=path)
    for i in range(4):
        assert np.isfinite(_image_data(fig, i)).all()
    np.testing.assert_array_equal(_image_data(fig, 1), np.full((1, 1, 3), 0.5))
    _assert_png(path)


def test_filters_reject_wrong_importance_length():
    with pytest.raises(ValueError, match=r"'conv1'.*4 filters.*3 importances"):
        first_layer_filters(torch.zeros(4, 1, 3, 3), np.ones(3), layer="conv1")


# ---------------------------------------------------------------- importance_distribution


def test_distribution_one_box_per_layer_labelled_in_order(tmp_path):
    scores = {"conv1": np.array([0.1, 0.5, 0.9]), "single": np.array([0.3]), "zeroed": np.zeros(5)}
    path = tmp_path / "dist.png"
    fig = importance_distribution(scores, path=path)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "single", "zeroed"]
    assert ax.get_ylabel() == "importance"
    assert ax.get_title() == "Distribution of filter importances across layers"
    lines = ax.get_lines()
    assert len(lines) == 7 * 3  # per box: 2 whiskers, 2 caps, box, median, fliers
    assert all(np.isfinite(np.asarray(line.get_ydata(), dtype=float)).all() for line in lines)
    zero_box_y = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in lines[14:]])
    np.testing.assert_array_equal(zero_box_y, 0.0)  # the all-zero layer is a flat box at 0
    assert all(label.get_rotation() == 0 for label in ax.get_xticklabels())
    _assert_png(path)


def test_distribution_rotates_many_labels_and_rejects_empty():
    scores = {f"layer{i}.conv": np.arange(i + 1.0) for i in range(8)}
    fig = importance_distribution(scores, title="custom")
    labels = fig.axes[0].get_xticklabels()
    assert [t.get_text() for t in labels] == list(scores)
    assert all(label.get_rotation() == 45 for label in labels)
    assert fig.axes[0].get_title() == "custom"
    with pytest.raises(ValueError, match="at least one layer"):
        importance_distribution({})


# ---------------------------------------------------------------- filter_tsne


def _scatter_offsets(fig: Figure) -> np.ndarray:
    return np.asarray(fig.axes[0].collections[0].get_offsets())


def test_tsne_uses_pca_for_few_filters():
    weight = _tiny_model(3)[0].weight
    fig = filter_tsne(weight, np.array([0.0, 1.0, 2.0, 3.0]), layer="conv1")
    assert fig.axes[0].get_title() == "PCA of filter weights (conv1, 4 filters)"
    assert _scatter_offsets(fig).shape == (4, 2)
    assert fig.axes[1].get_ylabel() == "filter importance"  # the colorbar
    np.testing.assert_allclose(fig.axes[0].collections[0].get_array(), [0.0, 1.0, 2.0, 3.0])


def test_tsne_uses_tsne_for_many_filters_and_is_deterministic(tmp_path):
    weight = torch.randn(16, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    scores = np.linspace(0, 1, 16)
    path = tmp_path / "tsne.png"
    first = filter_tsne(weight, scores, layer="layer3.2.conv2", seed=3, path=path)
    second = filter_tsne(weight, scores, layer="layer3.2.conv2", seed=3)
    assert first.axes[0].get_title() == "t-SNE of filter weights (layer3.2.conv2)"
    coords = _scatter_offsets(first)
    assert coords.shape == (16, 2) and np.isfinite(coords).all()
    assert np.ptp(coords, axis=0).min() > 0
    np.testing.assert_array_equal(coords, _scatter_offsets(second))
    _assert_png(path)


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_tsne_all_zero_filters_and_scores_stay_finite(n):
    fig = filter_tsne(np.zeros((n, 3, 3, 3)), np.zeros(n))
    coords = _scatter_offsets(fig)
    assert coords.shape == (n, 2)
    np.testing.assert_array_equal(coords, np.zeros((n, 2)))  # identical filters: all at the origin
    assert fig.axes[0].get_title().startswith("PCA of filter weights")


def test_tsne_with_some_zeroed_and_duplicate_filters_is_finite():
    weight = np.random.default_rng(0).normal(size=(12, 2, 3, 3))
    weight[:4] = 0.0
    weight[4:6] = weight[6]
    fig = filter_tsne(weight, np.r_[np.zeros(4), np.ones(8)])
    assert fig.axes[0].get_title() == "t-SNE of filter weights"
    assert np.isfinite(_scatter_offsets(fig)).all()


def test_tsne_one_dimensional_filters_fall_back_to_padded_pca():
    fig = filter_tsne(np.arange(10.0).reshape(10, 1, 1, 1), np.ones(10))
    coords = _scatter_offsets(fig)
    assert fig.axes[0].get_title() == "PCA of filter weights (10 filters)"
    np.testing.assert_array_equal(coords[:, 1], 0.0)
    assert np.ptp(coords[:, 0]) > 0


def test_tsne_rejects_wrong_importance_length():
    with pytest.raises(ValueError, match=r"'conv2'.*8 filters.*7 importances"):
        filter_tsne(torch.zeros(8, 4, 3, 3), np.ones(7), layer="conv2")


def test_pareto_front_keeps_only_undominated_variants_in_order_of_speed():
    from compress.report import pareto_front

    # (speed-up, top-1): the original, two pruned variants that dominate others, a tie and a loser
    points = [(1.0, 95.0), (1.5, 94.0), (1.4, 90.0), (2.0, 80.0), (2.0, 70.0), (1.5, 94.0), (0.9, 96.0)]
    assert pareto_front(points) == [6, 0, 1, 3]  # of two equal points (1 and 5) only the first is kept
    assert pareto_front([]) == []
