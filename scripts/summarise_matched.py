"""Causal with its defaults against the best baseline configuration, over several matched-MACs runs.

Each input is the `--json` file of one `scripts/bench_criteria.py --targets ...` run. Runs with
different `--seed` (other calibration and evaluation images) and different `--group-normalisation`
are pooled: per model, MACs target and seed, causal with its defaults (the default allocation, the
normalisation `auto` gives it, one step) is compared with the best of every baseline configuration
(criterion x allocation x steps x normalisation; random excluded) of that seed, and over the seeds
with the baseline configuration whose mean is best.

    python scripts/summarise_matched.py runs/s0.json runs/s0-sqrt-mean.json runs/s1.json ... \
        --write BENCHMARKS.md

A later input's row replaces an earlier one's for the same model, target, configuration and seed, so
a rerun of one criterion (say causal alone, after a change to it) is pooled with the baselines' runs
by listing it last.

A file written before the JSON recorded its seed and normalisation takes them as suffixes:
`FILE:NORMALISATION@SEED` (NORMALISATION as given to --group-normalisation; `auto` resolves per
criterion).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from benchmark_tables import replace_section

from compress.allocation import DEFAULT_ALLOCATION, NORMALISATIONS, resolve_normalisation

HEADING = "### Criteria at matched MACs over data seeds"
DEFAULT = ("causal", DEFAULT_ALLOCATION, 1, resolve_normalisation("auto", "causal"))


def parse_input(item: str) -> tuple[Path, str | None, int | None]:
    """FILE[:NORMALISATION][@SEED]"""
    rest, _, seed = item.partition("@")
    path, _, normalisation = rest.partition(":")
    if normalisation and normalisation not in NORMALISATIONS:
        raise ValueError(f"{item}: unknown normalisation {normalisation!r}; one of {', '.join(NORMALISATIONS)}")
    if seed and not seed.isdigit():
        raise ValueError(f"{item}: the seed after '@' must be a whole number, got {seed!r}")
    return Path(path), normalisation or None, int(seed) if seed else None


def configuration(row: dict, fallback: str | None) -> tuple:
    normalisation = None
    if row["allocation"] != "uniform":  # global and auto rank with a normalisation
        normalisation = row.get("normalisation") or resolve_normalisation(fallback or "auto", row["criterion"])
    return row["criterion"], row["allocation"], row["steps"], normalisation


def name(config: tuple) -> str:
    criterion, allocation, steps, normalisation = config
    return (
        f"{criterion} · {allocation}"
        + (f" {normalisation}" if normalisation else "")
        + (f", {steps} steps" if steps > 1 else "")
    )


def load(items: list[str]) -> dict:
    """{model: {target: {config: {seed: top-1}}}}"""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for item in items:
        path, normalisation, seed = parse_input(item)
        for result in json.loads(path.read_text()):
            run_seed = seed if seed is not None else result.get("data_seed", 0)
            for row in result["rows"]:
                if row["criterion"] == "random":
                    continue
                config = configuration(row, normalisation)
                table[result["model"]][row["target"]][config][run_seed] = row["after"]
    return table


def is_baseline(config: tuple) -> bool:
    return not config[0].startswith("causal")


def render(table: dict, command: str) -> str:
    head = [HEADING, "", f"Command: `{command}`", ""]
    out = [
        f"Per model and MACs target: causal with its defaults ({DEFAULT[1]} allocation, "
        f"`{DEFAULT[3]}`, one step) on each data seed (other calibration and evaluation images), the best "
        "baseline configuration of that seed, and over the seeds the mean of causal against the baseline "
        "configuration with the best mean. A miss is marked.",
        "",
    ]
    wins = points = 0
    margins, seed_wins, seed_points = [], 0, 0
    for model, targets in table.items():
        out += [f"#### {model}", ""]
        out += [
            "| target | causal per seed | best baseline per seed | mean: causal | mean: best baseline |",
            "|---|---|---|---|---|",
        ]
        for target, configs in sorted(targets.items()):
            default = configs.get(DEFAULT, {})
            seeds = sorted(default)
            per_seed, best_seed = [], []
            for seed in seeds:
                candidates = [(v[seed], c) for c, v in configs.items() if is_baseline(c) and seed in v]
                if not candidates:
                    continue
                value, config = max(candidates)
                per_seed.append(f"{default[seed]:.2f}")
                miss = " (miss)" if default[seed] < value else ""
                best_seed.append(f"{value:.2f} {name(config)}{miss}")
                seed_points += 1
                seed_wins += default[seed] >= value
            complete = {
                c: statistics.mean(v[s] for s in seeds)
                for c, v in configs.items()
                if is_baseline(c) and all(s in v for s in seeds)
            }
            if not complete or not seeds:
                continue
            best = max(complete, key=lambda c: (complete[c], c))  # ties broken as per seed: by name
            mean = statistics.mean(default[s] for s in seeds)
            points += 1
            wins += mean >= complete[best]
            margins.append(mean - complete[best])
            miss = " **(miss)**" if mean < complete[best] else ""
            out.append(
                f"| {target:g}x | {' / '.join(per_seed)} | {'; '.join(best_seed)} | {mean:.2f}{miss} "
                f"| {complete[best]:.2f} {name(best)} |"
            )
        out.append("")
    if points:  # the count heads the section
        head.append(
            f"**Over the seeds' means, causal is at or above the best baseline configuration at {wins} of {points} "
            f"points** (mean margin {statistics.mean(margins):+.2f}); seed by seed, at {seed_wins} of {seed_points}.\n"
        )
    return "\n".join(head + out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="FILE[:NORMALISATION][@SEED]")
    parser.add_argument("--write", type=Path, help="replace this script's section of the given Markdown file")
    args = parser.parse_args()
    command = "python scripts/summarise_matched.py " + " ".join(args.inputs)
    try:
        table = load(args.inputs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # missing, or not our JSON
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        if isinstance(exc, (TypeError, AttributeError)):
            what = "not a list of per-model results"
        print(f"summarise_matched: {what} (inputs are bench_criteria.py --json files)", file=sys.stderr)
        sys.exit(2)
    text = render(table, command)
    print(text)
    if args.write:
        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
