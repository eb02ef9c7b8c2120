"""Benchmark the pruning criteria on real checkpoints, side by side in one run.

    python scripts/bench_criteria.py --targets 1.3,1.5,2,3 --write BENCHMARKS.md   # matched MACs
    python scripts/bench_criteria.py --write BENCHMARKS.md    # exact uniform ratios, scoring costs

Matched MACs (`--targets`): for every model, criterion, allocation and schedule, the pruning amount
that removes the target share of MACs is found by the target search (uniform allocation: one search,
its shapes do not depend on the scores; global allocation: its amount is the share of MACs removed,
spent exactly by compress.allocation.budget_keep; auto: the same amount, global or uniform at that
budget, whichever agrees more with the unpruned model), so every row compares models of equal cost.
One-shot (or `--steps`) pruning, channel rounding `--round-to`, top-1 after batch-norm re-estimation;
random with `--random-seeds` seeds.
`--plot` draws top-1 against MACs kept for every model (the Pareto picture).

Exact ratios (no `--targets`): for every model, calibration on `--calibration-size` training images,
evaluation on the whole test set; every criterion prunes one-shot at each uniform ratio (exact ratios,
no channel rounding), and is evaluated before and after batch-norm re-estimation; random runs with
`--random-seeds` seeds (mean, std, 95% t-interval, and each criterion's margin in random standard deviations). It also
times each scorer against a plain inference pass over the same images, samples its peak memory,
repeats causal scoring with `--memory-check` images to show memory does not grow with them, and
checks that scoring and pruning twice give identical importances and pruned channels.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import threading
import time
import warnings
from pathlib import Path

import heldout_models  # noqa: F401  (registers the held-out architectures by name)
import numpy as np
import torch
import torch.nn as nn
from benchmark_tables import interval95, machine, replace_section

from compress.agreement import Agreement, recalibrated_agreement
from compress.allocation import DEFAULT_ALLOCATION, DEFAULT_NORMALISATION, resolve_normalisation
from compress.criteria import CRITERIA, Scorer, importance_factory, make_scorer
from compress.data import load_data
from compress.errors import CompressWarning
from compress.evaluation import evaluate
from compress.plans import PruningPlan, execute_plan
from compress.progress import progress, set_quiet
from compress.pruning import count_macs_params, group_widths, output_layer_names, prune
from compress.recovery import recalibrate_batchnorm
from compress.targets import bisect_ratio
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


def timed_fit(criterion: str, model, loader, example, args) -> tuple[object, float, float, float]:
    """(fitted scorer, scoring seconds, plain pass seconds, peak RSS growth MiB): best of 3,
    alternating plain passes and fits so a drifting machine moves both alike."""
    fits, plain, peak, scorer = [], [], 0.0, None
    for _ in range(3):
        plain.append(plain_pass_seconds(model, loader))
        scorer = make_scorer(criterion, pool_grid=args.pool_grid, intervention_images=args.intervention_images)
        with PeakMemory() as memory:
            start = time.perf_counter()
            scorer.fit(model, loader, example)
            fits.append(time.perf_counter() - start)
        peak = max(peak, memory.mib)
    return scorer, min(fits), min(plain), peak


def score_all(model, splits, criteria, args, example):
    scorers, costs = {}, {}
    loader = splits.loader("calibration", args.batch_size)
    for criterion in criteria:
        if criterion == "random":
            continue
        scorer, seconds, plain, peak = timed_fit(criterion, model, loader, example, args)
        scorers[criterion] = scorer
        costs[criterion] = {"images": scorer.n_images_, "fit_s": seconds, "plain_s": plain, "peak_mib": peak}
    return scorers, costs


def memory_check(model, spec, args, example) -> list[dict]:
    """Causal scoring on a small and a large calibration set: memory must not grow with the images."""
    rows = []
    for n in (args.calibration_size, args.memory_check):
        splits = load_data(
            args.data, input_size=spec.input_size, mean=spec.mean, std=spec.std, calibration_size=n, evaluation_size=1
        )
        loader = splits.loader("calibration", args.batch_size)
        for criterion in ("causal", "causal-direct"):
            scorer, seconds, plain, peak = timed_fit(criterion, model, loader, example, args)
            rows.append(
                {
                    "criterion": criterion,
                    "calibration": n,
                    "images": scorer.n_images_,
                    "seconds": seconds,
                    "vs_plain": seconds / plain,
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
        for ratio in ([] if args.costs_only else args.ratios)
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
        "| criterion | images used | scoring | plain pass over the calibration images | ratio | peak RSS growth |",
        "|---|---|---|---|---|---|",
    ]
    for criterion, c in result["costs"].items():
        lines.append(
            f"| {criterion} | {c['images']} | {c['fit_s']:.2f} s | {c['plain_s']:.2f} s "
            f"| {c['fit_s'] / c['plain_s']:.2f}x | {c['peak_mib']:.0f} MiB |"
        )
    return lines


def heading(args) -> str:
    if args.costs_only:
        return "### Scoring cost of the criteria"
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
            *(accuracy_table(r, args.criteria) if r["rows"] else ["(scoring costs only)"]),
            "",
            "Scoring cost: a whole fit against a plain inference pass over the calibration images, best of 3 "
            "alternating runs; peak RSS growth = resident memory above the level before the fit.",
            "",
            *cost_table(r),
            "",
            f"Determinism (score and prune at 0.3 twice): importances identical: {det['importances_identical']}, "
            f"pruned channels identical: {det['pruned_channels_identical']}.",
            "",
        ]
        if "memory" in r:
            out += ["Causal scoring against the size of the calibration set:", ""]
            out += [
                "| criterion | calibration images | images used | scoring | vs plain pass | peak RSS growth |",
                "|---|---|---|---|---|---|",
            ]
            out += [
                f"| {m['criterion']} | {m['calibration']} | {m['images']} | {m['seconds']:.2f} s "
                f"| {m['vs_plain']:.2f}x | {m['peak_mib']:.0f} MiB |"
                for m in r["memory"]
            ]
            out.append("")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------
# Matched MACs


class Subject:
    """One benchmark model: its data, calibration and evaluation batches, protected layers and cost."""

    def __init__(self, item: str, args):
        name, _, rest = item.partition("=")
        rest, _, size = rest.partition("#")  # NAME=WEIGHTS@DATA#SIZE: an image size other than the spec's
        weights, _, data = rest.partition("@")
        self.spec = get_spec(name)
        if size:
            channels = self.spec.input_size[0]
            self.spec = dataclasses.replace(self.spec, input_size=(channels, int(size), int(size)))
        self.name = name
        self.weights = weights or None
        loaded = load_model(self.spec, self.weights, 10)
        self.label = f"{name} ({Path(loaded.weights).name if loaded.weights else 'random init'})"
        self.splits = load_data(
            data or args.data,
            input_size=self.spec.input_size,
            mean=self.spec.mean,
            std=self.spec.std,
            calibration_size=args.calibration_size,
            evaluation_size=args.eval_size,
            seed=args.seed,
        )
        self.model = loaded.model.eval()
        self.example = self.splits.example_batch(16)
        self.calibration = self.splits.loader("calibration", args.batch_size)
        self.evaluation = list(self.splits.loader("evaluation", 500))
        self.protected = output_layer_names(self.model, self.example)
        self.macs = count_macs_params(self.model, self.example)[0]
        self.original = evaluate(self.model, self.evaluation)["top1"]

    @functools.cached_property
    def agreement(self) -> Agreement:
        """Auto allocation's measure: agreement with the unpruned model on the calibration images, after
        re-estimation (a pass of the unpruned model, made only when an auto row needs it)."""
        return recalibrated_agreement(self.model, self.calibration)

    def fit(self, criterion: str, model: nn.Module, seed: int | None, args) -> Scorer:
        scorer = make_scorer(criterion, pool_grid=args.pool_grid, seed=seed or 0)
        return scorer.fit(model, self.calibration, self.example)

    def macs_kept(self, model: nn.Module) -> float:
        return count_macs_params(model, self.example)[0] / self.macs


def search_amount(subject: Subject, plan: PruningPlan, scorer, target: float, round_to: int) -> tuple[float, float]:
    """The smallest amount whose one-step pruning by `plan` keeps at most 1/target of the MACs."""

    def macs(amount: float) -> float:
        pruned = execute_plan(
            subject.model,
            dataclasses.replace(plan, amount=amount, steps=1),
            lambda m: scorer,
            subject.example,
            protected=subject.protected,
            round_to=round_to,
            scorer=scorer,
        )
        return subject.macs_kept(pruned.model)

    amount, value, _, _ = bisect_ratio(macs, lambda v: v - 1 / target, steps=5, grid_step=0.1)
    return amount, value


def run_matched(item: str, args) -> dict:
    subject = Subject(item, args)
    plain = plain_pass_seconds(subject.model, subject.calibration)
    scorers, costs = {}, {}
    for criterion in args.criteria:
        for seed in range(args.random_seeds) if criterion == "random" else [None]:
            start = time.perf_counter()
            scorers[criterion, seed] = subject.fit(criterion, subject.model, seed, args)
            costs[criterion] = {"fit_s": time.perf_counter() - start, "plain_s": plain}
    rows = []
    jobs = [
        (target, allocation, steps, criterion, seed)
        for target in args.targets
        for allocation in args.allocations
        for steps in args.steps
        for criterion in args.criteria
        for seed in (range(args.random_seeds) if criterion == "random" else [None])
        if not (criterion == "random" and allocation != "uniform")  # random scores allocate at random
        and (steps == 1 or allocation in args.steps_allocations)
    ]
    uniform_amounts = {}
    for target, allocation, steps, criterion, seed in progress(jobs, desc=subject.name, unit="variant"):
        first = scorers[criterion, seed]
        plan = PruningPlan(criterion, 0.5, allocation, steps, seed)
        if allocation == "uniform":  # the shapes at an amount are the same for every criterion
            if target not in uniform_amounts:
                uniform_amounts[target] = search_amount(subject, plan, first, target, args.round_to)[0]
            amount = uniform_amounts[target]
        else:  # global and auto allocation's amount is the share of MACs removed: matched by construction
            amount = round(1.0 - 1.0 / target, 6)
        start = time.perf_counter()
        fidelity = subject.agreement.score if allocation == "auto" else None
        pruned = execute_plan(
            subject.model,
            dataclasses.replace(plan, amount=amount),
            lambda m, c=criterion, s=seed: subject.fit(c, m, s, args),
            subject.example,
            protected=subject.protected,
            round_to=args.round_to,
            recalibrate=lambda m: recalibrate_batchnorm(m, subject.calibration),
            scorer=first,
            normalise=args.group_normalisation,
            fidelity=fidelity,
        )
        recalibrate_batchnorm(pruned.model, subject.calibration)
        rows.append(
            {
                "target": target,
                "allocation": allocation,
                # the scale global allocation put the groups' scores on (None: uniform allocation)
                "normalisation": resolve_normalisation(args.group_normalisation, criterion)
                if allocation != "uniform"
                else None,
                # auto allocation: per step, the allocation kept and each candidate's agreement
                "choices": pruned.allocation_choices,
                "steps": steps,
                "criterion": criterion,
                "seed": seed,
                "amount": amount,
                "macs": subject.macs_kept(pruned.model),
                "after": evaluate(pruned.model, subject.evaluation)["top1"],
                "seconds": time.perf_counter() - start,
                "widths": group_widths(pruned.model, subject.example, subject.protected),
            }
        )
    return {
        "model": subject.label,
        "original": subject.original,
        "evaluation": len(subject.splits.evaluation),
        "calibration": len(subject.splits.calibration),
        "data_seed": args.seed,  # --seed: which calibration and evaluation images
        "rows": rows,
        "costs": costs,
    }


def _variant(row: dict) -> str:
    steps = f", {row['steps']} steps" if row["steps"] > 1 else ""
    return f"{row['criterion']} · {row['allocation']}{steps}"


def matched_table(result: dict, targets: list[float]) -> list[str]:
    """One row per criterion x allocation x schedule, one column per MACs target: top-1 (MACs kept)."""
    head = ["criterion · allocation"] + [f"{t:g}x fewer MACs" for t in targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    variants = list(dict.fromkeys(_variant(r) for r in result["rows"]))
    for variant in variants:
        cells = [variant]
        for t in targets:
            at = [r for r in result["rows"] if r["target"] == t and _variant(r) == variant]
            if not at:
                cells.append("—")
                continue
            after = np.array([r["after"] for r in at])
            macs = np.mean([r["macs"] for r in at])
            if len(at) > 1:
                cells.append(f"{after.mean():.2f} ± {after.std(ddof=1):.2f} ({macs:.3f})")
            else:
                cells.append(f"{after[0]:.2f} ({macs:.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def best_lines(result: dict, targets: list[float]) -> list[str]:
    """Per target: causal with the run's defaults (the default allocation, one step) against the best
    baseline configuration (any allocation and schedule; random excluded)."""
    out = []
    for t in targets:
        at = [r for r in result["rows"] if r["target"] == t]
        defaults = ("causal", DEFAULT_ALLOCATION, 1)
        default = next((r for r in at if (r["criterion"], r["allocation"], r["steps"]) == defaults), None)
        baselines = [r for r in at if not r["criterion"].startswith("causal") and r["criterion"] != "random"]
        base = max(baselines, key=lambda r: r["after"], default=None)
        if default and base:
            margin = default["after"] - base["after"]
            out.append(
                f"- {t:g}x: causal (defaults) {default['after']:.2f} at {default['macs']:.3f} MACs; best baseline "
                f"{_variant(base)} {base['after']:.2f} at {base['macs']:.3f}: {margin:+.2f}"
                + (" **(miss)**" if margin < 0 else "")
            )
    return out


def choice_lines(result: dict, targets: list[float]) -> list[str]:
    """Per auto row: the allocation it kept and each candidate's agreement with the original on the
    calibration images (first step), next to the uniform and global rows' top-1 of the same criterion."""
    out = []
    for t in targets:
        for r in (r for r in result["rows"] if r["target"] == t and r.get("choices")):
            same = {
                x["allocation"]: x["after"]
                for x in result["rows"]
                if (x["target"], x["criterion"], x["steps"]) == (t, r["criterion"], r["steps"])
            }
            first = r["choices"][0]
            agree = " / ".join(f"{name} {100 * a:.2f}%" for name, a in first["agreement"].items())
            tops = " / ".join(f"{a} {same[a]:.2f}" for a in ("global", "uniform") if a in same)
            out.append(
                f"- {t:g}x, {_variant(r)}: kept {first['chosen']} (agreement {agree})"
                + (f"; top-1 {tops}" if tops else "")
            )
    return [*out, ""] if out else []


