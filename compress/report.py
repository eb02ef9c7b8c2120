"""report.md and plots from the report dictionary (report.json is the dictionary itself)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": len(arr)}


def summarise_by_ratio(variants: list[dict[str, Any]], criteria: Sequence[str]) -> list[dict[str, Any]]:
    """Per ratio and criterion: accuracy after and before recovery (and before fine-tuning, when the
    variants were fine-tuned; mean, std, n over seeds), MACs
    ratio, and causal's margin over the random mean (in points and in random standard deviations)."""
    rows = []
    variants = [v for v in variants if v.get("precision", "fp32") == "fp32"]  # INT8 twins are reported apart
    for ratio in sorted({v["ratio"] for v in variants if v["criterion"] is not None}):
        row: dict[str, Any] = {"ratio": ratio}
        for criterion in criteria:
            chosen = [v for v in variants if v["criterion"] == criterion and v["ratio"] == ratio]
            if not chosen:
                continue
            row[criterion] = {
                "top1": _stats([v["accuracy"]["top1"] for v in chosen]),
                "top1_before_recovery": _stats([v["accuracy"]["top1_before_recovery"] for v in chosen]),
                **(
                    {"top1_before_finetune": _stats([v["accuracy"]["top1_before_finetune"] for v in chosen])}
                    if all("top1_before_finetune" in v["accuracy"] for v in chosen)
                    else {}
                ),
                "macs_ratio": float(np.mean([v["macs_ratio"] for v in chosen])),
                "params_ratio": float(np.mean([v["params_ratio"] for v in chosen])),
            }
        if "causal" in row and "random" in row:
            random, causal = row["random"]["top1"], row["causal"]["top1"]["mean"]
            row["causal_minus_random"] = causal - random["mean"]
            row["causal_minus_random_in_std"] = (causal - random["mean"]) / random["std"] if random["std"] > 0 else None
        rows.append(row)
    return rows


def _fmt_acc(stats: dict[str, float]) -> str:
    if stats["n"] > 1:
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}"
    return f"{stats['mean']:.2f}"


def _accuracy_legend(report: dict[str, Any]) -> list[str]:
    seeds = f"Random: mean ± std over seeds {report['seeds']['random_baselines']}."
    tuned = report.get("finetune")
    if not tuned:
        return [
            "Top-1 % on the evaluation split with onnxruntime: after batch-norm re-estimation / right after "
            f"pruning. {seeds}"
        ]
    teacher = (
        f", distilled from the original (temperature {tuned['temperature']:g}, weight {tuned['distill_weight']:g})"
        if tuned["teacher"]
        else ""
    )
    return [
        "Top-1 % on the evaluation split: after fine-tuning (onnxruntime) / before fine-tuning, after batch-norm "
        f"re-estimation / right after pruning. {seeds}",
        "",
        f"Every pruned variant, random baselines included, was fine-tuned the same way: {tuned['epochs']} epochs "
        f"on {tuned['training_images']} training images (apart from calibration and evaluation), SGD lr "
        f"{tuned['lr']:g} with a {tuned['schedule']} schedule, batch {tuned['batch_size']}{teacher}.",
    ]


