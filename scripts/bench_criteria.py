"""Benchmark the pruning criteria on real CIFAR-10 checkpoints, side by side in one run.

    python scripts/bench_criteria.py                          # both shared ResNets, print tables
    python scripts/bench_criteria.py --write BENCHMARKS.md    # also replace its section there

For every model: calibration on `--calibration-size` training images, evaluation on the whole test
set; every criterion prunes one-shot at each uniform ratio (exact ratios, no channel rounding), and
is evaluated before and after batch-norm re-estimation; random runs with `--random-seeds` seeds
(mean, std, 95% t-interval, and each criterion's margin in random standard deviations). It also
times each scorer against a plain inference pass over the same images, samples its peak memory,
repeats causal scoring with `--memory-check` images to show memory does not grow with them, and
checks that scoring and pruning twice give identical importances and pruned channels.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_tables import interval95, replace_section

from compress.criteria import CRITERIA, SCORED_CRITERIA, importance_factory, make_scorer
from compress.data import load_data
from compress.evaluation import evaluate
from compress.progress import progress, set_quiet
from compress.pruning import count_macs_params, prune
from compress.recovery import recalibrate_batchnorm
from compress.zoo import get_spec, load_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_MODELS = [
    f"cifar_resnet20={SHARED / 'models/resnet20-12fca82f.th'}",
    f"cifar_resnet32={SHARED / 'models/resnet32-d509ac18.th'}",
]
PAGE = os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 5 ms (CPU tensors included)."""

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def plain_pass_seconds(model, loader) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for images, _ in loader:
            model(images)
    return time.perf_counter() - start


def state_mib(scorer) -> float:
    """What a scorer keeps between calibration and solving: the sums, or (intervention) the images."""
    if hasattr(scorer, "statistics_"):
        tensors = [t for stats in scorer.statistics_.values() for t in stats.tensors()]
    else:
        tensors = [scorer.images_]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def timed_collect(scorer, model, loader, example) -> tuple[float, float, float]:
    """(calibration pass seconds, plain pass seconds, peak RSS growth MiB): best of 3, alternating
    plain and calibration passes so a drifting machine moves both alike."""
    collect, plain, peak = [], [], 0.0
    for _ in range(3):
        plain.append(plain_pass_seconds(model, loader))
        with PeakMemory() as memory:
            start = time.perf_counter()
            scorer.collect(model, loader, example)
            collect.append(time.perf_counter() - start)
        peak = max(peak, memory.mib)
    return min(collect), min(plain), peak


def score_all(model, splits, criteria, args, example):
    scorers, costs = {}, {}
    loader = splits.loader("calibration", args.batch_size)
    for criterion in criteria:
        if criterion not in SCORED_CRITERIA:
            continue
        scorer = make_scorer(criterion, pool_grid=args.pool_grid, intervention_images=args.intervention_images)
        collect, plain, peak = timed_collect(scorer, model, loader, example)
        with PeakMemory() as memory:
            start = time.perf_counter()
            scorer.solve()
            solve = time.perf_counter() - start
        scorers[criterion] = scorer
        costs[criterion] = {
            "images": scorer.n_images_,
            "collect_s": collect,
            "plain_s": plain,
            "solve_s": solve,
            "vs_plain": collect / plain,
            "state_mib": state_mib(scorer),
            "peak_mib": max(peak, memory.mib),
        }
    return scorers, costs


def memory_check(model, spec, args, example) -> list[dict]:
    """Causal scoring on a small and a large calibration set: time grows, memory must not."""
    rows = []
    for n in (args.calibration_size, args.memory_check):
        splits = load_data(
            args.data, input_size=spec.input_size, mean=spec.mean, std=spec.std, calibration_size=n, evaluation_size=1
        )
        scorer = make_scorer("causal", pool_grid=args.pool_grid)
        collect, plain, peak = timed_collect(scorer, model, splits.loader("calibration", args.batch_size), example)
        rows.append(
            {
                "images": scorer.n_images_,
                "seconds": collect,
                "vs_plain": collect / plain,
                "state_mib": state_mib(scorer),
                "peak_mib": peak,
            }
        )
        del splits
    return rows