def plot_matched(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(results))
    rows_of_plots = -(-len(results) // columns)
    fig, axes = plt.subplots(rows_of_plots, columns, figsize=(4.6 * columns, 3.9 * rows_of_plots + 1.4), squeeze=False)
    for ax, result in zip(axes.flat, results, strict=False):
        for variant in dict.fromkeys(_variant(r) for r in result["rows"]):
            rows = [r for r in result["rows"] if _variant(r) == variant]
            points = sorted(
                (
                    np.mean([r["macs"] for r in rows if r["target"] == t]),
                    np.mean([r["after"] for r in rows if r["target"] == t]),
                )
                for t in dict.fromkeys(r["target"] for r in rows)
            )
            style = "-" if variant.startswith("causal") else "--"
            width = 2.5 if variant == "causal · global" else 1.0  # the default
            ax.plot(*zip(*points, strict=True), style, marker="o", markersize=3, linewidth=width, label=variant)
        ax.axhline(result["original"], color="grey", linewidth=0.8)
        ax.set_title(result["model"], fontsize=9)
        ax.set_xlabel("MACs kept")
        ax.set_ylabel("top-1 % (after BN re-estimation)")
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 1.3 / (3.9 * rows_of_plots + 1.4), 1, 1))
    fig.savefig(path, dpi=110)


