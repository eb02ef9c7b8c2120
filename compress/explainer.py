"""`CausalCNNExplainer`: the seed's API (applybn) as a thin facade over this project's stages
(scoring, criteria, pruning, evaluation, pictures), so it sits above them.

The seed's example runs with only its import line changed. Where the seed is wrong, this facade
follows the project instead:
- pruning returns a physically smaller model (torch-pruning, every coupled layer with it, validated),
  and `pruned_filters_` says which output filters of each layer were removed;
- the caller's model is never changed: the explainer works on its own eval-mode copy (`.model`);
- the graph is the traced one and scores come from the chosen criterion (`causal` by default;
  `causal-reference` reproduces the seed's own numbers);
- pictures return a matplotlib Figure, save it when given a path, and are only shown where there is
  a display.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from . import visualize
from .causal.calibration import batch_images
from .criteria import SCORED_CRITERIA, importance_factory, make_scorer
from .evaluation import evaluate
from .layers import learned_convs
from .pruning import prune


class CausalCNNExplainer:
    """Measure the causal importance of a CNN's filters, prune by it and picture it.

    Parameters
    ----------
    model: the trained CNN (left untouched; a private copy is moved to `device`).
    device: where the copy runs (default CPU).
    criterion: "causal" (default, total effects), "causal-direct" (direct effects), "causal-reference"
        (the seed's literal method) or "intervention".
    mean, std: the input normalisation, to un-normalise images in the heatmap; read from the loader's
        transforms when not given.
    effect_images: calibration images the causal (total-effect) criterion measures on.
    ridge, pool_grid: settings of causal-direct's structural equations.
    intervention_images: calibration images the intervention criterion measures on.
    round_to: keep pruned channel counts a multiple of this (None: exact percentages).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str | None = None,
        *,
        criterion: str = "causal",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        ridge: float = 1e-2,
        pool_grid: int = 1,
        intervention_images: int = 128,
        effect_images: int = 512,
        round_to: int | None = None,
    ):
        if criterion not in SCORED_CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(SCORED_CRITERIA)}, got {criterion!r}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = copy.deepcopy(model).to(self.device).eval()
        self.criterion = criterion
        self.mean, self.std = mean, std
        self.round_to = round_to
        self.scorer = make_scorer(
            criterion,
            ridge=ridge,
            pool_grid=pool_grid,
            intervention_images=intervention_images,
            effect_images=effect_images,
        )
        self.conv_layers = list(learned_convs(self.model))
        if not self.conv_layers:
            raise ValueError(f"{type(model).__name__} has no nn.Conv2d layers to explain")
        self.filter_importances = {i: np.zeros(m.out_channels) for i, (_, m) in enumerate(self.conv_layers)}
        self.pruned_filters_: dict[str, list[int]] = {}
        self._example_inputs: torch.Tensor | None = None  # first calibration images: pruning validates on them

    # -- learning ---------------------------------------------------------------------------------

    def collect_data(self, data_loader: Iterable, max_batches: int | None = None) -> CausalCNNExplainer:
        """One pass over `data_loader` ((images, labels) batches), at most `max_batches` batches."""
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be a positive integer or None, got {max_batches}")
        if self.mean is None and self.std is None:
            self.mean, self.std = _normalisation_of(data_loader)
        self._example_inputs = None
        batches = itertools.islice(data_loader, max_batches) if max_batches else data_loader
        total = len(data_loader) if hasattr(data_loader, "__len__") else None
        images = self._on_device(batches)
        if total is not None:  # lets the progress bar show the total
            images = _Sized(images, min(total, max_batches or total))
        self.scorer.collect(self.model, images)
        return self

    def learn_structural_equations(self) -> CausalCNNExplainer:
        """Fit the criterion's scores from the collected data; fills `filter_importances`."""
        if self._example_inputs is None:
            raise RuntimeError("call collect_data(loader) before learn_structural_equations()")
        self.scorer.solve()
        scores = self.scorer.layer_importances_
        self.filter_importances = {
            i: np.asarray(scores.get(name, np.zeros(m.out_channels)), dtype=float)
            for i, (name, m) in enumerate(self.conv_layers)
        }
        return self

    def get_filter_importances(self) -> dict[int, np.ndarray]:
        """Layer index (conv layers in registration order, as `conv_layers`) -> importance per filter."""
        return self.filter_importances

    def get_filter_importances_by_name(self) -> dict[str, np.ndarray]:
        return {name: self.filter_importances[i] for i, (name, _) in enumerate(self.conv_layers)}

    # -- pruning and evaluation -------------------------------------------------------------------

    def prune_filters_by_importance(self, percent: float) -> nn.Module:
        """A physically smaller copy with `percent` (0-100) of every prunable group's least important
        channels removed; the removed filters per layer are in `pruned_filters_`."""
        self._require_scores()
        return self._prune(percent, importance_factory(self.criterion, self.scorer))

    def prune_random_filters(self, percent: float, seed: int = 0) -> nn.Module:
        """Like `prune_filters_by_importance`, with channels chosen at random by a seeded generator."""
        if self._example_inputs is None:
            raise RuntimeError("call collect_data(loader) first: pruning is validated on its images")
        return self._prune(percent, importance_factory("random", seed=seed))

    def _prune(self, percent: float, factory) -> nn.Module:
        if not 0 < percent < 100:
            raise ValueError(f"percent must be in (0, 100), got {percent}")
        result = prune(self.model, factory, percent / 100.0, self._example_inputs, round_to=self.round_to)
        self.prune_result_ = result
        self.pruned_filters_ = result.pruned_channels()
        return result.model

    def evaluate_model(self, model: nn.Module, data_loader: Iterable) -> float:
        """Top-1 accuracy in [0, 1]; the model's mode and device are left as they were."""
        device = next(model.parameters()).device
        batches = ((x.to(device), y.to(device)) for x, y in data_loader)
        return evaluate(model, batches)["top1"] / 100.0

    # -- pictures ---------------------------------------------------------------------------------

    def visualize_heatmap_on_input(
        self,
        image_tensor: torch.Tensor,
        alpha: float = 0.5,
        cmap: str = "viridis",
        figsize: tuple[float, float] = (15, 5),
        *,
        layer_idx: int = 0,
        path: str | Path | None = None,
        show: bool | None = None,
    ) -> Figure:
        """Input, importance-weighted activation map of conv layer `layer_idx`, and their overlay."""
        name = self.conv_layers[layer_idx][0]
        fig = visualize.heatmap_on_input(
            self.model,
            image_tensor,
            name,
            self.filter_importances[layer_idx],
            mean=self.mean,
            std=self.std,
            alpha=alpha,
            cmap=cmap,
            figsize=figsize,
            path=path,
        )
        return _display(fig, show)

    def visualize_first_layer_filters(
        self,
        n_filters: int = 16,
        figsize: tuple[float, float] = (12, 8),
        *,
        path: str | Path | None = None,
        show: bool | None = None,
    ) -> Figure:
        name, layer = self.conv_layers[0]
        fig = visualize.first_layer_filters(
            layer.weight, self.filter_importances[0], n_filters=n_filters, layer=name, figsize=figsize, path=path
        )
        return _display(fig, show)

    def plot_importance_distribution(
        self, figsize: tuple[float, float] = (10, 6), *, path: str | Path | None = None, show: bool | None = None
    ) -> Figure:
        fig = visualize.importance_distribution(self.get_filter_importances_by_name(), figsize=figsize, path=path)
        return _display(fig, show)

    def visualize_filter_tsne(
        self,
        layer_idx: int = 0,
        figsize: tuple[float, float] = (8, 6),
        *,
        path: str | Path | None = None,
        show: bool | None = None,
    ) -> Figure:
        name, layer = self.conv_layers[layer_idx]
        fig = visualize.filter_tsne(
            layer.weight, self.filter_importances[layer_idx], layer=name, figsize=figsize, path=path
        )
        return _display(fig, show)

    # -- helpers ----------------------------------------------------------------------------------

    def _on_device(self, batches: Iterable) -> Iterator:
        for batch in batches:
            images = batch_images(batch).to(self.device)
            if self._example_inputs is None:
                self._example_inputs = images[:16]
            yield images

    def _require_scores(self) -> None:
        if not hasattr(self.scorer, "layer_importances_"):
            raise RuntimeError("call collect_data(loader) and learn_structural_equations() before pruning")


