"""One run's configuration: every CLI flag maps onto a field; `validate` names the bad one.

A configuration file (TOML) holds the same fields under their flag names (`latency-batch` or
`latency_batch`); flags given on the command line override it. `compress config show` prints the
result.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import onnx

from .allocation import DEFAULT_ALLOCATION, DEFAULT_NORMALISATION, settings_problem
from .criteria import CRITERIA, DEFAULT_CRITERIA
from .errors import ConfigError
from .export import EXPORTERS
from .training import AUGMENTATIONS, SCHEDULES, TrainSettings

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.5)
PROVIDER_CHOICES = ("cpu", "cuda", "tensorrt")  # what --provider accepts (onnxruntime execution providers)


@dataclass
class RunConfig:
    # model
    model: str = "digits-cnn"
    weights: str | None = None
    trust_checkpoint: bool = False
    trust_code: bool = False  # allow `model` to be an import path (package.module:factory)
    # data
    data: str = "digits"
    data_root: str | None = None
    download: bool = False
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    calibration_size: int = 2000
    eval_size: int | None = None
    batch_size: int = 128
    seed: int = 0
    # scoring and pruning
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    criteria: tuple[str, ...] = DEFAULT_CRITERIA
    random_seeds: int = 3
    ridge: float = 1e-2
    pool_grid: int = 1
    intervention_images: int = 128
    effect_images: int = 512  # images the causal (total-effect) criterion measures on
    round_to: int | None = 4  # kept channels a multiple of 4: odd counts ran 2.7x slower (BENCHMARKS.md)
    allocation: str = DEFAULT_ALLOCATION  # how the amount is spread over the groups (compress.allocation); with
    # global and auto allocation a ratio is the share of MACs removed, with uniform the share of each
    # group's channels
    steps: int = 1  # reach the amount in this many steps, re-estimating batch norm and re-scoring between
    max_group_ratio: float = 0.9  # global allocation takes at most this fraction of one group's channels
    group_normalisation: str = DEFAULT_NORMALISATION  # global allocation: how group scores are scaled
    recalibrate: bool = True
    # fine-tuning of every pruned variant, random baselines included (0 epochs: none), on training
    # images disjoint from calibration and evaluation; with distill, the original is the teacher
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    finetune_schedule: str = "cosine"
    finetune_batch_size: int = 128
    finetune_weight_decay: float = 5e-4
    finetune_augment: str = "auto"
    finetune_size: int | None = None  # training images used (None: every one calibration left)
    distill: bool = False
    distill_temperature: float = 4.0
    distill_weight: float = 0.7
    # export and benchmark
    exporter: str = "dynamo"
    opset: int = 18
    parity_tolerance: float = 1e-4
    providers: tuple[str, ...] | None = None  # None: every available provider
    threads: int | None = None
    latency_batch: int = 32
    latency_runs: int = 50
    latency_min_seconds: float = 1.0
    latency_window_seconds: float = 10.0
    warmup: int = 10
    int8: bool = False  # also an INT8 (QDQ) twin of the original and of every ship-criterion variant
    int8_images: int = 512  # calibration images that set the INT8 activation ranges
    ship_int8: bool = False  # ship the chosen variant's INT8 twin when within accuracy_tolerance (implies int8)
    # choosing what to ship, and the quality gates it must pass (None: no gate)
    ship_criterion: str = "causal"
    accuracy_tolerance: float = 1.0
    max_accuracy_drop: float | None = None  # top-1 points the shipped model may lose against the original
    min_speedup: float | None = None  # measured speed-up of the shipped model at the larger latency batch
    max_size_mb: float | None = None  # size of model.onnx, MB (10^6 bytes)
    target_macs_ratio: float | None = None  # find the ratio keeping at most this fraction of the MACs; ship it
    target_speedup: float | None = None  # find the ratio whose measured speed-up reaches this; ship it
    # output
    out: str = "compress-output"
    force: bool = False

    def validate(self) -> RunConfig:
        """Check every field; raise ConfigError naming the first bad one. Returns self."""
        for field in dataclasses.fields(self):  # nan passes every comparison below, inf most of them
            value = getattr(self, field.name)
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, float) and not math.isfinite(item):
                    raise ConfigError(f"{field.name} must be a finite number, got {item!r}")
        self.ratios = tuple(sorted(set(float(r) for r in self.ratios)))
        if not self.ratios and self.target_macs_ratio is None and self.target_speedup is None:
            # with a target, its ratio alone may be pruned (--ratios "")
            raise ConfigError("ratios: give at least one pruning ratio, e.g. --ratios 0.3, or a target")
        for r in self.ratios:
            if not (0.0 < r < 1.0) or math.isnan(r):
                raise ConfigError(f"ratios: each pruning ratio must be in (0, 1), got {r:g}")
        self.criteria = tuple(dict.fromkeys(self.criteria))
        for c in self.criteria:
            if c not in CRITERIA:
                raise ConfigError(f"criteria: unknown criterion {c!r}; choose from {', '.join(CRITERIA)}")
        if not self.criteria:
            raise ConfigError("criteria: give at least one criterion")
        check_positive_int("random_seeds", self.random_seeds)
        check_positive_int("calibration_size", self.calibration_size, minimum=2)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("pool_grid", self.pool_grid)
        check_positive_int("effect_images", self.effect_images)
        check_positive_int("steps", self.steps)
        problem = settings_problem(self.allocation, self.group_normalisation, self.max_group_ratio)
        if problem:
            raise ConfigError(problem)
        check_positive_int("intervention_images", self.intervention_images)
        check_positive_int("latency_batch", self.latency_batch)
        check_positive_int("latency_runs", self.latency_runs)
        check_positive_int("warmup", self.warmup, minimum=0)
        check_positive_int("int8_images", self.int8_images)
        for name in ("latency_min_seconds", "latency_window_seconds"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        check_positive_int("opset", self.opset, minimum=13)
        if self.opset > onnx.defs.onnx_opset_version():
            raise ConfigError(
                f"opset must be at most {onnx.defs.onnx_opset_version()} (this onnx's newest), got {self.opset}"
            )
        self._validate_finetuning()
        for name in ("eval_size", "image_size", "threads", "round_to"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.ridge < 0:
            raise ConfigError(f"ridge must be >= 0, got {self.ridge:g}")
        if self.parity_tolerance <= 0:
            raise ConfigError(f"parity_tolerance must be > 0, got {self.parity_tolerance:g}")
        if self.accuracy_tolerance < 0:
            raise ConfigError(f"accuracy_tolerance must be >= 0 (points), got {self.accuracy_tolerance:g}")
        if self.target_macs_ratio is not None and self.target_speedup is not None:
            raise ConfigError("give target_macs_ratio or target_speedup, not both")
        if self.target_macs_ratio is not None and not 0 < self.target_macs_ratio < 1:
            raise ConfigError(f"target_macs_ratio must be in (0, 1), got {self.target_macs_ratio:g}")
        if self.target_speedup is not None and not 1 < self.target_speedup < math.inf:
            raise ConfigError(f"target_speedup must be a finite number > 1, got {self.target_speedup:g}")
        for name in ("max_accuracy_drop", "min_speedup", "max_size_mb"):
            value = getattr(self, name)
            if value is not None and (not value >= 0 or math.isinf(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        for provider in self.providers or ():
            if provider not in PROVIDER_CHOICES:
                raise ConfigError(
                    f"providers: unknown provider {provider!r}; choose from {', '.join(PROVIDER_CHOICES)}"
                )
        if self.exporter not in EXPORTERS:
            raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {self.exporter!r}")
        if self.ship_int8:
            self.int8 = True
        if self.ship_criterion not in self.criteria:
            self.ship_criterion = self.criteria[0]
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None:
                values = tuple(float(v) for v in values)
                if not values:
                    raise ConfigError(f"{name}: give one value per input channel")
                setattr(self, name, values)
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be positive, got {self.std}")
        return self

    def _validate_finetuning(self) -> None:
        check_positive_int("finetune_epochs", self.finetune_epochs, minimum=0)
        check_positive_int("finetune_batch_size", self.finetune_batch_size)
        if self.finetune_size is not None:
            check_positive_int("finetune_size", self.finetune_size)
        if not (self.finetune_lr > 0 and math.isfinite(self.finetune_lr)):
            raise ConfigError(f"finetune_lr must be a finite number > 0, got {self.finetune_lr!r}")
        if not self.finetune_weight_decay >= 0:
            raise ConfigError(f"finetune_weight_decay must be >= 0, got {self.finetune_weight_decay!r}")
        if self.finetune_schedule not in SCHEDULES:
            raise ConfigError(
                f"finetune_schedule must be one of {', '.join(SCHEDULES)}, got {self.finetune_schedule!r}"
            )
        if self.finetune_augment not in AUGMENTATIONS:
            raise ConfigError(
                f"finetune_augment must be one of {', '.join(AUGMENTATIONS)}, got {self.finetune_augment!r}"
            )
        if not self.distill_temperature > 0:
            raise ConfigError(f"distill_temperature must be > 0, got {self.distill_temperature!r}")
        if not 0 <= self.distill_weight <= 1:
            raise ConfigError(f"distill_weight must be in [0, 1], got {self.distill_weight!r}")
        if self.distill and self.finetune_epochs == 0:
            raise ConfigError("distill trains the pruned models: give --finetune-epochs N (N >= 1) with --distill")

    def train_settings(self) -> TrainSettings:
        """How every pruned variant is fine-tuned (meaningful when finetune_epochs >= 1)."""
        return TrainSettings(
            epochs=max(self.finetune_epochs, 1),
            lr=self.finetune_lr,
            schedule=self.finetune_schedule,
            batch_size=self.finetune_batch_size,
            weight_decay=self.finetune_weight_decay,
            augment=self.finetune_augment,
            distill=self.distill,
            temperature=self.distill_temperature,
            distill_weight=self.distill_weight,
            seed=self.seed,
        )

    def random_seed_list(self) -> list[int]:
        """Seeds of the random baselines: `random_seeds` consecutive integers from `seed`."""
        return [self.seed + i for i in range(self.random_seeds)]

    def to_dict(self) -> dict:
        return asdict(self)


def check_positive_int(name: str, value, minimum: int = 1) -> None:
    """Raise ConfigError naming `name` unless `value` is an integer >= `minimum` (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def config_keys() -> list[str]:
    """The keys a configuration file may hold: the fields of RunConfig."""
    return [f.name for f in dataclasses.fields(RunConfig)]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in the TOML file `path`, checked against RunConfig's fields and types.

    Keys may use dashes (as the flags do) or underscores; an unknown key is an error naming the
    closest valid one.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})") from exc
    if isinstance(data.get("run"), Mapping):  # a [run] table is accepted too, but not half of one
        others = sorted(set(data) - {"run"})
        if others:
            raise ConfigError(f"{path}: key {others[0]!r} is outside the [run] table; put every key in [run] or none")
        data = dict(data["run"])
    types = typing.get_type_hints(RunConfig)
    settings: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key in spelled:  # latency-batch and latency_batch are one key: which one was meant?
            raise ConfigError(f"{path}: {spelled[key]!r} and {raw_key!r} are the same key; keep one")
        spelled[key] = raw_key
        if key not in types:
            close = difflib.get_close_matches(key, config_keys(), n=1)
            hint = f"; did you mean {close[0].replace('_', '-')!r}?" if close else ""
            raise ConfigError(f"{path}: unknown key {raw_key!r}{hint} (`compress config show` lists every key)")
        settings[key] = _coerce(path, raw_key, value, types[key])
    return settings


def _coerce(path: Path, key: str, value: Any, hint: Any) -> Any:
    """`value` from the file as the field type `hint` wants it, or a ConfigError naming the key."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = typing.get_origin(hint) or hint
    if optional and len(args) == 1:  # X | None
        base, args = typing.get_origin(args[0]) or args[0], list(typing.get_args(args[0]))
    if base is tuple:
        item = args[0] if args else str
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{path}: {key} must be a list, e.g. {key} = [...], got {value!r}")
        return tuple(_scalar(path, key, v.strip() if isinstance(v, str) else v, item) for v in items)
    return _scalar(path, key, value, base)


def _scalar(path: Path, key: str, value: Any, kind: Any) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(kind, True)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            ok = False
    if not ok:
        raise ConfigError(f"{path}: {key} must be {_TYPE_NAMES.get(kind, kind)}, got {value!r}")
    return float(value) if kind is float else value


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def config_to_toml(config: RunConfig) -> str:
    """`config` as a TOML file `--config` reads back; unset values are shown as comments."""
    lines = []
    for key, value in asdict(config).items():
        name = key.replace("_", "-")
        if value is None:
            lines.append(f"# {name} = ...  (not set)")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
