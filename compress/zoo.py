"""Model sources: a registry of names, one way to build a model, weights loaded explicitly.

`get_spec(name)` resolves a name to a `ModelSpec`: the project's own architectures, every torchvision
classification architecture, `timm:<name>` for timm's (the optional `timm` extra), and
`package.module:factory` for a user's own class or function returning an nn.Module (importing it runs
its code, so it needs `trust_code`). `load_model(spec, weights, num_classes)` builds it and loads a
checkpoint with `weights_only=True` unless the caller trusts the file.
"""

from __future__ import annotations

import importlib.resources
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .artifacts import sha256
from .cifar_resnet import DEPTHS as CIFAR_RESNET_DEPTHS
from .cifar_resnet import CifarResNet
from .errors import DataError, ModelError, first_line
from .progress import quiet_library_output

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Mean and std of scikit-learn's digits pixels (scaled to [0, 1]) over the training split; the
# checkpoint in models/ was trained with exactly these.
DIGITS_MEAN = (0.3056,)
DIGITS_STD = (0.3761,)


def _checkpoints_dir() -> Path:
    """The checkpoints the project trained itself travel with the package (models/ in the source tree,
    installed as compress.checkpoints), so a wheel or git install runs the default offline."""
    try:
        return Path(str(importlib.resources.files("compress.checkpoints")))
    except ModuleNotFoundError:  # a source tree on sys.path, not installed: models/ beside the package
        return Path(__file__).resolve().parent.parent / "models"


CHECKPOINTS_DIR = _checkpoints_dir()


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture and what input it expects."""

    name: str
    build: Callable[[int], nn.Module]  # num_classes -> freshly initialised model
    input_size: tuple[int, int, int]  # (channels, height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_weights: Path | None = None  # a checkpoint shipped with the project, if any
    channels_known: bool = True  # False: input_size's channels are a guess (no convolution says them)
    description: str = ""
    source: str = "compress"


@dataclass
class LoadedModel:
    """A built model with its weights and where they came from."""

    model: nn.Module
    spec: ModelSpec
    num_classes: int
    weights: str | None  # path or torchvision weights name; None for random initialisation
    weights_sha256: str | None = None
    notes: list[str] = field(default_factory=list)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


class DigitsCNN(nn.Module):
    """The embedded default: four 3x3 conv layers with batch norm on 8x8 grey-scale digits.

    Wide enough (32-64-128-128 filters) that removing 10-50% of them is a real test, small enough to
    train in under a minute on two cores (scripts/train_digits.py).
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int, int] = (32, 64, 128, 128)):
        super().__init__()
        c1, c2, c3, c4 = widths
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(c4)
        self.fc = nn.Linear(c4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # 8x8
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)  # 4x4
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


register_model(
    ModelSpec(
        name="digits-cnn",
        build=lambda num_classes: DigitsCNN(num_classes),
        input_size=(1, 8, 8),
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        default_weights=CHECKPOINTS_DIR / "digits_cnn.pt",
        description="4-conv CNN for scikit-learn's 8x8 digits (the embedded default)",
    )
)


def _register_cifar_resnets() -> None:
    # Option A is the paper's CIFAR variant and the one the community checkpoints use.
    for depth in CIFAR_RESNET_DEPTHS:
        for shortcut, suffix in (("A", ""), ("B", "_b")):
            register_model(
                ModelSpec(
                    name=f"cifar_resnet{depth}{suffix}",
                    build=lambda num_classes, d=depth, s=shortcut: CifarResNet(d, num_classes, s),
                    input_size=(3, 32, 32),
                    # The community checkpoints were trained with ImageNet statistics; override with
                    # --mean/--std for weights trained otherwise.
                    mean=IMAGENET_MEAN,
                    std=IMAGENET_STD,
                    description=f"ResNet-{depth} for 32x32 CIFAR images, option-{shortcut} shortcuts",
                )
            )