class _Sized:
    """An iterator with a known length, so the scorer's progress bar knows the total."""

    def __init__(self, iterator: Iterator, length: int):
        self.iterator, self.length = iterator, length

    def __iter__(self) -> Iterator:
        return self.iterator

    def __len__(self) -> int:
        return self.length


def _normalisation_of(loader) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The mean/std of a torchvision `Normalize` in the loader's dataset transforms, if there is one."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None:
        transform = getattr(dataset, "transform", None)
        for t in getattr(transform, "transforms", [transform]):
            if type(t).__name__ == "Normalize":
                return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
        dataset = getattr(dataset, "dataset", None)  # Subset and friends
    return None, None


NON_INTERACTIVE_BACKENDS = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


def _display(fig: Figure, show: bool | None) -> Figure:
    """Show `fig` in a window when asked to, or by default where the backend can display one."""
    import matplotlib

    backend = matplotlib.get_backend().lower()
    if show is None:
        show = backend not in NON_INTERACTIVE_BACKENDS and "inline" not in backend
    if show:
        import matplotlib.pyplot as plt

        # Figures are built without pyplot; hand this one to a pyplot window to show it.
        manager = plt.figure(figsize=fig.get_size_inches()).canvas.manager
        manager.canvas.figure = fig
        fig.set_canvas(manager.canvas)
        plt.show()
    return fig