def write_report_md(report: dict[str, Any]) -> str:
    model, data, variants = report["model"], report["data"], report["variants"]
    original = variants[0]
    criteria = [c for c in report["config"]["criteria"]]
    providers = report["benchmark"]["providers"]
    batches = report["benchmark"]["latency_batches"]
    lines = [
        f"# compress report: {model['name']}",
        "",
        f"- model: `{model['name']}` ({model['params']:,} parameters, {model['macs']:,} MACs per image), "
        f"weights `{model['weights']}`",
        f"- data: {data['split']}; {data['calibration_images']} calibration and {data['evaluation_images']} "
        f"evaluation images, {data['num_classes']} classes, input {tuple(data['input_size'])}",
        f"- original top-1 accuracy (onnxruntime): **{original['accuracy']['top1']:.2f}%**",
        f"- shipped as `model.onnx`: **{report['chosen']['variant']}** — {report['chosen']['reason']}",
        "",
        "## Accuracy by pruning ratio",
        "",
        *_accuracy_legend(report),
        "",
    ]
    header = ["ratio", *criteria]
    if "causal" in criteria and "random" in criteria:
        header.append("causal − random mean")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["summary"]:
        cells = [f"{row['ratio']:.2f}"]
        for criterion in criteria:
            if criterion in row:
                r = row[criterion]
                stages = [r["top1"], r.get("top1_before_finetune"), r["top1_before_recovery"]]
                cells.append(" / ".join(_fmt_acc(x) for x in stages if x is not None))
            else:
                cells.append("—")
        if "causal_minus_random" in row:
            units = row["causal_minus_random_in_std"]
            cells.append(f"{row['causal_minus_random']:+.2f}" + (f" ({units:+.1f} std)" if units is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")

    lines += [
        "",
        "## Size, speed and export parity",
        "",
        "Latency: median / p90 / p99 ms. Speed-up: the original's median over the variant's, same run; "
        "efficiency: speed-up over the speed-up the MACs promise (1.00: every MAC saved became time saved). "
        "Parity: max abs difference of the ONNX logits from PyTorch's (INT8: from its fp32 parent, not gated).",
        "",
    ]
    lat_cols = [f"{p} b{b} ms" for p in providers for b in batches]
    gain_cols = [f"{p} b{b} speed-up (efficiency)" for p in providers for b in batches]
    head = ["variant", "top-1", "channels kept", "params", "MACs ratio", *lat_cols, *gain_cols, "parity max abs"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        cells = [
            v["name"],
            f"{v['accuracy']['top1']:.2f}",
            f"{v['channel_ratio']:.3f}",
            f"{v['params']:,}",
            f"{v['macs_ratio']:.3f}",
        ]
        for p in providers:
            for b in batches:
                t = v["latency"].get(p, {}).get(f"batch_{b}")
                cells.append(f"{t['median_ms']:.3f} / {t['p90_ms']:.3f} / {t['p99_ms']:.3f}" if t else "—")
        for p in providers:
            for b in batches:
                g = v.get("speedup", {}).get(p, {}).get(f"batch_{b}")
                cells.append(f"{g['speedup']:.2f}x ({g['efficiency']:.2f})" if g else "—")
        cells.append(f"{v['parity']['max_abs_diff']:.2e}")
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("gates"):
        lines += ["", "## Quality gates", "", "| gate | threshold | value | result | what |", "|---|---|---|---|---|"]
        for g in report["gates"]:
            result = "pass" if g["passed"] else "**FAIL**"
            threshold, value = f"{g['threshold']:g} {g['unit']}", f"{g['value']:.3f} {g['unit']}"
            lines.append(f"| {g['name']} | {threshold} | {value} | {result} | {g['what']} |")
    if report.get("warnings"):
        lines += ["", "## Warnings", "", *(f"- {w}" for w in report["warnings"])]
    kept = {v["name"]: v["kept_unpruned"] for v in variants if v.get("kept_unpruned")}
    if kept:
        lines += ["", "## Groups kept unpruned for safety", ""]
        for name, groups in kept.items():
            for root, why in groups.items():
                lines.append(f"- {name}: `{root}` — {why}")
    chosen = {v["name"]: v["allocation_choices"] for v in variants if v.get("allocation_choices")}
    if chosen:
        lines += [
            "",
            "## Allocation chosen (--allocation auto)",
            "",
            "Each variant was pruned in each candidate way at its MACs budget (global, uniform; for causal, "
            "global on the effects of do(channel := 0) with nothing repaired: global-unrepaired; for a criterion "
            "estimated from calibration images, global's widths with the channels of least l1 norm removed: "
            "global-l1-order; for causal, global with the groups on the sqrt-mean scale: global-sqrt-mean); "
            "the one whose top-1 agrees more often with the original's on the calibration images was kept "
            "(a tie keeps the first). Agreement on the calibration images:",
            "",
        ]
        names = list(dict.fromkeys(n for steps in chosen.values() for c in steps for n in c["agreement"]))
        lines += [f"| variant | step | kept | {' | '.join(names)} |", "|---|---|---|" + "---|" * len(names)]
        for name, steps in chosen.items():
            for c in steps:
                agree = [f"{100 * c['agreement'][n]:.2f}%" if n in c["agreement"] else "" for n in names]
                lines.append(f"| {name} | {c['step']} | {c['chosen']} | {' | '.join(agree)} |")
    bench = report["benchmark"]
    lines += [
        "",
        "## Settings",
        "",
        f"- latency: onnxruntime {', '.join(providers)}, {bench['threads']} intra-op threads, "
        f"{bench['warmup']} warm-up calls, then at least {bench['runs']} timed calls, {bench['min_seconds']:g} s "
        f"and an equal share of {bench['window_seconds']:g} s per variant and batch, variants taking turns "
        f"of about {bench['slice_seconds']:g} s ({bench['rounds']} rounds at least), inputs and outputs bound "
        "to the device; "
        f"order: {' '.join(bench['run_order'][providers[0]][:6])} ...",
        f"- parity: ONNX vs PyTorch logits on {bench['parity_images']} evaluation images",
    ]
    for criterion, s in (report.get("scoring") or {}).items():
        lines.append(f"- {criterion} scoring: {s['calibration_images']} calibration images, {s['seconds']:.2f} s")
    versions = report["environment"]["versions"]
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    return "\n".join(lines) + "\n"


COLOURS = {
    "causal": "tab:red",
    "causal-reference": "tab:orange",
    "intervention": "tab:green",
    "taylor": "tab:purple",
    "l1": "tab:blue",
    "l2": "tab:cyan",
    "bn-scale": "tab:olive",
    "lamp": "tab:brown",
    "random": "tab:gray",
}


def write_plots(report: dict[str, Any], out_path: Callable[[str], Path]) -> list[str]:
    """The report's pictures, written where `out_path(relative name)` says; returns the names.

    accuracy.png: accuracy vs pruning ratio per criterion; latency.png: latency vs ratio per criterion
    and batch size; tradeoff.png: every variant's top-1 against its measured speed-up and against its
    MACs reduction, the Pareto front drawn and the shipped variant marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _plot_accuracy(ax, report)
    _save(fig, out_path("plots/accuracy.png"))

    batches = report["benchmark"]["latency_batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(5.0 * len(batches), 3.8), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        _plot_latency(ax, report, batch)
    _save(fig, out_path("plots/latency.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2))
    provider, batch = report["benchmark"]["providers"][0], max(batches)
    _plot_tradeoff(axes[0], report, lambda v: v["speedup"][provider][f"batch_{batch}"]["speedup"])
    _style(axes[0], f"measured speed-up ({provider}, batch {batch})", "top-1 accuracy (%)", "accuracy vs speed")
    _plot_tradeoff(axes[1], report, lambda v: 1.0 / v["macs_ratio"])
    _style(axes[1], "MACs reduction (original MACs / MACs)", "top-1 accuracy (%)", "accuracy vs MACs")
    _save(fig, out_path("plots/tradeoff.png"))

    amounts = sorted({v["ratio"] for v in report["variants"] if v["criterion"] is not None})
    fig, axes = plt.subplots(len(amounts), 1, figsize=(11.0, 2.6 * len(amounts) + 0.6), squeeze=False)
    for ax, amount in zip(axes[:, 0], amounts, strict=True):
        _plot_widths(ax, report, amount)
    _save(fig, out_path("plots/widths.png"))
    return ["plots/accuracy.png", "plots/latency.png", "plots/tradeoff.png", "plots/widths.png"]


def _plot_widths(ax, report: dict[str, Any], amount: float) -> None:
    """Fraction of each layer's output channels kept, per criterion (random: its first seed), at one
    pruning amount: where each criterion took its channels from."""
    original = report["variants"][0]["widths"]
    layers = [name for name in original if name not in report["model"]["output_layers"]]
    shown = set()
    for v in report["variants"]:
        if v["ratio"] != amount or v["precision"] != "fp32" or v["criterion"] in shown:
            continue
        shown.add(v["criterion"])
        kept = [v["widths"][name] / original[name] for name in layers]
        ax.plot(range(len(layers)), kept, marker=".", color=COLOURS.get(v["criterion"]), label=v["criterion"])
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    _style(ax, "", "channels kept", f"amount {amount:g}")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher x and higher y are
    better), in order of increasing x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front[::-1]


def _plot_tradeoff(ax, report: dict[str, Any], gain: Callable[[dict[str, Any]], float]) -> None:
    """Every variant as a point (gain, top-1), coloured by criterion; INT8 twins hollow."""
    variants = report["variants"]
    points = [(gain(v), v["accuracy"]["top1"]) for v in variants]
    for criterion in [None, *report["config"]["criteria"]]:
        for precision, face in (("fp32", None), ("int8", "none")):
            chosen = [
                p
                for v, p in zip(variants, points, strict=True)
                if (v["criterion"], v["precision"]) == (criterion, precision)
            ]
            if chosen:
                colour = COLOURS.get(criterion, "black")
                label = (criterion or "original") + (" int8" if precision == "int8" else "")
                ax.scatter(*zip(*chosen, strict=True), color=colour, facecolors=face or colour, s=22, label=label)
    front = [points[i] for i in pareto_front(points)]
    ax.step(*zip(*front, strict=True), where="post", color="black", linewidth=0.8, alpha=0.6, label="Pareto front")
    shipped = next(p for v, p in zip(variants, points, strict=True) if v["name"] == report["chosen"]["variant"])
    ax.scatter(*shipped, marker="*", s=220, facecolors="none", edgecolors="gold", linewidths=1.5, label="shipped")
    ax.annotate(report["chosen"]["variant"], shipped, textcoords="offset points", xytext=(6, 6), fontsize=7)


def _plot_accuracy(ax, report: dict[str, Any]) -> None:
    summary = report["summary"]
    for criterion in report["config"]["criteria"]:
        rows = [row for row in summary if criterion in row]  # a target found per criterion: its own amount
        ratios = [row["ratio"] for row in rows]
        after = [row[criterion]["top1"] for row in rows]
        before = [row[criterion]["top1_before_recovery"] for row in rows]
        colour = COLOURS.get(criterion)
        ax.errorbar(
            ratios,
            [s["mean"] for s in after],
            yerr=[s["std"] for s in after],
            marker="o",
            color=colour,
            capsize=3,
            label=f"{criterion} (BN re-estimated)",
        )
        ax.plot(ratios, [s["mean"] for s in before], "--.", color=colour, alpha=0.6, label=f"{criterion} (before)")
    ax.axhline(report["variants"][0]["accuracy"]["top1"], color="black", linewidth=0.8, label="original")
    _style(
        ax,
        "pruning amount (fraction of channels removed)",
        "top-1 accuracy (%)",
        f"{report['model']['name']}: accuracy vs pruning amount",
    )


def _plot_latency(ax, report: dict[str, Any], batch: int) -> None:
    provider, key = report["benchmark"]["providers"][0], f"batch_{batch}"
    for criterion in report["config"]["criteria"]:
        by_ratio: dict[float, list[float]] = {}
        for v in report["variants"]:
            if v["criterion"] == criterion and v.get("precision", "fp32") == "fp32":
                by_ratio.setdefault(v["ratio"], []).append(v["latency"][provider][key]["median_ms"])
        ratios = sorted(by_ratio)
        medians = [float(np.median(by_ratio[r])) for r in ratios]
        ax.plot(ratios, medians, marker="o", color=COLOURS.get(criterion), label=criterion)
    original = report["variants"][0]["latency"][provider][key]["median_ms"]
    ax.axhline(original, color="black", linewidth=0.8, label="original")
    _style(ax, "pruning ratio", "median latency (ms)", f"{provider}, batch {batch}")


def _style(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
