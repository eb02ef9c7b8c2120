"""`compress explain`: score a model's filters and write the four pictures with the importances.

The same loading as `compress run`, then scoring through the `CausalCNNExplainer` facade, so what the
command draws is what a Python user of the facade gets.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from . import __version__
from .artifacts import OutputDir, environment
from .config import RunConfig
from .data import load_splits
from .errors import ConfigError
from .explainer import CausalCNNExplainer
from .serialization import save_importances
from .zoo import check_model_accepts, get_spec, load_model

log = logging.getLogger("compress")

PICTURES = ("heatmap", "first_layer_filters", "importance_distribution", "filter_tsne")


def explain(
    config: RunConfig,
    *,
    criterion: str = "causal",
    tsne_layer: int | None = None,
    n_filters: int = 16,
    image_index: int = 0,
) -> dict[str, Any]:
    """Fit `criterion` on the calibration images and write pictures, importances and a summary."""
    config.validate()
    with OutputDir(config.out, force=config.force, inputs=(config.weights, config.data)) as out:
        start = time.perf_counter()
        spec = get_spec(config.model, trust_code=config.trust_code)
        splits = load_splits(config, spec.input_size, spec.mean, spec.std, spec.channels_known)
        loaded = load_model(spec, config.weights, splits.num_classes, trust_checkpoint=config.trust_checkpoint)
        check_model_accepts(loaded.model, splits.example_batch(16), splits.num_classes)
        if not 0 <= image_index < len(splits.evaluation):
            raise ConfigError(f"image index {image_index} is outside the {len(splits.evaluation)} evaluation images")
        explainer = CausalCNNExplainer(
            loaded.model,
            criterion=criterion,
            mean=splits.mean,
            std=splits.std,
            ridge=config.ridge,
            pool_grid=config.pool_grid,
            intervention_images=config.intervention_images,
            effect_images=config.effect_images,
        )
        n_layers = len(explainer.conv_layers)
        tsne_layer = n_layers - 1 if tsne_layer is None else tsne_layer
        if not 0 <= tsne_layer < n_layers:
            raise ConfigError(f"t-SNE layer index {tsne_layer} is outside the model's {n_layers} conv layers")
        explainer.collect_data(splits.loader("calibration", config.batch_size))
        explainer.learn_structural_equations()
        image = splits.evaluation[image_index][0]
        explainer.visualize_heatmap_on_input(image, path=out.path("plots/heatmap.png"), show=False)
        explainer.visualize_first_layer_filters(n_filters, path=out.path("plots/first_layer_filters.png"), show=False)
        explainer.plot_importance_distribution(path=out.path("plots/importance_distribution.png"), show=False)
        explainer.visualize_filter_tsne(tsne_layer, path=out.path("plots/filter_tsne.png"), show=False)
        save_importances(out.path("importances.npz"), {criterion: explainer.scorer})
        summary = {
            "schema": "compress.explanation/1",
            "compress_version": __version__,
            "model": {"name": spec.name, "weights": loaded.weights},
            "data": splits.info,
            "criterion": criterion,
            "calibration_images": explainer.scorer.n_images_,
            "layers": [
                {"index": i, "name": name, **_describe(explainer.filter_importances[i])}
                for i, (name, _) in enumerate(explainer.conv_layers)
            ],
            "pictures": {name: f"plots/{name}.png" for name in PICTURES},
            "importances": "importances.npz",
            "heatmap_image_index": image_index,
            "tsne_layer": explainer.conv_layers[tsne_layer][0],
            "seconds": round(time.perf_counter() - start, 3),
            "environment": environment(),
        }
        out.write_json("explanation.json", summary)
        out.write_manifest(
            {"schema": "compress.manifest/1", "compress_version": __version__, "config": config.to_dict()}
        )
        summary["output_dir"] = str(out.commit())
    return summary


def _describe(scores: np.ndarray) -> dict[str, Any]:
    return {
        "filters": len(scores),
        "min": float(scores.min()),
        "median": float(np.median(scores)),
        "max": float(scores.max()),
    }