def determinism(model, splits, args, example) -> dict:
    """Score and prune twice from scratch: importances and pruned channels must be identical."""
    runs = []
    for _ in range(2):
        scorer = make_scorer("causal", pool_grid=args.pool_grid)
        scorer.fit(model, splits.loader("calibration", args.batch_size), example)
        pruned = prune(model, importance_factory("causal", scorer), 0.3, example)
        runs.append((scorer.importances_, pruned.pruned_channels()))
    (a, pa), (b, pb) = runs
    same_scores = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return {"importances_identical": same_scores, "pruned_channels_identical": pa == pb}


def run_model(name: str, weights: str, args) -> dict:
    spec = get_spec(name)
    model = load_model(spec, weights, 10).model
    splits = load_data(
        args.data,
        input_size=spec.input_size,
        mean=spec.mean,
        std=spec.std,
        calibration_size=args.calibration_size,
        evaluation_size=args.eval_size,
        seed=args.seed,
    )
    example = splits.example_batch(16)
    evaluation = splits.loader("evaluation", 500)
    calibration = splits.loader("calibration", args.batch_size)
    base_macs, base_params = count_macs_params(model, example)
    original = evaluate(model, evaluation)["top1"]
    scorers, costs = score_all(model, splits, args.criteria, args, example)

    rows = []
    plan = [
        (ratio, criterion, seed)
        for ratio in args.ratios
        for criterion in args.criteria
        for seed in (range(args.random_seeds) if criterion == "random" else [None])
    ]
    for ratio, criterion, seed in progress(plan, desc=name, unit="variant"):
        pruned = prune(model, importance_factory(criterion, scorers.get(criterion), seed or 0), ratio, example)
        before = evaluate(pruned.model, evaluation)["top1"]
        recalibrate_batchnorm(pruned.model, calibration)
        after = evaluate(pruned.model, evaluation)["top1"]
        macs, params = count_macs_params(pruned.model, example)
        rows.append(
            {
                "ratio": ratio,
                "criterion": criterion,
                "seed": seed,
                "before": before,
                "after": after,
                "macs": macs / base_macs,
                "params": params / base_params,
                "kept_groups": len(pruned.kept_unpruned),
            }
        )
    result = {
        "model": name,
        "weights": Path(weights).name,
        "original": original,
        "calibration": splits.info["calibration_images"],
        "evaluation": splits.info["evaluation_images"],
        "rows": rows,
        "costs": costs,
        "determinism": determinism(model, splits, args, example),
    }
    if args.memory_check:
        result["memory"] = memory_check(model, spec, args, example)
    return result


