"""Pictures that explain a CNN's filter importances.

Four views, each a plain function returning a `matplotlib.figure.Figure`:

- `heatmap_on_input`: where in one input the important filters of a layer respond;
- `first_layer_filters`: what the (first-layer) filters look like, with their scores;
- `importance_distribution`: how scores spread within and across layers;
- `filter_tsne`: whether filters with similar weights get similar scores.

Figures are built with `Figure(...)` directly rather than through pyplot: no global figure registry
(so nothing leaks when many are drawn in a loop), no backend or display needed, and nothing here
ever calls `plt.show()`. When `path` is given the figure is also saved there as an image.

Importance scores may be all zero or tied (e.g. after pruning zeroed filters); every view then
degrades to a flat picture instead of NaNs or a crash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from torch import nn

__all__ = ["filter_tsne", "first_layer_filters", "heatmap_on_input", "importance_distribution"]

DPI = 150
"""Resolution of saved figures: sharp enough for reports, small enough to keep many of them."""

GRID_COLUMNS = 4
ROTATE_LABELS_ABOVE = 6
"""More layers than this and their names would overlap on the x axis, so they are rotated."""

TSNE_MIN_FILTERS = 8
"""Below this t-SNE's neighbourhoods (perplexity) are meaningless, so PCA is used instead."""


# --------------------------------------------------------------------------------------------------
# shared helpers


def _save(fig: Figure, path: str | Path | None) -> Figure:
    """Write the figure when asked to, creating the folder, so callers need not prepare it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def _to_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    """A float64 copy on the CPU, whatever device or dtype the tensor had (weights may be fp16/CUDA)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def _scores(importances: np.ndarray | torch.Tensor) -> np.ndarray:
    """Importances as a finite 1-D float array, so NaN/inf scores cannot poison a whole picture."""
    return np.nan_to_num(_to_numpy(importances).ravel(), nan=0.0, posinf=0.0, neginf=0.0)