def render_matched(results: list[dict], args, command: str) -> str:
    out = [
        "### Criteria at matched MACs",
        "",
        f"Command: `{command}`",
        "",
        f"Every cell is top-1 % after batch-norm re-estimation (MACs kept in brackets) at the amount the "
        f"target search found for that row (uniform: one search for all criteria; global and auto: the amount "
        f"is 1 - 1/target of the MACs, spent exactly by global allocation, at most by auto's uniform "
        f"candidate; group normalisation "
        f"{getattr(args, 'group_normalisation', DEFAULT_NORMALISATION)}), "
        f"channel rounding {args.round_to}, calibration on {args.calibration_size} training images; random "
        f"with {args.random_seeds} seeds (mean ± std), uniform allocation only. Machine: {machine()}.",
        "",
    ]
    if args.plot:
        out += [f"![top-1 against MACs kept]({args.plot.as_posix()})", ""]
    for r in results:
        out += [
            f"#### {r['model']}, original top-1 {r['original']:.2f}% on {r['evaluation']} images",
            "",
            *matched_table(r, args.targets),
            "",
            *best_lines(r, args.targets),
            "",
            *choice_lines(r, args.targets),
            "Scoring time against a plain inference pass over the calibration images: "
            + ", ".join(
                f"{c} {v['fit_s']:.1f} s ({v['fit_s'] / v['plain_s']:.2f}x)"
                for c, v in r["costs"].items()
                if c != "random"
            )
            + ".",
            "",
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "data/cifar10"))
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="NAME=WEIGHTS[@DATA][#SIZE]")
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
    parser.add_argument("--costs-only", action="store_true", help="only the scoring cost and memory tables")
    parser.add_argument("--targets", type=lambda s: [float(x) for x in s.split(",")], help="MACs reductions")
    parser.add_argument("--allocations", type=lambda s: s.split(","), default=["uniform", "global", "auto"])
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[1])
    parser.add_argument(
        "--steps-allocations",
        type=lambda s: s.split(","),
        default=["uniform", "global"],
        help="the allocations that --steps above 1 run with (default both)",
    )
    parser.add_argument("--round-to", type=int, default=4)
    parser.add_argument("--group-normalisation", default=DEFAULT_NORMALISATION, help="global allocation's")
    parser.add_argument("--plot", type=Path, help="with --targets: where to draw top-1 against MACs kept")
    parser.add_argument("--json", type=Path, help="with --targets: write every row here")
    args = parser.parse_args()
    set_quiet(not os.isatty(2))
    torch.manual_seed(args.seed)
    warnings.simplefilter("ignore", CompressWarning)  # e.g. groups a baseline does not score: in the rows
    command = "python scripts/bench_criteria.py " + " ".join(
        a for a in os.sys.argv[1:] if not a.startswith("--write") and a != str(args.write)
    )
    if args.targets:
        results = []
        for item in args.models:
            results.append(run_matched(item, args))
            print(render_matched(results[-1:], args, ""), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
        if args.plot:
            plot_matched(results, args.plot)
        text = render_matched(results, args, command.strip())
        print(text)
        if args.write:
            replace_section(args.write, "### Criteria at matched MACs\n", text)
        return
    results = []
    for item in args.models:
        name, _, weights = item.partition("=")
        results.append(run_model(name, weights, args))
        print(render(results[-1:], args, ""), flush=True)
    text = render(results, args, command.strip())
    print(text)
    if args.write:
        replace_section(args.write, heading(args) + "\n", text)


if __name__ == "__main__":
    main()
