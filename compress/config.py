"""One run's configuration: every CLI flag maps onto a field; `validate` names the bad one."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import onnx

from .criteria import CRITERIA, DEFAULT_CRITERIA
from .errors import ConfigError
from .export import EXPORTERS

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.5)


@dataclass
class RunConfig:
    # model
    model: str = "digits-cnn"
    weights: str | None = None
    trust_checkpoint: bool = False
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
    round_to: int | None = 4  # kept channels a multiple of 4: odd counts ran 2.7x slower (BENCHMARKS.md)
    recalibrate: bool = True
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
    # choosing what to ship
    ship_criterion: str = "causal"
    accuracy_tolerance: float = 1.0
    # output
    out: str = "compress-output"
    force: bool = False

    def validate(self) -> RunConfig:
        """Check every field; raise ConfigError naming the first bad one. Returns self."""
        self.ratios = tuple(sorted(set(float(r) for r in self.ratios)))
        if not self.ratios:
            raise ConfigError("ratios: give at least one pruning ratio, e.g. --ratios 0.3")
        for r in self.ratios:
            if not (0.0 < r < 1.0) or math.isnan(r):
                raise ConfigError(f"ratios: each pruning ratio must be in (0, 1), got {r:g}")
        self.criteria = tuple(dict.fromkeys(self.criteria))
        for c in self.criteria:
            if c not in CRITERIA:
                raise ConfigError(f"criteria: unknown criterion {c!r}; choose from {', '.join(CRITERIA)}")
        if not self.criteria:
            raise ConfigError("criteria: give at least one criterion")
        _positive_int("random_seeds", self.random_seeds)
        _positive_int("calibration_size", self.calibration_size, minimum=2)
        _positive_int("batch_size", self.batch_size)
        _positive_int("pool_grid", self.pool_grid)
        _positive_int("intervention_images", self.intervention_images)
        _positive_int("latency_batch", self.latency_batch)
        _positive_int("latency_runs", self.latency_runs)
        _positive_int("warmup", self.warmup, minimum=0)
        _positive_int("int8_images", self.int8_images)
        for name in ("latency_min_seconds", "latency_window_seconds"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        _positive_int("opset", self.opset, minimum=13)
        if self.opset > onnx.defs.onnx_opset_version():
            raise ConfigError(
                f"opset must be at most {onnx.defs.onnx_opset_version()} (this onnx's newest), got {self.opset}"
            )
        for name in ("eval_size", "image_size", "threads", "round_to"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.ridge < 0:
            raise ConfigError(f"ridge must be >= 0, got {self.ridge:g}")
        if self.parity_tolerance <= 0:
            raise ConfigError(f"parity_tolerance must be > 0, got {self.parity_tolerance:g}")
        if self.accuracy_tolerance < 0:
            raise ConfigError(f"accuracy_tolerance must be >= 0 (points), got {self.accuracy_tolerance:g}")
        if self.exporter not in EXPORTERS:
            raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {self.exporter!r}")
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

    def random_seed_list(self) -> list[int]:
        """Seeds of the random baselines: `random_seeds` consecutive integers from `seed`."""
        return [self.seed + i for i in range(self.random_seeds)]

    def to_dict(self) -> dict:
        return asdict(self)


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