_register_cifar_resnets()


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision_spec(name: str) -> ModelSpec:
    import torchvision

    def build(num_classes: int) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    # Inception v3 wants 299x299; every other classification model defaults to 224x224.
    size = 299 if name == "inception_v3" else 224
    return ModelSpec(
        name=name,
        build=build,
        input_size=(3, size, size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description=f"torchvision.models.{name}",
        source="torchvision",
    )


TIMM_PREFIX = "timm:"


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need the timm package: pip install 'compress[timm]'") from None
    return timm


def _timm_spec(name: str) -> ModelSpec:
    timm = _timm()
    arch = name[len(TIMM_PREFIX) :]
    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=1)
        hint = f"; did you mean 'timm:{close[0]}'?" if close else ""
        raise ModelError(f"timm has no model {arch!r}{hint} (timm.list_models() lists them)")
    found = timm.models.get_pretrained_cfg(arch)  # input size and normalisation of its default weights
    config = found.to_dict() if found is not None else {}
    return ModelSpec(
        name=name,
        build=lambda num_classes: timm.create_model(arch, pretrained=False, num_classes=num_classes),
        input_size=tuple(config.get("input_size", (3, 224, 224))),
        mean=tuple(config.get("mean", IMAGENET_MEAN)),
        std=tuple(config.get("std", IMAGENET_STD)),
        description=f"timm {arch}",
        source="timm",
    )


def is_import_path(name: str) -> bool:
    """`package.module:factory`: a user's own architecture (not `timm:<name>`)."""
    module, colon, factory = name.partition(":")
    return bool(colon) and not name.startswith(TIMM_PREFIX) and module != "" and factory.isidentifier()