def accuracy_table(result: dict, criteria: list[str]) -> list[str]:
    scored = [c for c in criteria if c != "random"]
    head = ["ratio", "MACs kept"] + [f"{c} before / after" for c in scored]
    if "random" in criteria:
        head += ["random after: mean ± std", "95% interval", "before"]
        head += [f"{c} margin (std)" for c in scored]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ratio in sorted({r["ratio"] for r in result["rows"]}):
        at = [r for r in result["rows"] if r["ratio"] == ratio]
        pick = {r["criterion"]: r for r in at if r["criterion"] != "random"}
        cells = [f"{ratio:.1f}", f"{np.mean([r['macs'] for r in at]):.2f}"]
        cells += [f"{pick[c]['before']:.2f} / **{pick[c]['after']:.2f}**" for c in scored]
        randoms = [r for r in at if r["criterion"] == "random"]
        if randoms:
            after = np.array([r["after"] for r in randoms])
            mean, std = after.mean(), after.std(ddof=1) if len(after) > 1 else 0.0
            ci = interval95(after)
            cells += [
                f"{mean:.2f} ± {std:.2f}",
                f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "—",
                f"{np.mean([r['before'] for r in randoms]):.2f}",
            ]
            cells += [f"{(pick[c]['after'] - mean) / std:+.1f}" if std > 0 else "—" for c in scored]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def cost_table(result: dict) -> list[str]:
    lines = [
        "| criterion | images | calibration pass | plain pass | ratio | solve | state held | peak RSS growth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for criterion, c in result["costs"].items():
        ratio = f"{c['vs_plain']:.2f}x" if criterion != "intervention" else "—"  # it only keeps images
        lines.append(
            f"| {criterion} | {c['images']} | {c['collect_s']:.2f} s | {c['plain_s']:.2f} s | {ratio} "
            f"| {c['solve_s']:.2f} s | {c['state_mib']:.2f} MiB | {c['peak_mib']:.0f} MiB |"
        )
    return lines


def heading(args) -> str:
    suffix = f" (causal pool grid {args.pool_grid})" if args.pool_grid != 1 else ""
    return f"### Pruning criteria on CIFAR-10 ResNets{suffix}"


def render(results: list[dict], args, command: str) -> str:
    out = [
        heading(args),
        "",
        f"Command: `{command}`",
        "",
        f"Data: `{args.data}`; calibration on {args.calibration_size} training images, evaluation on the whole "
        f"test set. One-shot uniform pruning (exact ratios, no channel rounding), top-1 % before / after "
        f"batch-norm re-estimation on the calibration images; random with {args.random_seeds} seeds; margin = "
        "(criterion after − random mean after) / random std. 'MACs kept' is the pruned/original MACs ratio "
        "averaged over the row's variants. Machine: 2 CPU cores.",
        "",
    ]
    for r in results:
        det = r["determinism"]
        out += [
            f"#### {r['model']} ({r['weights']}), original top-1 {r['original']:.2f}% on {r['evaluation']} images",
            "",
            *accuracy_table(r, args.criteria),
            "",
            "Scoring cost: the calibration pass (statistics collected with hooks; intervention only keeps "
            "its images) against a plain inference pass over the same images, best of 3 alternating runs; "
            "solve = fitting the equations (intervention: all the do(channel = 0) passes); state held = what "
            "the scorer keeps between the two; peak RSS growth = resident memory above the level before.",
            "",
            *cost_table(r),
            "",
            f"Determinism (score and prune at 0.3 twice): importances identical: {det['importances_identical']}, "
            f"pruned channels identical: {det['pruned_channels_identical']}.",
            "",
        ]
        if "memory" in r:
            out += ["Causal scoring memory against calibration images:", ""]
            out += [
                "| images | calibration pass | vs plain inference | state held | peak RSS growth |",
                "|---|---|---|---|---|",
            ]
            out += [
                f"| {m['images']} | {m['seconds']:.2f} s | {m['vs_plain']:.2f}x | {m['state_mib']:.2f} MiB "
                f"| {m['peak_mib']:.0f} MiB |"
                for m in r["memory"]
            ]
            out.append("")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "data/cifar10"))
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="NAME=WEIGHTS")
    parser.add_argument("--criteria", type=lambda s: s.split(","), default=list(CRITERIA))
    parser.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",")], default=[0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--random-seeds", type=int, default=5)
    parser.add_argument("--calibration-size", type=int, default=2000)
    parser.add_argument("--eval-size", type=int, default=None)
    parser.add_argument("--memory-check", type=int, default=20000, help="second calibration size (0: skip)")
    parser.add_argument("--intervention-images", type=int, default=128)
    parser.add_argument("--pool-grid", type=int, default=1, help="causal scorer's pooling grid")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, help="replace this script's section of the given Markdown file")
    args = parser.parse_args()
    set_quiet(not os.isatty(2))
    torch.manual_seed(args.seed)
    results = []
    for item in args.models:
        name, _, weights = item.partition("=")
        results.append(run_model(name, weights, args))
        print(render(results[-1:], args, ""), flush=True)
    command = "python scripts/bench_criteria.py " + " ".join(
        a for a in os.sys.argv[1:] if not a.startswith("--write") and a != str(args.write)
    )
    text = render(results, args, command.strip())
    print(text)
    if args.write:
        replace_section(args.write, heading(args) + "\n", text)


if __name__ == "__main__":
    main()
