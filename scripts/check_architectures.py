"""Which architectures compress prunes to a MACs target: a functional check on networks outside shared/.

Each architecture (a compress or torchvision name, or timm:NAME) is built with random weights and
pruned by `compress.Pruner` with its defaults (causal, auto allocation) to `--target` of its MACs,
calibrated on random images. The table says, per architecture, the MACs kept, the allocation auto
kept, the groups kept whole after validation, the warnings and the seconds the fit took, or the one line the
failure gave. Random weights say nothing about accuracy: this checks that pruning works and meets
its budget, not what it costs in top-1 (scripts/bench_criteria.py measures that). One image size
serves every architecture, so a vision transformer fixed to 224x224 needs `--image-size 224`.

    python scripts/check_architectures.py --models mobilenet_v3_small timm:ghostnet_100 --target 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass

import torch

import compress
from compress.errors import CompressWarning
from compress.zoo import get_spec

DEFAULT_MODELS = (
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_x_400mf",
    "resnext50_32x4d",
    "densenet121",
    "convnext_tiny",
    "timm:ghostnet_100",
    "timm:repvgg_a0",
    "timm:dla34",
)


@dataclass
class Checked:
    name: str
    macs_ratio: float | None = None
    allocation: str = ""
    kept_whole: tuple[str, ...] = ()  # after validation
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str = ""


def check(name: str, target: float, image_size: int, images: int, seed: int = 0) -> Checked:
    """`name` pruned to `target` of its MACs, or the error that stopped it."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    try:
        spec = get_spec(name)
        model = spec.build(10).eval()
        shape = (spec.input_size[0], image_size, image_size)
        calibration = [(torch.randn(16, *shape), torch.randint(0, 10, (16,))) for _ in range(max(1, images // 16))]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", CompressWarning)  # reported in the table
            pruner = compress.Pruner("causal", target_macs_ratio=target, seed=seed).fit(model, calibration)
    except Exception as exc:  # any failure is one row of the survey, not the end of it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Checked(name, seconds=time.perf_counter() - start, error=f"{type(exc).__name__}: {first}")
    chosen = pruner.allocation_choices_[0]["chosen"] if pruner.allocation_choices_ else pruner.allocation
    return Checked(
        name,
        macs_ratio=pruner.macs_ratio_,
        allocation=chosen,
        kept_whole=tuple(pruner.result_.kept_unpruned),
        warnings=tuple(dict.fromkeys(str(w.message) for w in caught)),
        seconds=time.perf_counter() - start,
    )


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def render(results: list[Checked], target: float) -> str:
    """A markdown table; the warnings column gives how many distinct ones, and the first."""
    lines = [
        f"| architecture | MACs kept (target {target:g}) | allocation kept | groups kept whole after validation "
        "| warnings (distinct: the first) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.name} | failed: {r.error} | | | | {r.seconds:.0f} |")
            continue
        whole = str(len(r.kept_whole)) if r.kept_whole else "none"
        said = f"{len(r.warnings)}: {_shorten(r.warnings[0])}" if r.warnings else "none"
        lines.append(f"| {r.name} | {r.macs_ratio:.3f} | {r.allocation} | {whole} | {said} | {r.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="architecture names")
    parser.add_argument("--target", type=float, default=0.5, help="share of the MACs to keep (default 0.5)")
    parser.add_argument("--image-size", type=int, default=64, help="random images of this size (default 64)")
    parser.add_argument("--images", type=int, default=64, help="calibration images (default 64)")
    args = parser.parse_args(argv)
    if not 0.0 < args.target < 1.0:
        parser.error(f"--target must be in (0, 1), got {args.target}")
    results = []
    for name in args.models:
        results.append(check(name, args.target, args.image_size, args.images))
        print(f"{name}: done in {results[-1].seconds:.0f} s", file=sys.stderr, flush=True)
    print(render(results, args.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
