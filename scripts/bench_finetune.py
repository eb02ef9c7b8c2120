"""Accuracy after fine-tuning at ~2x fewer MACs: causal vs Taylor vs L1 vs random, same training budget.

    python scripts/bench_finetune.py --model cifar_resnet20 --weights models/cifar_resnet20.pt \\
        --data ../shared/data/cifar10 --epochs 3 --write BENCHMARKS.md

Runs `compress run` once: it prunes to keep at most --target-macs-ratio of the MACs (0.5: ~2x
fewer; with global or auto allocation (auto, the default, keeps global's or uniform's cut of that
budget per variant) that share of the MACs is the amount, the same cost for every criterion; with
uniform allocation the amount is searched) with causal, taylor, l1 and
--random-seeds random baselines, re-estimates
batch norm, fine-tunes every variant with the same budget (--epochs, --lr, cosine schedule,
distillation from the original unless --no-distill) on training images kept apart from calibration
and evaluation, and evaluates with onnxruntime. Prints the table (accuracy right after pruning, after
batch-norm re-estimation, after fine-tuning, and the drop from the original) next to the published
anchor. Extra arguments go to `compress run`. Latency is timed briefly: this benchmark is about
accuracy (see bench_latency.py for speed).

A control row fine-tunes the unpruned original with the same budget (and itself as teacher): a
short-trained checkpoint still gains from more training, and the control shows how much of a pruned
variant's accuracy is that gain rather than recovery (--no-control skips it).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
from pathlib import Path

from benchmark_tables import replace_section

from compress.cli import run_config_from_args
from compress.evaluation import evaluate_sharded
from compress.pipeline import load_inputs, run
from compress.progress import set_quiet
from compress.training import train

HEADING = "### Fine-tuning after pruning to ~2x fewer MACs"
# Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023, Table 1 (CIFAR-10, ResNet-56,
# 93.53% base): pruned to 2.11x fewer MACs and fine-tuned, without sparse training.
ANCHOR = (
    "Published anchor (DepGraph, CVPR 2023, CIFAR-10 ResNet-56 from 93.53%, 2.11x fewer MACs, full "
    "fine-tuning schedule): DepGraph without sparse training -0.07 points, group-L1 -0.60 points."
)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.2f} ± {std:.2f}"


def control(config) -> dict:
    """The unpruned original fine-tuned with the run's budget: what more training alone gives."""
    inputs = load_inputs(config)
    model, teacher = copy.deepcopy(inputs.model), inputs.model if config.distill else None
    result = train(model, inputs.splits.training, config.train_settings(), teacher=teacher, desc="control")
    accuracy = evaluate_sharded(model, inputs.splits.evaluation, config.batch_size)
    return {"top1": accuracy["top1"], "seconds": result.seconds}


def table(report: dict, controlled: dict | None) -> list[str]:
    original = report["variants"][0]["accuracy"]["top1"]
    head = [
        "criterion",
        "MACs reduction",
        "params",
        "top-1 right after pruning",
        "after batch-norm re-estimation",
        "after fine-tuning",
        "change from the original (points)",
        "fine-tuning s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    variants = [v for v in report["variants"] if v["criterion"] is not None and v["precision"] == "fp32"]
    for criterion in report["config"]["criteria"]:
        chosen = [v for v in variants if v["criterion"] == criterion]
        if not chosen:
            continue
        acc = [v["accuracy"] for v in chosen]
        name = criterion + (f" ({len(chosen)} seeds)" if len(chosen) > 1 else "")
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    f"{1 / chosen[0]['macs_ratio']:.2f}x",
                    f"{chosen[0]['params']:,}",
                    _mean_std([a["top1_before_recovery"] for a in acc]),
                    _mean_std([a.get("top1_before_finetune", a["top1"]) for a in acc]),
                    f"**{_mean_std([a['top1'] for a in acc])}**",
                    _mean_std([a["top1"] - original for a in acc]),
                    _mean_std([v.get("finetune", {}).get("seconds", 0.0) for v in chosen]),
                ]
            )
            + " |"
        )
    if controlled is not None:
        lines.append(
            f"| control: original, not pruned, same fine-tuning | 1.00x | {report['model']['params']:,} | "
            f"{original:.2f} | {original:.2f} | {controlled['top1']:.2f} | {controlled['top1'] - original:+.2f} | "
            f"{controlled['seconds']:.2f} |"
        )
    return lines