def _imported_spec(name: str, trust_code: bool) -> ModelSpec:
    """A user's class or function returning an nn.Module, imported only when they trust it."""
    module_name, _, attribute = name.partition(":")
    if not trust_code:
        raise ModelError(f"--model {name} imports {module_name} and runs its code; pass --trust-code if you trust it")
    import importlib
    import inspect

    if os.getcwd() not in sys.path:  # `compress` is a console script: let it import from where it runs
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import {name} ({type(exc).__name__}: {first_line(exc)})") from exc
    except Exception as exc:  # the module's own code failed
        raise ModelError(f"importing {module_name} failed ({type(exc).__name__}: {first_line(exc)})") from exc
    if not callable(factory):
        raise ModelError(f"{name} is not a class or function returning an nn.Module")
    try:
        takes_classes = "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_classes = False

    def build(num_classes: int) -> nn.Module:
        try:
            model = factory(num_classes=num_classes) if takes_classes else factory()
        except Exception as exc:
            raise ModelError(f"{name}() failed ({type(exc).__name__}: {first_line(exc)})") from exc
        if not isinstance(model, nn.Module):
            raise ModelError(f"{name}() returned {type(model).__name__}, not an nn.Module")
        return model

    first_conv = next((m for m in build(10).modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    return ModelSpec(
        name=name,
        build=build,
        input_size=(channels, 224, 224),  # a guess: --image-size, --mean and --std say what it was trained on
        mean=IMAGENET_MEAN if channels == 3 else (0.5,) * channels,
        std=IMAGENET_STD if channels == 3 else (0.5,) * channels,
        description=f"{attribute} from {module_name}",
        source="import",
        channels_known=first_conv is not None,
    )


def available_models() -> list[str]:
    """Every name `get_spec` lists: the project's own first, then torchvision's (timm's take the
    `timm:` prefix; a user's own architecture is an import path)."""
    return sorted(_REGISTRY) + [n for n in _torchvision_names() if n not in _REGISTRY]


def get_spec(name: str, trust_code: bool = False) -> ModelSpec:
    """The architecture called `name`; an import path (`package.module:factory`) needs `trust_code`."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name)
    if is_import_path(name):
        return _imported_spec(name, trust_code)
    names = _torchvision_names()
    if name in names:
        return _torchvision_spec(name)
    import difflib

    close = difflib.get_close_matches(name, list(_REGISTRY) + names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ModelError(
        f"unknown model {name!r}{hint} (`compress models` lists the names; timm:<name> for timm, "
        "package.module:factory for your own)"
    )


_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def read_state_dict(path: str | Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read the weights in `path` as a flat state dict.

    Accepts a plain state dict, a training checkpoint holding one under a usual key ("state_dict",
    "model", ...), and weights saved from `nn.DataParallel` ("module." prefixes). A whole pickled
    model loads only with `trust_checkpoint`, because unpickling it runs code from the file.
    """
    obj = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    if isinstance(obj, nn.Module):  # only reachable with trust_checkpoint
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"checkpoint {path} holds no weights (expected a state dict of tensors)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_checkpoint(
    path: str | Path,
    *,
    trust_checkpoint: bool = False,
    what: str = "checkpoint",
    flag: str = "--weights",
    untrusted_advice: str = "save model.state_dict() instead, or pass --trust-checkpoint if you trust its source",
) -> Any:
    """`torch.load` of a file the user named, with `weights_only=True` unless they trust it; every way
    it can fail is one ModelError line naming the file (`what` it should be, the `flag` that gave it,
    and what to do about pickled objects in it)."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{what} {path} is a directory; pass a file with {flag}")
    if not path.is_file():
        raise ModelError(f"{what} not found: {path} (pass the path of an existing file with {flag})")
    if path.stat().st_size == 0:
        raise ModelError(f"{what} is empty: {path} (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found and not trust_checkpoint:
            raise ModelError(
                f"{what} {path} holds pickled Python objects ({found.group(1)}; e.g. a whole model saved "
                f"with torch.save(model)), and loading those runs code from the file; {untrusted_advice}"
            ) from exc
        raise ModelError(f"{what} {path} is corrupt or not a PyTorch file (unpickling failed)") from exc
    except Exception as exc:  # torch.load fails on foreign bytes in many ways (KeyError for a text file)
        reason = first_line(exc).split(". ")[0]  # a truncated file's zip error goes on with a paragraph
        raise ModelError(f"{what} {path} is corrupt or not a PyTorch file ({type(exc).__name__}: {reason})") from exc


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`model.load_state_dict(strict=True)` with an error that names what does not fit."""
    expected = model.state_dict()
    # Checkpoints from PyTorch < 0.4.1 predate batch norm's step counter; eval mode never reads it.
    state = dict(state)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (file vs model) {_few(mismatched)}")
    if problems:
        raise ModelError(f"weights in {source} do not fit the architecture: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _few(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)} in all)"


def check_model_accepts(model: nn.Module, example: torch.Tensor, num_classes: int) -> None:
    """The model runs on `example` (real, normalised images) and outputs `num_classes` class scores."""
    try:
        with torch.no_grad():
            output = model.eval()(example)
    except Exception as exc:
        raise DataError(
            f"the model cannot take input of shape {tuple(example.shape[1:])} "
            f"({type(exc).__name__}: {first_line(exc)}); "
            "set --image-size (and --mean/--std) to what the model was trained on"
        ) from exc
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[1] != num_classes:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(f"the model outputs {shape}, expected (batch, {num_classes}) class scores")


def load_model(
    spec: ModelSpec,
    weights: str | Path | None = None,
    num_classes: int = 10,
    trust_checkpoint: bool = False,
    allow_random_init: bool = False,
) -> LoadedModel:
    """Build `spec` for `num_classes` outputs and load its weights.

    `weights` is a checkpoint path or, for torchvision architectures, the name of a torchvision
    weights enum member (e.g. "DEFAULT", "IMAGENET1K_V1": downloaded by torchvision, needs internet);
    for timm architectures "DEFAULT" or one of timm's pretrained tags (e.g. "a1_in1k", downloaded by
    timm, needs internet).
    Without `weights` the spec's shipped checkpoint is used; a model with neither is an error unless
    `allow_random_init` (for tests and latency-only studies).
    """
    model = spec.build(num_classes)
    if weights is None and spec.default_weights is not None:
        weights = spec.default_weights
        if not Path(weights).is_file():
            raise ModelError(
                f"the shipped checkpoint of {spec.name} is missing ({weights}); "
                "reinstall compress, or run scripts/train_digits.py in its source tree, or pass --weights"
            )
    if weights is None:
        if not allow_random_init:
            raise ModelError(f"model {spec.name} has no shipped weights: pass --weights FILE")
        return LoadedModel(model.eval(), spec, num_classes, None, notes=["randomly initialised"])

    path = Path(weights)
    if not path.exists() and spec.source == "torchvision" and _is_weights_enum_name(str(weights)):
        return _load_torchvision_weights(spec, str(weights), num_classes)
    if not path.exists() and spec.source == "timm" and _is_timm_tag(spec, str(weights)):
        return _load_timm_weights(spec, str(weights), num_classes)
    state = read_state_dict(path, trust_checkpoint=trust_checkpoint)
    _check_class_count(model, state, num_classes, str(path))
    load_state_dict_checked(model, state, str(path))
    return LoadedModel(model.eval(), spec, num_classes, str(path), sha256(path))


def _check_class_count(model: nn.Module, state: Mapping[str, torch.Tensor], num_classes: int, source: str) -> None:
    """Name a class-count mismatch plainly, instead of as a shape mismatch deep in the state dict.

    The classifier is the tensor whose first dimension is `num_classes` in the model built for the
    data, and something else in the file, with every other dimension equal.
    """
    for key, expected in model.state_dict().items():
        found = state.get(key)
        if (
            found is not None
            and found.dim() == expected.dim() >= 1
            and expected.shape[0] == num_classes != found.shape[0]
            and tuple(found.shape[1:]) == tuple(expected.shape[1:])
        ):
            raise ModelError(
                f"weights in {source} have {found.shape[0]} output classes ({key}) but the data has "
                f"{num_classes}; use data with the model's classes or weights trained for this data"
            )


def _is_weights_enum_name(value: str) -> bool:
    return value.isupper() or value == "DEFAULT"


def _is_timm_tag(spec: ModelSpec, value: str) -> bool:
    """ "DEFAULT" (or "pretrained") or one of timm's pretrained tags of the architecture (a1_in1k, ...)."""
    if value in ("DEFAULT", "pretrained"):
        return True
    arch = spec.name[len(TIMM_PREFIX) :].split(".")[0]
    return f"{arch}.{value}" in _timm().list_pretrained(f"{arch}.*")


def _load_timm_weights(spec: ModelSpec, tag: str, num_classes: int) -> LoadedModel:
    """timm's pretrained weights, downloaded by timm from its hub (needs internet)."""
    timm = _timm()
    arch = spec.name[len(TIMM_PREFIX) :]
    name = arch if tag in ("DEFAULT", "pretrained") else f"{arch.split('.')[0]}.{tag}"
    config = timm.models.get_pretrained_cfg(name)
    classes = getattr(config, "num_classes", None)
    if classes and classes != num_classes:  # timm would silently put an untrained classifier on top
        raise ModelError(f"timm weights {name} have {classes} classes but the data has {num_classes}")
    try:
        with quiet_library_output():  # the hub client logs every retry
            model = timm.create_model(name, pretrained=True, num_classes=num_classes)
    except Exception as exc:  # no internet, a blocked hub, or no such weights
        raise ModelError(
            f"could not load timm weights {name} ({type(exc).__name__}: {first_line(exc)}); "
            "download them where there is internet and pass the state dict with --weights"
        ) from exc
    return LoadedModel(model.eval(), spec, num_classes, f"timm:{name}")


def _load_torchvision_weights(spec: ModelSpec, weights_name: str, num_classes: int) -> LoadedModel:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(spec.name)
        weights = enum[weights_name] if weights_name != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError) as exc:
        raise ModelError(f"torchvision has no weights {weights_name!r} for {spec.name}") from exc
    categories = len(weights.meta.get("categories", []))
    if categories and categories != num_classes:
        raise ModelError(
            f"torchvision weights {spec.name}.{weights_name} have {categories} classes but the data has {num_classes}"
        )
    try:
        model = torchvision.models.get_model(spec.name, weights=weights)
    except OSError as exc:  # no internet, or a blocked hub
        raise ModelError(
            f"could not download torchvision weights {spec.name}.{weights_name} ({first_line(exc)}); "
            "download them where there is internet and pass the file with --weights"
        ) from exc
    return LoadedModel(model.eval(), spec, num_classes, f"torchvision:{weights_name}")
