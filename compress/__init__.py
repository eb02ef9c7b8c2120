"""compress: prune CNNs by causal filter importance, export slim ONNX, benchmark against random pruning.

The stages, each usable on its own:

    from compress import load_data, get_spec, load_model, TotalEffectScorer, prune, export_onnx
"""

import importlib
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("compress")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

# What `from compress import X` gives, and the module it comes from. Imported on first use (PEP 562):
# `import compress` stays light, so the command line can start its heavy imports (torch, torch-pruning)
# where it can still honour a Ctrl-C (compress._console).
_EXPORTS = {
    "LatencySettings": ".benchmark",
    "make_session": ".benchmark",
    "measure_latency": ".benchmark",
    "onnx_accuracy": ".benchmark",
    "InterventionScorer": ".causal.intervention",
    "ReferenceCausalScorer": ".causal.reference",
    "CausalScorer": ".causal.scorer",
    "TotalEffectScorer": ".causal.total_effect",
    "CifarResNet": ".cifar_resnet",
    "RunConfig": ".config",
    "CRITERIA": ".criteria",
    "GroupScoreImportance": ".criteria",
    "SeededRandomImportance": ".criteria",
    "importance_factory": ".criteria",
    "l1_importance": ".criteria",
    "make_scorer": ".criteria",
    "DataSplits": ".data",
    "load_data": ".data",
    "CompressError": ".errors",
    "evaluate": ".evaluation",
    "CausalCNNExplainer": ".explainer",
    "check_parity": ".export",
    "export_onnx": ".export",
    "run": ".pipeline",
    "Pruner": ".pruner",
    "PruneResult": ".pruning",
    "prune": ".pruning",
    "recalibrate_batchnorm": ".recovery",
    "load_pruned": ".serialization",
    "TrainSettings": ".training",
    "train": ".training",
    "available_models": ".zoo",
    "get_spec": ".zoo",
    "load_model": ".zoo",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "CRITERIA",
    "CausalCNNExplainer",
    "CausalScorer",
    "CifarResNet",
    "CompressError",
    "DataSplits",
    "GroupScoreImportance",
    "InterventionScorer",
    "LatencySettings",
    "PruneResult",
    "Pruner",
    "ReferenceCausalScorer",
    "RunConfig",
    "SeededRandomImportance",
    "TotalEffectScorer",
    "TrainSettings",
    "__version__",
    "available_models",
    "check_parity",
    "evaluate",
    "export_onnx",
    "get_spec",
    "importance_factory",
    "l1_importance",
    "load_data",
    "load_model",
    "load_pruned",
    "make_scorer",
    "make_session",
    "measure_latency",
    "onnx_accuracy",
    "prune",
    "recalibrate_batchnorm",
    "run",
    "train",
]
