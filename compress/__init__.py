"""compress: prune CNNs by causal filter importance, export slim ONNX, benchmark against random pruning.

The stages, each usable on its own:

    from compress import load_data, get_spec, load_model, TotalEffectScorer, prune, export_onnx
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("compress")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

from .benchmark import LatencySettings, make_session, measure_latency, onnx_accuracy
from .causal.intervention import InterventionScorer
from .causal.reference import ReferenceCausalScorer
from .causal.scorer import CausalScorer
from .causal.total_effect import TotalEffectScorer
from .cifar_resnet import CifarResNet
from .config import RunConfig
from .criteria import (
    CRITERIA,
    GroupScoreImportance,
    SeededRandomImportance,
    importance_factory,
    l1_importance,
    make_scorer,
)
from .data import DataSplits, load_data
from .errors import CompressError
from .evaluation import evaluate
from .explainer import CausalCNNExplainer
from .export import check_parity, export_onnx
from .pipeline import run
from .pruning import PruneResult, prune
from .recovery import recalibrate_batchnorm
from .serialization import load_pruned
from .training import TrainSettings, train
from .zoo import available_models, get_spec, load_model

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