def _minmax(array: np.ndarray, constant: float = 0.0) -> np.ndarray:
    """Rescale to [0, 1]; a constant (or non-finite) array becomes `constant` instead of 0/0 = NaN."""
    array = np.nan_to_num(np.asarray(array, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if array.size == 0:
        return array
    low, high = float(array.min()), float(array.max())
    if not high > low:
        return np.full_like(array, constant)
    return (array - low) / (high - low)


def _check_length(importances: np.ndarray, expected: int, what: str) -> None:
    """One score per filter, or the picture would silently attribute scores to the wrong filters."""
    if len(importances) != expected:
        raise ValueError(f"{what} has {expected} filters but {len(importances)} importances were given")


def _layer_label(layer: str) -> str:
    return f"layer {layer!r}" if layer else "the layer"


# --------------------------------------------------------------------------------------------------
# 1. importance-weighted activation heatmap over an input


def _find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The named submodule, with an error that names it (get_submodule's AttributeError does not say why)."""
    try:
        return model.get_submodule(layer)
    except AttributeError as error:
        raise ValueError(f"layer {layer!r} not found in {type(model).__name__}: {error}") from error


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    """Where the model lives, so the image can follow it; a parameter-less model runs on the CPU."""
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), None
    return param.device, (param.dtype if param.is_floating_point() else None)


def _layer_activation(model: nn.Module, module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The module's output for one forward pass in eval mode, leaving the caller's model as it was.

    Each submodule's own training flag is restored (not just the root's), so a model with deliberately
    frozen BatchNorm layers inside a training model is not flipped back to all-train.
    """
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)  # type: ignore[index]

    modes = {m: m.training for m in model.modules()}
    handle = module.register_forward_hook(hook)
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
        for m, training in modes.items():
            m.training = training
    if not captured or not isinstance(captured[0], torch.Tensor):
        raise ValueError("the layer produced no tensor output in the forward pass")
    return captured[0].detach()


def _importance_heatmap(activation: torch.Tensor, importances: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Sum of activation maps weighted by filter importance, upsampled to `size` and scaled to [0, 1]."""
    act = activation[0].float()
    weights = torch.as_tensor(importances, dtype=torch.float32, device=act.device)
    heat = torch.einsum("chw,c->hw", act, weights)
    heat = F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return _minmax(heat.cpu().numpy(), constant=0.0)


def _per_channel(values: Sequence[float] | None, channels: int, default: float, name: str) -> np.ndarray:
    """mean/std as a (C, 1, 1) array; a single value applies to every channel."""
    if values is None:
        return np.full((channels, 1, 1), default)
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 1:
        array = np.repeat(array, channels)
    if array.size != channels:
        raise ValueError(f"{name} has {array.size} values but the image has {channels} channels")
    return array.reshape(channels, 1, 1)


def _display_image(
    image: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[np.ndarray, str | None]:
    """The normalised input back in [0, 1] as imshow wants it, plus the colour map it needs (grey or none)."""
    img = _to_numpy(image)
    channels = img.shape[0]
    if mean is None and std is None:
        img = _minmax(img, constant=0.5)  # unknown normalisation: stretch what is there
    else:
        img = img * _per_channel(std, channels, 1.0, "std") + _per_channel(mean, channels, 0.0, "mean")
    img = np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0)
    if channels == 3:
        return img.transpose(1, 2, 0), None
    return img.mean(axis=0), "gray"  # grey-scale, or a channel count imshow cannot show as colour


def heatmap_on_input(
    model: nn.Module,
    image: torch.Tensor,
    layer: str,
    importances: np.ndarray,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.5,
    cmap: str = "viridis",
    figsize: tuple[float, float] = (15, 5),
    path: str | Path | None = None,
) -> Figure:
    """Where in this input the layer's important filters fire: the input, the heatmap, and both overlaid.

    The heatmap is the importance-weighted sum of the layer's activation maps, min-max scaled to [0, 1]
    (all zeros when flat, e.g. every importance zero) and upsampled bilinearly to the input size.
    `image` is the normalised (C, H, W) or (1, C, H, W) input as the model sees it; `mean`/`std`
    undo that normalisation for display (without them the image is just stretched to [0, 1]).
    The model's device and train/eval mode are left unchanged.
    """
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}")
    scores = _scores(importances)
    module = _find_layer(model, layer)
    out_channels = getattr(module, "out_channels", None)
    if isinstance(out_channels, int):
        _check_length(scores, out_channels, f"layer {layer!r}")

    device, dtype = _model_device_dtype(model)
    batch = image[None].to(device=device, dtype=dtype or image.dtype)
    activation = _layer_activation(model, module, batch)
    if activation.dim() != 4:
        raise ValueError(f"layer {layer!r} must output (N, C, H, W) maps, got shape {tuple(activation.shape)}")
    _check_length(scores, activation.shape[1], f"layer {layer!r}")

    heat = _importance_heatmap(activation, scores, size=(image.shape[1], image.shape[2]))
    shown, image_cmap = _display_image(image, mean, std)

    fig = Figure(figsize=figsize)
    ax_input, ax_heat, ax_overlay = fig.subplots(1, 3)
    ax_input.imshow(shown, cmap=image_cmap, vmin=0.0, vmax=1.0)
    ax_input.set_title("Input")
    shown_heat = ax_heat.imshow(heat, cmap=cmap, vmin=0.0, vmax=1.0)
    ax_heat.set_title(f"Filter importance heatmap ({layer})")
    fig.colorbar(shown_heat, ax=ax_heat, fraction=0.046, pad=0.04, label="importance-weighted activation (scaled)")
    ax_overlay.imshow(shown, cmap=image_cmap, vmin=0.0, vmax=1.0)
    ax_overlay.imshow(heat, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha)
    ax_overlay.set_title("Overlay")
    for ax in (ax_input, ax_heat, ax_overlay):
        ax.axis("off")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# 2. the filters themselves


def _filter_image(kernel: np.ndarray) -> tuple[np.ndarray, str | None]:
    """One (in, kh, kw) filter as a picture: RGB for 3 input channels, else the channel mean in grey.

    Each filter is scaled on its own so weak filters stay visible; a constant one is mid-grey.
    """
    if kernel.shape[0] == 3:
        return _minmax(kernel, constant=0.5).transpose(1, 2, 0), None
    return _minmax(kernel.mean(axis=0), constant=0.5), "gray"


def _grid(fig: Figure, count: int, columns: int = GRID_COLUMNS) -> list[Axes]:
    """`count` axes in rows of `columns` (fewer if fewer panels); spare axes switched off."""
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[count:]:
        ax.axis("off")
    return axes[:count]


def first_layer_filters(
    weight: torch.Tensor | np.ndarray,
    importances: np.ndarray | None = None,
    *,
    n_filters: int = 16,
    layer: str = "",
    figsize: tuple[float, float] = (12, 8),
    path: str | Path | None = None,
) -> Figure:
    """The first `n_filters` filters of a conv weight (out, in, kh, kw) as small images, with their scores.

    Meant for the first layer, whose filters act on the image and so can be read as colour/edge
    detectors; deeper layers are shown as the mean over input channels, which is only a rough look.
    """
    kernels = _to_numpy(weight)
    if kernels.ndim != 4:
        raise ValueError(f"weight must be a conv weight (out, in, kh, kw), got shape {kernels.shape}")
    if n_filters < 1:
        raise ValueError(f"n_filters must be at least 1, got {n_filters}")
    scores = None
    if importances is not None:
        scores = _scores(importances)
        _check_length(scores, kernels.shape[0], _layer_label(layer))
    count = min(n_filters, kernels.shape[0])

    fig = Figure(figsize=figsize)
    for i, ax in enumerate(_grid(fig, count)):
        picture, cmap = _filter_image(kernels[i])
        ax.imshow(picture, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        title = f"filter {i}"
        if scores is not None:
            title += f"\nimportance {scores[i]:.3g}"
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"Filters of {layer}" if layer else "Filters")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# 3. distribution of scores per layer


def importance_distribution(
    importances: Mapping[str, np.ndarray],
    *,
    figsize: tuple[float, float] = (10, 6),
    title: str = "Distribution of filter importances across layers",
    path: str | Path | None = None,
) -> Figure:
    """One box plot of filter scores per layer, in the mapping's order: which layers hold the slack.

    Tick labels are set with set_xticks/set_xticklabels rather than boxplot's `labels=` keyword,
    which matplotlib 3.9 renamed to `tick_labels=`, so this works on either side of the rename.
    """
    if not importances:
        raise ValueError("importance_distribution needs at least one layer's importances")
    names = list(importances)
    data = [_scores(importances[name]) for name in names]
    for name, scores in zip(names, data, strict=True):
        if scores.size == 0:
            raise ValueError(f"layer {name!r} has no importances")

    fig = Figure(figsize=figsize)
    ax = fig.subplots()
    ax.boxplot(data)
    positions = list(range(1, len(names) + 1))
    ax.set_xticks(positions)
    if len(names) > ROTATE_LABELS_ABOVE:
        ax.set_xticklabels(names, rotation=45, ha="right")
    else:
        ax.set_xticklabels(names)
    ax.set_ylabel("importance")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# 4. 2-D embedding of filter weights


def _pca_embedding(features: np.ndarray) -> np.ndarray:
    """(n, 2) PCA coordinates, zero-padded when fewer than two components exist (n or dim < 2)."""
    n, dim = features.shape
    if n == 1:
        return np.zeros((1, 2))
    components = min(2, n, dim)
    with np.errstate(divide="ignore", invalid="ignore"):  # explained_variance_ratio_ is 0/0 for identical rows
        coords = PCA(n_components=components, svd_solver="full").fit_transform(features)
    coords = np.nan_to_num(coords, nan=0.0, posinf=0.0, neginf=0.0)
    return np.pad(coords, ((0, 0), (0, 2 - components)))


def _tsne_is_safe(features: np.ndarray) -> bool:
    """Whether t-SNE's PCA initialisation is well defined.

    sklearn divides the PCA start by the std of its first coordinate (in float32); when every filter is
    identical (e.g. all zeroed) that is 0/0, the embedding is NaN, and the Barnes-Hut step segfaults
    (seen with sklearn 1.9) rather than raising. t-SNE also needs two input dimensions for a 2-D PCA.
    """
    if features.shape[1] < 2:
        return False
    with np.errstate(divide="ignore", invalid="ignore"):
        first = PCA(n_components=1, svd_solver="full").fit_transform(features)[:, 0].astype(np.float32)
    spread = float(np.std(first))
    return math.isfinite(spread) and spread > 0.0


def _tsne_embedding(features: np.ndarray, seed: int) -> np.ndarray:
    """(n, 2) t-SNE coordinates with perplexity scaled to n (sklearn requires perplexity < n)."""
    n = features.shape[0]
    perplexity = min(30.0, max(2.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(features)


def filter_tsne(
    weight: torch.Tensor | np.ndarray,
    importances: np.ndarray,
    *,
    layer: str = "",
    seed: int = 42,
    figsize: tuple[float, float] = (8, 6),
    path: str | Path | None = None,
) -> Figure:
    """Filters placed by weight similarity and coloured by score: do alike filters score alike?

    t-SNE for 8 or more filters; PCA below that (t-SNE needs neighbours) and whenever the filters are
    all identical (t-SNE's start is undefined then; everything sits at the origin). The title says which.
    Deterministic for a given `seed`.
    """
    features = _to_numpy(weight)
    n = features.shape[0] if features.ndim else 0
    if n < 1:
        raise ValueError("weight must hold at least one filter")
    features = np.nan_to_num(features.reshape(n, -1), nan=0.0, posinf=0.0, neginf=0.0)
    scores = _scores(importances)
    _check_length(scores, n, _layer_label(layer))

    use_tsne = n >= TSNE_MIN_FILTERS and _tsne_is_safe(features)
    coords = _tsne_embedding(features, seed) if use_tsne else _pca_embedding(features)
    coords = np.nan_to_num(coords, nan=0.0, posinf=0.0, neginf=0.0)

    fig = Figure(figsize=figsize)
    ax = fig.subplots()
    points = ax.scatter(coords[:, 0], coords[:, 1], c=scores, cmap="viridis", s=40, edgecolors="k", linewidths=0.3)
    fig.colorbar(points, ax=ax, label="filter importance")
    method = "t-SNE" if use_tsne else "PCA"
    details = [layer] if layer else []
    if not use_tsne:
        details.append(f"{n} filter" if n == 1 else f"{n} filters")
    ax.set_title(f"{method} of filter weights" + (f" ({', '.join(details)})" if details else ""))
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    return _save(fig, path)
