"""Files a run leaves behind for Python users: pruned.pt and importances.npz.

pruned.pt holds only tensors and plain values (the state dict, torch-pruning's pruning history and
how to rebuild the architecture), so it loads with `torch.load(..., weights_only=True)`: nothing in it
runs code. importances.npz is written with fixed zip timestamps, so the same scores give the same
bytes.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .artifacts import disk_errors
from .errors import ModelError

PRUNED_FORMAT = "compress.pruned/1"


def save_pruned(
    path: Path,
    model: nn.Module,
    history: list[list],
    architecture: str,
    num_classes: int,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    variant: Mapping[str, Any],
) -> None:
    payload = {
        "format": PRUNED_FORMAT,
        "architecture": architecture,
        "num_classes": int(num_classes),
        "input_size": [int(v) for v in input_size],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "variant": str(variant["name"]),
        "criterion": variant.get("criterion"),
        "ratio": float(variant.get("ratio") or 0.0),
        "pruning_history": history,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    with disk_errors(path):
        torch.save(payload, path)


def load_pruned(path: str | Path, trust_code: bool = False) -> nn.Module:
    """Rebuild a pruned model from pruned.pt: the architecture, the pruning history, then the weights.

    A model built from an import path (`package.module:factory`) is rebuilt by importing it again,
    which runs its code: that needs `trust_code`, as it did when it was pruned."""
    return load_pruned_with_info(path, trust_code)[0]


def load_pruned_with_info(path: str | Path, trust_code: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """`load_pruned`, plus what pruned.pt says about the model: architecture, num_classes, input_size,
    mean, std, variant, criterion, ratio."""
    from .pruning import apply_history
    from .zoo import get_spec, load_state_dict_checked, read_checkpoint

    payload = read_checkpoint(  # never trusted: a pruned.pt holds tensors and plain values only
        path, what="pruned model", flag="--pruned", untrusted_advice="a pruned.pt written by compress run has none"
    )
    if not isinstance(payload, dict) or payload.get("format") != PRUNED_FORMAT:
        raise ModelError(f"{path} is not a compress pruned model (format {PRUNED_FORMAT!r} expected)")
    spec = get_spec(payload["architecture"], trust_code=trust_code)
    model = spec.build(payload["num_classes"]).eval()
    example = torch.zeros(2, *payload["input_size"])
    apply_history(model, payload["pruning_history"], example)
    load_state_dict_checked(model, payload["state_dict"], str(path))
    info = {k: v for k, v in payload.items() if k not in ("state_dict", "pruning_history", "format")}
    return model.eval(), info


def save_importances(path: Path, scorers: Mapping[str, Any]) -> None:
    """The importances of fitted scorers, by criterion: "<criterion>/group:<root layer>" (per group
    channel), "<criterion>/layer:<layer>" (per output filter) and, for the causal criteria,
    "<criterion>/consumer:<layer>" (per input feature of each consumer)."""
    arrays = {}
    for criterion, scorer in scorers.items():
        arrays.update({f"{criterion}/group:{k}": v for k, v in scorer.importances_.items()})
        arrays.update({f"{criterion}/layer:{k}": v for k, v in scorer.layer_importances_.items()})
        for k, v in getattr(scorer, "consumer_importances_", {}).items():
            arrays[f"{criterion}/consumer:{k}"] = v
    save_npz_deterministic(path, arrays)


def save_npz_deterministic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez, but with fixed zip timestamps so equal arrays give byte-identical files."""
    with disk_errors(path), zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue())
