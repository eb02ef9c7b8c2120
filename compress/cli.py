"""The `compress` command: thin click commands over the pipeline. No logic lives here.

Exit codes: 0 success; 1 a quality gate failed; 2 bad input or usage (one line on stderr, no
traceback unless --debug); anything else is a bug.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import traceback
import warnings

import click

from . import __version__
from ._console import EXIT_INTERRUPTED
from .allocation import ALLOCATIONS, DEFAULT_ALLOCATION, DEFAULT_NORMALISATION, NORMALISATIONS
from .artifacts import remove_unfinished
from .config import DEFAULT_RATIOS, PROVIDER_CHOICES, RunConfig, config_to_toml, read_config_file
from .criteria import CRITERIA, DEFAULT_CRITERIA, SCORED_CRITERIA
from .errors import EXIT_GATE_FAILED, EXIT_OK, CompressError, CompressWarning, ConfigError, collect_warnings
from .export import EXPORTERS
from .training import AUGMENTATIONS, SCHEDULES

_state = {"debug": False}
# click >= 8.2 raises this for a group called without a command; earlier versions print the help.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _CommaList(click.ParamType):
    """A comma-separated list: `--ratios 0.1,0.3` or `--criteria causal,random`."""

    def __init__(self, item_type: type, choices: tuple[str, ...] | None = None):
        self.item_type, self.choices = item_type, choices
        self.name = f"{item_type.__name__}[,{item_type.__name__}...]"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return tuple(value)
        items = [v.strip() for v in str(value).split(",")] if str(value).strip() else []
        if "" in items:  # "0.3,,0.5": a value was left out, not meant
            self.fail(f"{value!r} has an empty item; separate the values by single commas", param, ctx)
        try:
            converted = tuple(self.item_type(v) for v in items)
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.item_type.__name__}s", param, ctx)
        if self.choices:
            for item in converted:
                if item not in self.choices:
                    self.fail(f"{item!r} is not one of {', '.join(self.choices)}", param, ctx)
        return converted


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="compress")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """Prune CNNs by causal filter importance, export slim ONNX, and benchmark it.

    `compress run` with no options prunes the embedded default (a small CNN on scikit-learn's
    digits, offline) and writes the report to ./compress-output.
    """
    _state["debug"] = debug


def _options(*options):
    """One decorator applying click `options` in the order given (as they appear in --help)."""

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


# Settings of the scorers: shared by `run` and `explain`.
_scoring_options = _options(
    click.option(
        "--effect-images",
        default=512,
        show_default=True,
        type=int,
        help="Calibration images the causal criterion measures total effects on.",
    ),
    click.option(
        "--ridge",
        default=1e-2,
        show_default=True,
        type=float,
        help="Ridge penalty of causal-direct's structural equations.",
    ),
    click.option(
        "--pool-grid",
        default=1,
        show_default=True,
        type=int,
        help="causal-direct: pool activations over a GxG grid per image (1: global average).",
    ),
    click.option(
        "--intervention-images",
        default=128,
        show_default=True,
        type=int,
        help="Calibration images the intervention criterion measures each do(channel = 0) on.",
    ),
)


def _output_options(default_out: str):
    """Where results go and how much is printed: shared by `run` and `explain`."""
    return _options(
        click.option("--out", default=default_out, show_default=True, help="Output directory."),
        click.option("--force", is_flag=True, help="Replace the output directory if it exists."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout (implies --quiet)."),
        click.option(
            "--quiet", "-q", is_flag=True, help="No progress bars, log lines or warnings (they stay in the report)."
        ),
    )


# How ONNX files are written and checked: shared by `run` and `export`.
_export_options = _options(
    click.option(
        "--exporter",
        type=click.Choice(EXPORTERS),
        default="dynamo",
        show_default=True,
        help="ONNX exporter to try first (the other is the fallback).",
    ),
    click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset of the exported files."),
    click.option(
        "--parity-tolerance",
        default=1e-4,
        show_default=True,
        type=float,
        help="Largest allowed max-abs difference between ONNX and PyTorch logits on real images.",
    ),
    click.option(
        "--int8",
        is_flag=True,
        help="Also write an INT8 twin (onnxruntime static quantisation: QDQ, per-channel, "
        "calibrated on the calibration images).",
    ),
    click.option(
        "--int8-images", default=512, show_default=True, type=int, help="Calibration images of the INT8 ranges."
    ),
)

# How latency is measured: shared by `run` and `bench`.
_timing_options = _options(
    click.option(
        "--provider",
        "providers",
        type=click.Choice(PROVIDER_CHOICES),
        multiple=True,
        help="onnxruntime provider(s) to time (repeatable; default: cpu and cuda where available).",
    ),
    click.option("--threads", type=int, help="onnxruntime intra-op threads (default: one per available core)."),
    click.option(
        "--latency-runs", default=50, show_default=True, type=int, help="Timed calls per file and batch, at least."
    ),
    click.option(
        "--latency-min-seconds",
        default=1.0,
        show_default=True,
        type=float,
        help="Timed work per file and batch, at least: fast models get more calls.",
    ),
    click.option(
        "--latency-window-seconds",
        default=10.0,
        show_default=True,
        type=float,
        help="Timed work per batch size across all files, at least: few files get more calls each, so "
        "the interleaved timing spans the machine's slow and fast phases.",
    ),
    click.option("--warmup", default=10, show_default=True, type=int, help="Untimed calls per file before timing."),
)

# Recovery by training: every pruned variant (random baselines included) gets the same budget.
_finetune_options = _options(
    click.option(
        "--finetune-epochs",
        default=0,
        show_default=True,
        type=int,
        help="Fine-tune every pruned variant this many epochs on training images kept apart from "
        "calibration and evaluation (0: no fine-tuning).",
    ),
    click.option("--finetune-lr", default=0.01, show_default=True, type=float, help="Fine-tuning learning rate (SGD)."),
    click.option(
        "--finetune-schedule",
        type=click.Choice(SCHEDULES),
        default="cosine",
        show_default=True,
        help="Learning-rate schedule per step: cosine to 0, step (x0.1 at 50% and 75%), constant.",
    ),
    click.option(
        "--finetune-batch-size",
        default=128,
        show_default=True,
        type=int,
        help="Fine-tuning batch (global: split over torchrun's processes).",
    ),
    click.option("--finetune-weight-decay", default=5e-4, show_default=True, type=float),
    click.option(
        "--finetune-augment",
        type=click.Choice(AUGMENTATIONS),
        default="auto",
        show_default=True,
        help="Random crops, and flips (auto: flips for colour images only).",
    ),
    click.option(
        "--finetune-size",
        type=int,
        help="Fine-tune on this many training images (default: all that calibration did not take).",
    ),
    click.option("--distill", is_flag=True, help="Distil from the original model (teacher) while fine-tuning."),
    click.option(
        "--distill-temperature", default=4.0, show_default=True, type=float, help="Softmax temperature of distillation."
    ),
    click.option(
        "--distill-weight",
        default=0.7,
        show_default=True,
        type=float,
        help="Weight of the distillation loss; the label cross-entropy gets the rest.",
    ),
)

# The options that say which model to load and on which data: shared by `run` and `explain`.
_model_and_data_options = _options(
    click.option(
        "--model",
        default="digits-cnn",
        show_default=True,
        help="Architecture: a compress or torchvision name (`compress models`), timm:NAME for a timm model "
        "(the timm extra), or package.module:factory for your own class or function (needs --trust-code).",
    ),
    click.option(
        "--weights",
        help="Checkpoint (state dict) to load; for torchvision models also a weights name such as DEFAULT "
        "(downloaded by torchvision), for timm models DEFAULT or a pretrained tag (downloaded by timm).",
    ),
    click.option(
        "--trust-checkpoint", is_flag=True, help="Allow a checkpoint holding pickled objects (runs code from the file)."
    ),
    click.option(
        "--trust-code",
        is_flag=True,
        help="Allow --model package.module:factory (importing your module runs its code).",
    ),
    click.option(
        "--data",
        default="digits",
        show_default=True,
        help="'digits', a torchvision data set name (cifar10, cifar100, mnist, fashion-mnist, kmnist), "
        "or an image-folder directory (with train/ and test/ sub-folders, or one class tree to split).",
    ),
    click.option("--data-root", help="Where a torchvision data set lives (default ./data)."),
    click.option("--download", is_flag=True, help="Let torchvision download the data set into --data-root."),
    click.option("--image-size", type=click.IntRange(min=1), help="Resize images to this size (default: the model's)."),
    click.option("--mean", type=_CommaList(float), help="Per-channel normalisation mean, e.g. 0.485,0.456,0.406."),
    click.option("--std", type=_CommaList(float), help="Per-channel normalisation std."),
    click.option(
        "--calibration-size",
        default=2000,
        show_default=True,
        type=int,
        help="Calibration images (scoring and batch-norm re-estimation).",
    ),
    click.option("--eval-size", type=int, help="Evaluate on this many images (default: the whole evaluation split)."),
    click.option("--batch-size", default=128, show_default=True, type=int),
    click.option("--seed", default=0, show_default=True, type=int, help="Seed of data subsets and random baselines."),
)


@cli.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file of settings (keys as the flags, e.g. latency-batch = 32); flags given here override it.",
)
@_model_and_data_options
@click.option(
    "--ratios",
    type=_CommaList(float),
    default=",".join(map(str, DEFAULT_RATIOS)),
    show_default=True,
    help="Pruning amounts: with --allocation global or auto the fraction of the model's MACs removed, with "
    "uniform the fraction of channels removed from every prunable group.",
)
@click.option(
    "--criteria",
    type=_CommaList(str, CRITERIA),
    default=",".join(DEFAULT_CRITERIA),
    show_default=True,
    help=f"Criteria to prune with, side by side; any of {', '.join(CRITERIA)}.",
)
@click.option("--random-seeds", default=3, show_default=True, type=int, help="Seeds of the random baseline.")
@_scoring_options
@click.option(
    "--round-to",
    default=4,
    show_default=True,
    type=int,
    help="Keep channel counts a multiple of this (1: no rounding); odd counts run slower.",
)
@click.option(
    "--allocation",
    type=click.Choice(ALLOCATIONS),
    default=DEFAULT_ALLOCATION,
    show_default=True,
    help="global: all groups' channels ranked together on scores scaled per group (--group-normalisation) "
    "until --ratios of the MACs are gone (every criterion at equal cost); uniform: every group loses the "
    "same fraction of its channels; auto: both at the same MACs (causal: and global on do(channel := 0)'s "
    "effects and on the sqrt-mean scale; criteria estimated from images: and global's widths with l1's "
    "channels), keeping the one whose predictions agree more with the original's on the calibration images "
    "(per extra candidate, another pruning and two passes over them).",
)
@click.option(
    "--steps",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Reach each amount in this many steps, re-estimating batch norm and re-scoring in between.",
)
@click.option(
    "--max-group-ratio",
    default=0.9,
    show_default=True,
    type=float,
    help="Global allocation removes at most this fraction of any one group's channels.",
)
@click.option(
    "--group-normalisation",
    type=click.Choice(NORMALISATIONS),
    default=DEFAULT_NORMALISATION,
    show_default=True,
    help="Global allocation: how each group's scores are scaled before all groups are ranked together. "
    "auto: what measured best per criterion (causal sqrt-total, causal-direct sqrt-mean, the rest mean; "
    "with --allocation auto, causal also tries sqrt-mean); "
    "sqrt-total: by their mean, times the square root of their sum (the group's level counts, not its "
    "width); sqrt-mean: by the square root of their mean; mean, max: by those; none: raw.",
)
@click.option(
    "--no-recalibrate",
    "recalibrate",
    flag_value=False,
    default=True,
    help="Skip batch-norm re-estimation after pruning.",
)
@_finetune_options
@_export_options
@_timing_options
@click.option("--latency-batch", default=32, show_default=True, type=int, help="Batch size timed besides batch 1.")
@click.option(
    "--ship-criterion",
    type=click.Choice(CRITERIA),
    default="causal",
    show_default=True,
    help="Criterion whose variant becomes model.onnx.",
)
@click.option(
    "--ship-int8",
    is_flag=True,
    help="Ship the chosen variant's INT8 twin as model.onnx when its top-1 is within --accuracy-tolerance "
    "of the original (implies --int8; pruned.pt stays fp32).",
)
@click.option(
    "--accuracy-tolerance",
    default=1.0,
    show_default=True,
    type=float,
    help="Ship the most pruned variant within this many top-1 points of the original.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    help="Gate: the shipped model may lose at most this many top-1 points against the original.",
)
@click.option(
    "--min-speedup",
    type=float,
    help="Gate: the shipped model must run at least this much faster than the original (--latency-batch).",
)
@click.option("--max-size-mb", type=float, help="Gate: model.onnx may be at most this many MB (10^6 bytes).")
@click.option(
    "--target-macs-ratio",
    type=float,
    help="Find the pruning ratio that keeps at most this fraction of the MACs, add it to --ratios, ship it.",
)
@click.option(
    "--target-speedup",
    type=float,
    help="Find the pruning ratio whose measured speed-up (--latency-batch) reaches this, add it, ship it.",
)
@_output_options("compress-output")
def run(as_json: bool, quiet: bool, config_file: str | None, providers: tuple[str, ...], **options) -> int:
    """Score, prune, recover, export and benchmark a model; write the report to --out.

    Writes model.onnx (the shipped variant), onnx/*.onnx (every variant), pruned.pt, importances.npz,
    report.json, report.md, plots/*.png and manifest.json. Settings come from the flags, over
    --config FILE (TOML; `compress config show` prints what a run would use). Exit code 1 when a
    quality gate (--max-accuracy-drop, --min-speedup, --max-size-mb) failed, after writing everything.

    --finetune-epochs N fine-tunes every pruned variant (random baselines too) on training images
    kept apart from calibration and evaluation; --distill uses the original as teacher.
    `torchrun --nproc-per-node N -m compress run ...` runs data-parallel (rank 0 writes).
    """
    from .pipeline import run as run_pipeline

    _configure_output(quiet or as_json)
    report = run_pipeline(_resolve_run_config(click.get_current_context(), config_file, providers, options))
    if report is None:  # a torchrun process other than rank 0: rank 0 reports
        return EXIT_OK
    if as_json:
        click.echo(json.dumps(_summary(report), indent=2))
    elif not quiet:
        click.echo(_text_summary(report))
    for gate in report["gates"]:
        if not gate["passed"]:
            click.echo(
                f"compress: gate failed: {gate['name']} {gate['value']:.3f} {gate['unit']} "
                f"(threshold {gate['threshold']:g}); the report is in {report['output_dir']}",
                err=True,
            )
    return EXIT_OK if report["gates_passed"] else EXIT_GATE_FAILED


@cli.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file of `compress run` settings: explain takes its model, data and scoring keys; flags given "
    "here override it.",
)
@_model_and_data_options
@click.option(
    "--criterion",
    type=click.Choice(SCORED_CRITERIA),
    default="causal",
    show_default=True,
    help="How filters are scored: causal, the seed's literal method, or measured interventions.",
)
@_scoring_options
@click.option("--tsne-layer", type=int, help="Conv layer index of the t-SNE picture (default: the last conv layer).")
@click.option(
    "--filters",
    "n_filters",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="First-layer filters drawn.",
)
@click.option("--image-index", default=0, show_default=True, type=int, help="Evaluation image under the heatmap.")
@_output_options("compress-explain")
def explain(
    as_json: bool,
    quiet: bool,
    config_file: str | None,
    criterion: str,
    tsne_layer: int | None,
    n_filters: int,
    image_index: int,
    **options,
) -> None:
    """Score every filter and draw the four pictures: heatmap on an input, first-layer filters,
    importance distribution per layer, t-SNE of a layer's filters.

    Writes plots/*.png, importances.npz, explanation.json and manifest.json to --out.
    """
    from .explain import explain as run_explain

    _configure_output(quiet or as_json)
    # Only the file's model, data and scoring keys: its output directory (and --force) are the run's,
    # and replacing a run's results from explain's command line would surprise anyone.
    own = set(options) - {"out", "force"}
    config = _resolve_run_config(click.get_current_context(), config_file, (), options, only=own)
    summary = run_explain(
        config, criterion=criterion, tsne_layer=tsne_layer, n_filters=n_filters, image_index=image_index
    )
    if as_json:
        click.echo(json.dumps({k: v for k, v in summary.items() if k != "environment"}, indent=2))
    elif not quiet:
        for layer in summary["layers"]:
            click.echo(
                f"{layer['index']:3d} {layer['name']:28s} {layer['filters']:4d} filters, "
                f"importance median {layer['median']:.3g} (max {layer['max']:.3g})"
            )
        click.echo(f"pictures and importances in {summary['output_dir']}")


@cli.command("export")
@_model_and_data_options
@click.option(
    "--pruned",
    type=click.Path(dir_okay=False),
    help="A pruned.pt written by `compress run` (instead of --model/--weights).",
)
@click.option("--output", "-o", required=True, help="ONNX file to write (with --int8 also NAME.int8.onnx).")
@_export_options
@click.option("--input-name", default="input", show_default=True, help="Name of the ONNX input.")
@click.option("--output-name", default="logits", show_default=True, help="Name of the ONNX output.")
@click.option(
    "--static-batch",
    type=click.IntRange(min=1),
    help="Fix the batch size to this (default: a dynamic batch axis).",
)
@click.option("--threads", type=int, help="onnxruntime intra-op threads of the checks.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout (implies --quiet).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars, log lines or warnings (they stay in the report).")
def export_command(
    as_json: bool,
    quiet: bool,
    output: str,
    pruned: str | None,
    input_name: str,
    output_name: str,
    static_batch: int | None,
    **options,
) -> None:
    """Export a model to one ONNX file, checked against PyTorch on real images.

    The model is --model with --weights (as `compress run` loads it) or a --pruned pruned.pt. The file
    gets a dynamic batch axis (or --static-batch), the given input/output names and its preprocessing
    as metadata; onnx.checker and shape inference must pass, and the logits must match PyTorch's
    within --parity-tolerance, else nothing is written.
    """
    from click.core import ParameterSource

    from .export_job import export_model

    ctx = click.get_current_context()
    given = [
        f"--{name}" for name in ("model", "weights") if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    ]
    if pruned and given:  # the pruned.pt names its own architecture and holds its weights
        raise click.UsageError(f"--pruned brings its own model and weights: drop {' and '.join(given)}", ctx)
    _configure_output(quiet or as_json)
    summary = export_model(
        RunConfig(**options),
        output,
        pruned=pruned,
        input_name=input_name,
        output_name=output_name,
        static_batch=static_batch,
    )
    if as_json:
        click.echo(json.dumps({k: v for k, v in summary.items() if k != "environment"}, indent=2))
    elif not quiet:
        parity = summary["parity"]
        click.echo(
            f"wrote {summary['file']} ({summary['exporter']} exporter, opset {summary['opset']}): top-1 "
            f"{summary['accuracy']['top1']:.2f}%, parity max abs {parity['max_abs_diff']:.2e} "
            f"(rel {parity['max_rel_diff']:.2e}) on {parity['images']} images"
        )
        if "int8" in summary:
            q = summary["int8"]
            click.echo(f"wrote {q['file']}: top-1 {q['accuracy']['top1']:.2f}% ({-q['top1_drop']:+.2f} points)")


@cli.command("bench")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="Evaluation data: 'digits', a torchvision data set name, or an image-folder directory.",
)
@click.option("--data-root", help="Where a torchvision data set lives (default ./data).")
@click.option("--download", is_flag=True, help="Let torchvision download the data set into --data-root.")
@click.option("--image-size", type=click.IntRange(min=1), help="Input size (default: the files' metadata).")
@click.option("--mean", type=_CommaList(float), help="Normalisation mean (default: the files' metadata).")
@click.option("--std", type=_CommaList(float), help="Normalisation std (default: the files' metadata).")
@click.option("--eval-size", type=int, help="Evaluate on this many images (default: the whole evaluation split).")
@click.option("--batch-size", default=128, show_default=True, type=int, help="Batch size of the accuracy pass.")
@click.option(
    "--batch",
    "batches",
    type=_CommaList(int),
    default="1,32",
    show_default=True,
    help="Batch sizes to time.",
)
@_timing_options
@click.option("--no-accuracy", "accuracy", flag_value=False, default=True, help="Time only; skip the accuracy pass.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.option("--force", is_flag=True, help="Replace the --report file if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (implies --quiet).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars, log lines or warnings (they stay in the report).")
def bench_command(
    files: tuple[str, ...],
    providers: tuple[str, ...],
    batches: tuple[int, ...],
    latency_runs: int,
    latency_min_seconds: float,
    latency_window_seconds: float,
    warmup: int,
    report_path: str | None,
    force: bool,
    as_json: bool,
    quiet: bool,
    **options,
) -> None:
    """Accuracy and latency of ONNX FILES side by side; the first file is the baseline.

    Every file is timed in the same process, interleaved (A B A B ...), after a warm-up, with inputs
    and outputs bound to the device; speed-ups are against the first file in the same run, and the
    efficiency sets each against the speed-up its MACs promise.
    """
    from .artifacts import OutputFiles
    from .bench_job import BenchSettings, bench_files, check_report_path
    from .benchmark import LatencySettings

    _configure_output(quiet or as_json)
    if report_path is not None:  # before the benchmark, and whatever --force says
        check_report_path(report_path, files)
    settings = BenchSettings(
        providers=providers or None,
        batches=batches,
        latency=LatencySettings(
            warmup=warmup,
            runs=latency_runs,
            min_seconds=latency_min_seconds,
            window_seconds=latency_window_seconds,
        ),
        **options,
    )
    with OutputFiles(force=force) as outputs:
        staged = outputs.stage(report_path) if report_path is not None else None
        report = bench_files(files, settings)
        if staged is not None:
            staged.write_text(json.dumps(report, indent=2) + "\n")
            outputs.commit()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif not quiet:
        click.echo(_bench_table(report))


def _bench_table(report: dict) -> str:
    bench = report["benchmark"]
    lines = []
    for provider in bench["providers"]:
        lines.append(f"onnxruntime {provider}, {bench['threads']} threads, baseline {report['baseline']}")
        head = f"{'file':28s} {'top-1':>7s} {'MACs':>6s}"
        for b in bench["batches"]:
            head += f" {'b' + str(b) + ' median ms':>15s} {'p99':>8s} {'speed-up':>9s} {'effic.':>6s}"
        lines.append(head)
        for v in report["variants"]:
            top1 = f"{v['accuracy']['top1']:.2f}" if v["accuracy"] else "—"
            macs = f"{v['macs_ratio']:.3f}" if v["macs_ratio"] is not None else "—"
            row = f"{v['name'][:28]:28s} {top1:>7s} {macs:>6s}"
            for b in bench["batches"]:
                t, g = v["latency"][provider][f"batch_{b}"], v["speedup"][provider][f"batch_{b}"]
                row += f" {t['median_ms']:15.3f} {t['p99_ms']:8.3f} {g['speedup']:8.2f}x {g['efficiency']:6.2f}"
            lines.append(row)
    return "\n".join(lines)


def run_config_from_args(args: list[str]) -> RunConfig:
    """The configuration `compress run ARGS` would use, for scripts that wrap the pipeline."""
    ctx = run.make_context("run", list(args))
    params = dict(ctx.params)
    for output_flag in ("as_json", "quiet"):
        params.pop(output_flag)
    return _resolve_run_config(ctx, params.pop("config_file"), params.pop("providers"), params)


def _resolve_run_config(
    ctx: click.Context,
    config_file: str | None,
    providers: tuple[str, ...],
    options: dict,
    only: set[str] | None = None,
) -> RunConfig:
    """Defaults, then the --config file (its keys in `only`, when given), then the flags given on the
    command line."""
    from click.core import ParameterSource

    settings = read_config_file(config_file) if config_file else {}
    if only is not None:
        settings = {key: value for key, value in settings.items() if key in only}
    values = {**options, "providers": providers or None}  # no --provider: every available one
    given = {
        name: value
        for name, value in values.items()
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    }
    fields = {**values, **settings, **given}
    explicit = {**settings, **given}
    _warn_ignored(explicit, fields)
    if "ship_criterion" in explicit and explicit["ship_criterion"] not in fields["criteria"]:
        raise ConfigError(
            f"ship criterion {explicit['ship_criterion']!r} is not among the criteria run "
            f"({', '.join(fields['criteria'])}); add it to --criteria"
        )
    config = RunConfig(**fields)
    if config_file:
        _blame_config_file(config, config_file, settings)
    return config


def _blame_config_file(config: RunConfig, config_file: str, settings: dict) -> None:
    """Raise a value check's error with the file's name when the file's `settings` alone (every
    other key at its default) fail it the same way: the fix is in the file, not on the command line."""
    try:
        dataclasses.replace(config).validate()
    except ConfigError as exc:
        try:
            RunConfig(**settings).validate()
        except ConfigError as own:
            if str(own) == str(exc):
                raise ConfigError(f"{config_file}: {exc}") from None


def _warn_ignored(explicit: dict, fields: dict) -> None:
    """Say so when a setting given has no effect with the others (a mistaken plan, not an error). A
    setting at its default says nothing (`compress config show` writes every key)."""
    defaults = RunConfig()
    changed = {key for key, value in explicit.items() if getattr(defaults, key, value) != value}
    if fields.get("finetune_epochs") == 0:
        for key in sorted(changed):
            if key.startswith(("finetune_", "distill_")):
                warnings.warn(f"{_flag(key)} has no effect without --finetune-epochs N (N >= 1)", CompressWarning, 2)
    if fields.get("allocation") == "uniform" and "group_normalisation" in changed:
        warnings.warn("--group-normalisation has no effect with --allocation uniform", CompressWarning, 2)
    from .data import TORCHVISION_DATASETS
    from .zoo import is_import_path

    data = str(fields.get("data", ""))
    if data.lower() not in TORCHVISION_DATASETS:
        for key in sorted(changed & {"download", "data_root"}):
            warnings.warn(
                f"{_flag(key)} has no effect with --data {data}: it is for the data sets torchvision downloads "
                f"({', '.join(TORCHVISION_DATASETS)})",
                CompressWarning,
                2,
            )
    if "trust_code" in changed and not is_import_path(str(fields.get("model", ""))):
        warnings.warn(
            f"--trust-code has no effect with --model {fields.get('model')}: only an import path "
            "(package.module:factory) runs code of yours",
            CompressWarning,
            2,
        )


def _flag(key: str) -> str:
    """The command-line flag of a RunConfig field: finetune_lr -> --finetune-lr."""
    return "--" + key.replace("_", "-")


@cli.group("config")
def config_group() -> None:
    """Configuration files for `compress run`."""


@config_group.command("show")
@click.pass_context
def config_show(ctx: click.Context, **kwargs) -> None:
    """Print the configuration `compress run` would use with these flags, as TOML (--config reads it)."""
    _configure_output(False)  # its warnings read as a run's would
    params = dict(kwargs)
    config = _resolve_run_config(ctx, params.pop("config_file"), params.pop("providers"), params)
    config.validate()
    click.echo(config_to_toml(config), nl=False)


config_show.params.extend(p for p in run.params if p.name not in ("as_json", "quiet"))


@cli.command("models")
def list_models() -> None:
    """List the model names --model accepts."""
    from .zoo import _REGISTRY, available_models

    for name in available_models():
        spec = _REGISTRY.get(name)
        click.echo(f"{name:24s} {spec.description}" if spec else name)
    click.echo("timm:NAME                any timm model (pip install 'compress[timm]'; timm.list_models() names them)")
    click.echo("package.module:factory   your own class or function returning an nn.Module (with --trust-code)")


def _configure_output(quiet: bool) -> None:
    from .progress import set_quiet

    set_quiet(quiet)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("compress: %(message)s"))
    logger = logging.getLogger("compress")  # only our own log lines; libraries stay silent
    logger.handlers[:] = [handler]
    # --quiet hides warnings too: they stay in report.json
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
    logger.propagate = False
    warnings.filterwarnings("ignore")  # third-party deprecation chatter is not the user's concern
    warnings.filterwarnings("always", category=CompressWarning)  # one line each: see collect_warnings


def _summary(report: dict) -> dict:
    provider = report["benchmark"]["providers"][0]
    return {
        "output_dir": report["output_dir"],
        "chosen": report["chosen"],
        "gates": report["gates"],
        "gates_passed": report["gates_passed"],
        "warnings": report["warnings"],
        "variants": [
            {
                "name": v["name"],
                "precision": v["precision"],
                "criterion": v["criterion"],
                "ratio": v["ratio"],
                "seed": v["seed"],
                "top1": v["accuracy"]["top1"],
                "top1_before_recovery": v["accuracy"].get("top1_before_recovery"),
                "top1_before_finetune": v["accuracy"].get("top1_before_finetune"),
                "macs_ratio": v["macs_ratio"],
                "params_ratio": v["params_ratio"],
                "latency_median_ms": {k: t["median_ms"] for k, t in v["latency"][provider].items()},
                "speedup": {k: g["speedup"] for k, g in v["speedup"][provider].items()},
                "efficiency": {k: g["efficiency"] for k, g in v["speedup"][provider].items()},
            }
            for v in report["variants"]
        ],
    }


def _text_summary(report: dict) -> str:
    lines = [f"original top-1 {report['variants'][0]['accuracy']['top1']:.2f}%"]
    if report.get("finetune"):
        tuned = report["finetune"]
        teacher = f", distilled from the original (T={tuned['temperature']:g})" if tuned["teacher"] else ""
        lines.append(
            f"every pruned variant fine-tuned {tuned['epochs']} epochs on {tuned['training_images']} images{teacher}"
        )
    for row in report["summary"]:
        parts = [f"ratio {row['ratio']:.2f}:"]
        for criterion in report["config"]["criteria"]:
            if criterion in row:
                s = row[criterion]["top1"]
                parts.append(f"{criterion} {s['mean']:.2f}" + (f"±{s['std']:.2f}" if s["n"] > 1 else ""))
        lines.append("  ".join(parts))
    accuracy = {v["name"]: v["accuracy"]["top1"] for v in report["variants"]}
    int8 = [
        f"{v['name']} {accuracy[v['name']]:.2f} (fp32 {accuracy[v['parent']]:.2f})"
        for v in report["variants"]
        if v["precision"] == "int8"
    ]
    if int8:
        lines.append("int8: " + ", ".join(int8))
    lines.append(f"shipped {report['chosen']['variant']} as model.onnx: {report['chosen']['reason']}")
    lines.append(f"results in {report['output_dir']}")
    return "\n".join(lines)


def _terminate(signum, frame) -> None:
    """A pipeline's cancel (SIGTERM): remove what this run staged, say so, and exit 130 at once.

    Raising KeyboardInterrupt from here, as Ctrl-C does, lands wherever the main thread happens to be,
    including Python called from C++ (torch's exporter, pybind11 callbacks), where it can abort the
    process (SIGABRT) before any clean-up; removing the staged paths here does not depend on that.
    """
    remove_unfinished()
    sys.stderr.write("compress: interrupted; no results were written\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn failures into exit codes and one-line messages."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def console_main() -> None:
    """The `compress` command and `python -m compress`: exit with `main()`'s code.

    After an interruption the process ends at once with 130. CPython (3.11) remembers a
    KeyboardInterrupt that crossed C code running Python (pybind11, as torch and onnxruntime use)
    even when we caught it, and would turn the clean exit into death by SIGINT (-2); by then the
    staging area is gone and the message is written, so nothing is left to clean up.
    """
    code = main()
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _main(argv: list[str] | None) -> int:
    try:
        with collect_warnings():  # each distinct warning once, as one line
            result = cli.main(args=argv, prog_name="compress", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except _NO_ARGS_IS_HELP as exc:  # `compress` or `compress config` alone: the help, as click shows it
        exc.show()
        return exc.exit_code
    except click.UsageError as exc:  # one line, like every other bad input
        command = exc.ctx.command_path if exc.ctx else "compress"
        click.echo(f"compress: error: {exc.format_message()} (see '{command} --help')", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"compress: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("compress: interrupted; no results were written", err=True)
        return EXIT_INTERRUPTED
    except CompressError as exc:
        if _state["debug"]:
            traceback.print_exc()
        click.echo(f"compress: error: {exc}", err=True)
        return exc.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