def kept(report: dict) -> str:
    """What auto allocation kept, over the pruned variants: ' (global kept for every variant)', or each
    variant's choice; empty under another allocation."""
    chosen = {
        v["name"]: "/".join(c["chosen"] for c in v["allocation_choices"])
        for v in report["variants"]
        if v.get("allocation_choices")
    }
    if report["config"]["allocation"] != "auto" or not chosen:
        return ""
    if len(set(chosen.values())) == 1:
        return f" ({next(iter(chosen.values()))} kept for every variant)"
    return " (" + ", ".join(f"{name}: {c}" for name, c in chosen.items()) + ")"


def amounts(report: dict) -> str:
    """The pruning amount of each criterion (one for all, but with a speed-up search under global or auto
    allocation)."""
    allocation = report["config"]["allocation"]
    found = {c: t["ratio"] for c, t in (report.get("targets") or {}).items()}
    if allocation in ("global", "auto") and len(set(found.values())) == 1:
        share = next(iter(found.values()))
        allocated = f"{allocation.capitalize()} allocation{kept(report)}"
        return f"{allocated} removing {share:.4f} of the MACs for every criterion,"
    if allocation == "uniform" or len(set(found.values())) <= 1:
        return f"Uniform pruning ratio {report['target']['ratio']:.4f}, the same for every criterion,"
    each = ", ".join(f"{c} {r:.4f}" for c, r in found.items())
    return f"{allocation.capitalize()} allocation, amounts by criterion ({each}),"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="Markdown file whose fine-tuning section is replaced.")
    parser.add_argument("--target-macs-ratio", type=float, default=0.5, help="keep at most this fraction of MACs")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of every variant")
    parser.add_argument("--lr", type=float, default=0.02, help="fine-tuning learning rate (cosine to 0)")
    parser.add_argument("--no-distill", action="store_true", help="fine-tune on labels only")
    parser.add_argument("--random-seeds", type=int, default=2)
    parser.add_argument("--no-control", action="store_true", help="skip fine-tuning the unpruned original")
    args, passthrough = parser.parse_known_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")  # a long job
    command = "python scripts/bench_finetune.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        flags = [
            *("--out", str(Path(tmp) / "out")),
            *("--target-macs-ratio", str(args.target_macs_ratio), "--ratios", ""),
            *("--criteria", "causal,taylor,l1,random", "--random-seeds", str(args.random_seeds)),
            *("--finetune-epochs", str(args.epochs), "--finetune-lr", str(args.lr)),
            *([] if args.no_distill else ["--distill"]),
            *("--latency-runs", "5", "--latency-min-seconds", "0", "--latency-window-seconds", "2", "--warmup", "2"),
            *passthrough,
        ]
        config = run_config_from_args(flags)
        set_quiet(True)
        start = time.perf_counter()
        report = run(config)
        controlled = None if args.no_control else control(config)
        seconds = time.perf_counter() - start

    model, tuned = report["model"], report["finetune"]
    teacher = (
        f", distilled from the original (temperature {tuned['temperature']:g}, weight {tuned['distill_weight']:g})"
        if tuned["teacher"]
        else ", labels only"
    )
    first = next(v for v in report["variants"] if v.get("finetune"))["finetune"]
    lines = [
        HEADING,
        "",
        f"Command: `{command.strip()}` ({seconds / 60:.0f} min wall, {first['device']}, "
        f"{first['world_size']} process(es)). Model `{model['name']}` (`{model['weights']}`), original top-1 "
        f"**{report['variants'][0]['accuracy']['top1']:.2f}%** on {report['data']['evaluation_images']} "
        f"evaluation images; {report['data']['calibration_images']} calibration images.",
        "",
        f"{amounts(report)} from the MACs target {args.target_macs_ratio:g} (channels "
        f"rounded to multiples of {report['config']['round_to']}). **Reduced "
        f"recipe**: every variant, random baselines included, was fine-tuned {tuned['epochs']} epoch(s) of "
        f"{first['images_per_epoch']} training images (apart from calibration and evaluation), SGD lr "
        f"{tuned['lr']:g} with a {tuned['schedule']} schedule, batch {tuned['batch_size']}, weight decay "
        f"{tuned['weight_decay']:g}{teacher}. Top-1 % with onnxruntime; random: mean ± std over seeds "
        f"{report['seeds']['random_baselines']}.",
        "",
        *table(report, controlled),
        "",
        f"{ANCHOR} Here: `{model['name']}` and the reduced budget above, so the gaps are not directly "
        "comparable with the anchor's; the ordering of the criteria on the same budget is.",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['environment']['versions'].items() if v)}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
