"""`compress run`: load -> calibrate and score -> prune -> recover -> export -> benchmark -> report.

Each stage is a plain function of its own module; this one only chains them, collects the numbers
into the report and decides which variant ships as model.onnx.

Under torchrun every process runs every stage on its shard of the data (calibration statistics,
fine-tuning and accuracy counts are summed across processes, see distributed.py), so all of them
hold the same variants; only rank 0 times latency and writes the output directory.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .agreement import recalibrated_agreement
from .artifacts import OutputDir, check_output_dir, disk_errors, environment, scratch_directory
from .benchmark import LatencySettings, make_session, onnx_hits, resolve_providers, run_batched, time_providers
from .causal.scorer import CausalScorer
from .causal.total_effect import TotalEffectScorer
from .config import RunConfig
from .criteria import Scorer, make_scorer
from .data import DataSplits, load_splits, make_loader
from .distributed import SINGLE, Distributed, distributed_from_env
from .errors import CompressWarning, collect_warnings
from .evaluation import evaluate_sharded, percentages
from .export import PARITY_IMAGES, ExportCache, check_parity, export_onnx
from .gates import check_gates
from .onnx_info import preprocessing_metadata
from .plans import FidelityFn, PruningPlan, execute_plan
from .progress import progress, set_quiet
from .pruning import count_macs_params, layer_widths, output_layer_names
from .quantize import quantize_int8
from .recovery import recalibrate_batchnorm
from .report import summarise_by_ratio, write_plots, write_report_md
from .serialization import save_importances, save_pruned
from .targets import TargetSearch, global_macs_target, search_macs_ratio, search_speedup
from .training import train
from .zoo import LoadedModel, check_model_accepts, get_spec, load_model

log = logging.getLogger("compress")

REPORT_SCHEMA = "compress.report/1"


@dataclass
class _Inputs:
    """What every stage after loading works from."""

    splits: DataSplits
    loaded: LoadedModel
    example: torch.Tensor  # real calibration images: tracing and validation
    eval_images: torch.Tensor  # real evaluation images: parity and latency
    protected: list[str]  # output layers, never pruned
    providers: list[str]
    distributed: Distributed

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    def accuracy(self, model: nn.Module, batch_size: int, desc: str) -> dict[str, float]:
        """PyTorch top-1/top-5 on the evaluation split, counted over every process's shard."""
        return evaluate_sharded(model, self.splits.evaluation, batch_size, self.distributed, desc=desc)

    def onnx_accuracy(self, session, batch_size: int, desc: str) -> dict[str, float]:
        """onnxruntime top-1/top-5 on the evaluation split, counted over every process's shard."""
        shard = make_loader(self.distributed.shard(self.splits.evaluation), batch_size)
        return percentages(self.distributed.sum_counts(onnx_hits(session, shard, desc)))


@dataclass
class _Variants:
    records: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, Any] = field(default_factory=dict)  # name -> onnxruntime session
    shippable: dict[str, tuple[nn.Module, list]] = field(default_factory=dict)  # name -> (model, history)
    exports: ExportCache = field(default_factory=ExportCache)  # variants of one shape share a translation


def plan_variants(config: RunConfig, targets: Mapping[str, TargetSearch] | None = None) -> list[PruningPlan]:
    """Every pruning plan of the run, grouped by amount so tables read naturally: each criterion (each
    random seed) at each amount, and at the amount a target search found for it."""
    targets = targets or {}
    amounts = sorted({*config.ratios, *(t.ratio for t in targets.values())})
    plans = []
    for amount in amounts:
        for criterion in config.criteria:
            if amount not in config.ratios and targets[criterion].ratio != amount:
                continue  # another criterion's target (a speed-up search with global allocation: one each)
            seeds = config.random_seed_list() if criterion == "random" else [None]
            plans.extend(PruningPlan(criterion, amount, config.allocation, config.steps, seed) for seed in seeds)
    return plans


def run(config: RunConfig) -> dict[str, Any] | None:
    """Run the whole pipeline; the results land in `config.out` only if every stage succeeded.

    Returns the report; under torchrun, on processes other than rank 0, None (rank 0 writes).
    """
    config.validate()
    with distributed_from_env() as distributed, collect_warnings() as warned:
        report = _run(config, distributed, warned)
        distributed.barrier()  # the other processes wait until rank 0 has written everything
    return report


def _run(config: RunConfig, distributed: Distributed, warned: list[str]) -> dict[str, Any] | None:
    if not distributed.is_main:  # one voice: rank 0 logs, shows progress and warns
        set_quiet(True)
        log.setLevel(logging.WARNING)
        warnings.simplefilter("ignore", CompressWarning)
    with _output_dir(config, distributed) as out:
        torch.manual_seed(config.seed)
        inputs = load_inputs(config, distributed)
        scorers = _score(config, inputs)
        fidelity = _fidelity(config, inputs)
        targets = _search_targets(config, inputs, scorers, fidelity)
        variants = _build_variants(config, inputs, scorers, out, targets, fidelity)
        if config.int8:
            _add_int8_variants(config, inputs, variants, out)
        if not distributed.is_main:
            return None
        latency = _measure_latency(config, inputs, variants, out)
        target = targets[config.ship_criterion] if targets else None
        report = _assemble_report(config, inputs, scorers, variants, latency, target, targets)
        report["warnings"] = warned  # every distinct warning of the run, shown once each as it came
        _write_outputs(out, report, variants, scorers, inputs)
        out.write_manifest(
            {
                "schema": "compress.manifest/1",
                "compress_version": __version__,
                "config": config.to_dict(),
                "seeds": report["seeds"],
                "input_model": {"weights": report["model"]["weights"], "sha256": report["model"]["weights_sha256"]},
                "environment": report["environment"],
            }
        )
        report["output_dir"] = str(out.commit())
    return report


@contextlib.contextmanager
def _output_dir(config: RunConfig, distributed: Distributed) -> Iterator[OutputDir]:
    """The staged output directory on rank 0; a scratch one, removed afterwards, on the others
    (their exported files only serve their share of the ONNX accuracy)."""
    if distributed.is_main:
        with OutputDir(config.out, force=config.force, inputs=(config.weights, config.data)) as out:
            yield out
        return
    # fail like rank 0 rather than wait for it
    check_output_dir(config.out, config.force, (config.weights, config.data))
    with (
        scratch_directory(f"compress-rank{distributed.rank}-") as scratch,
        OutputDir(Path(scratch) / "out") as out,
    ):
        yield out


def load_inputs(config: RunConfig, distributed: Distributed | None = None) -> _Inputs:
    """Load the data and the model of `config`, check they fit, and find the layers never pruned."""
    spec = get_spec(config.model, trust_code=config.trust_code)
    splits = load_splits(config, spec.input_size, spec.mean, spec.std, spec.channels_known)
    log.info(
        "data: %s (%d calibration, %d evaluation images, %d classes)",
        splits.info["source"],
        len(splits.calibration),
        len(splits.evaluation),
        splits.num_classes,
    )
    loaded = load_model(spec, config.weights, splits.num_classes, trust_checkpoint=config.trust_checkpoint)
    example = splits.example_batch(16)
    check_model_accepts(loaded.model, example, splits.num_classes)
    protected = output_layer_names(loaded.model, example)
    log.info("model: %s, output layer %s kept whole", spec.name, ", ".join(protected))
    return _Inputs(
        splits=splits,
        loaded=loaded,
        example=example,
        eval_images=splits.evaluation_batch(max(config.latency_batch, PARITY_IMAGES)),
        protected=protected,
        providers=resolve_providers(config.providers),
        distributed=distributed or SINGLE,
    )


def _score(config: RunConfig, inputs: _Inputs) -> dict[str, Scorer]:
    """Fit every criterion of the run on the original model (random: its first seed)."""
    scorers = {}
    for criterion in config.criteria:
        scorer = _fit(config, inputs, criterion, inputs.model, config.seed)
        log.info("%s scores: %d groups, %.1f s", criterion, len(scorer.importances_), scorer.fit_seconds_)
        scorers[criterion] = scorer
    return scorers


def _fit(config: RunConfig, inputs: _Inputs, criterion: str, model: nn.Module, seed: int | None) -> Scorer:
    """`criterion`'s scorer fitted on `model` with the calibration images.

    In a distributed run the causal scorers work on each process's shard and sum their statistics
    (the total effects: each process takes its share of `effect_images`, and the shards interleave,
    so together they see the same first images as one process); the other scorers are not sums of
    statistics and run whole on every process (they are deterministic, so every process gets the
    same scores).
    """
    scorer = make_scorer(
        criterion,
        ridge=config.ridge,
        pool_grid=config.pool_grid,
        intervention_images=config.intervention_images,
        effect_images=-(-config.effect_images // inputs.distributed.world_size),
        seed=config.seed if seed is None else seed,
    )
    if isinstance(scorer, CausalScorer | TotalEffectScorer):
        shard = make_loader(inputs.distributed.shard(inputs.splits.calibration), config.batch_size)
        scorer.collect(model, shard, inputs.example)
        if isinstance(scorer, TotalEffectScorer):
            return scorer.solve(inputs.distributed.all_reduce_sum)
        return scorer.reduce_statistics(inputs.distributed.all_reduce_sum).solve()
    return scorer.fit(model, inputs.splits.loader("calibration", config.batch_size), inputs.example)


def _fidelity(config: RunConfig, inputs: _Inputs) -> FidelityFn | None:
    """Auto allocation's measure of a pruned candidate (None for the other allocations): its top-1
    agreement with the original on the calibration images, after the recovery the variants get."""
    if config.allocation != "auto":
        return None
    calibration = inputs.splits.loader("calibration", config.batch_size)
    return recalibrated_agreement(inputs.model, calibration, config.recalibrate).score


def _search_targets(
    config: RunConfig, inputs: _Inputs, scorers: dict[str, Scorer], fidelity: FidelityFn | None
) -> dict[str, TargetSearch] | None:
    """The pruning amount that meets --target-macs-ratio or --target-speedup, by criterion (one search
    for all with uniform allocation, whose shapes do not depend on the scores); rank 0 searches (the
    speed-up is timed there) and tells the other processes."""
    if config.target_macs_ratio is None and config.target_speedup is None:
        return None
    found = None
    if inputs.distributed.is_main:
        if config.allocation == "uniform":
            search = _search_target(config, inputs, None, None)
            found = dict.fromkeys(config.criteria, search)
        else:
            found = {c: _search_target(config, inputs, c, scorers[c], fidelity) for c in config.criteria}
    return inputs.distributed.broadcast_object(found)


def _search_target(
    config: RunConfig,
    inputs: _Inputs,
    criterion: str | None,
    scorer: Scorer | None,
    fidelity: FidelityFn | None = None,
) -> TargetSearch:
    shape = None
    if scorer is not None:  # global or auto allocation: the criterion's own shapes, one step

        def shape(amount: float) -> nn.Module:
            plan = PruningPlan(criterion, amount, config.allocation)  # its criterion: its normalisation
            settings = _pruning_settings(config, inputs)
            return execute_plan(
                inputs.model, plan, lambda m: scorer, inputs.example, **settings, scorer=scorer, fidelity=fidelity
            ).model

    common = {"protected": inputs.protected, "round_to": config.round_to, "shape": shape}
    if config.target_macs_ratio is not None and shape is not None:
        return global_macs_target(inputs.model, inputs.example, config.target_macs_ratio, shape)
    if config.target_macs_ratio is not None:
        return search_macs_ratio(inputs.model, inputs.example, config.target_macs_ratio, **common)
    images = inputs.eval_images[: config.latency_batch].numpy()
    return search_speedup(
        inputs.model,
        inputs.example,
        images,
        config.target_speedup,
        provider=inputs.providers[0],
        threads=config.threads,
        **common,
    )


def _pruning_settings(config: RunConfig, inputs: _Inputs) -> dict[str, Any]:
    return {
        "protected": inputs.protected,
        "round_to": config.round_to,
        "max_fraction": config.max_group_ratio,
        "normalise": config.group_normalisation,
    }


def _build_variants(
    config: RunConfig,
    inputs: _Inputs,
    scorers: dict[str, Scorer],
    out: OutputDir,
    targets: Mapping[str, TargetSearch] | None,
    fidelity: FidelityFn | None = None,
) -> _Variants:
    """The original and every planned variant: pruned, recovered, fine-tuned if asked, exported,
    checked and evaluated."""
    if fidelity is not None:  # every process must choose as rank 0 does, or their models would differ
        fidelity = functools.partial(_rank0_fidelity, fidelity, inputs.distributed)
    # Batch norm is re-estimated on all the calibration images in every process (cheap), so the
    # processes' models stay equal without exchanging running statistics.
    calibration = inputs.splits.loader("calibration", config.batch_size)
    variants = _Variants()

    # The original is not pruned, so it has no accuracy before recovery: its ONNX accuracy is all.
    original = _finish_variant("original", inputs.model, config, inputs, out, variants)
    original.update(criterion=None, ratio=0.0, seed=None, kept_unpruned={}, channel_ratio=1.0)

    for planned in progress(plan_variants(config, targets), desc="variants", unit="variant"):
        first = scorers[planned.criterion]
        if planned.seed is not None and planned.seed != config.seed:  # another random seed
            first = _fit(config, inputs, planned.criterion, inputs.model, planned.seed)
        pruned = execute_plan(
            inputs.model,
            planned,
            lambda m, p=planned: _fit(config, inputs, p.criterion, m, p.seed),
            inputs.example,
            **_pruning_settings(config, inputs),
            recalibrate=lambda m: recalibrate_batchnorm(m, calibration),
            scorer=first,
            fidelity=fidelity,
        )
        before = _accuracy_now(pruned.model, planned.name, config, inputs, variants)
        if config.recalibrate:
            recalibrate_batchnorm(pruned.model, calibration)
        finetune = _finetune(planned.name, pruned.model, config, inputs, variants) if config.finetune_epochs else None
        record = _finish_variant(planned.name, pruned.model, config, inputs, out, variants)
        record.update(
            criterion=planned.criterion,
            ratio=planned.amount,
            seed=planned.seed,
            kept_unpruned=pruned.kept_unpruned,
            prune_seconds=round(pruned.seconds, 3),
            macs_ratio=record["macs"] / original["macs"],
            params_ratio=record["params"] / original["params"],
            channel_ratio=_channel_ratio(record["widths"], original["widths"], inputs.protected),
        )
        if pruned.allocation_choices:
            record["allocation_choices"] = pruned.allocation_choices
        record["accuracy"].update(top1_before_recovery=before["top1"], top5_before_recovery=before["top5"])
        if finetune is not None:
            before_finetune, record["finetune"] = finetune
            record["accuracy"].update(
                top1_before_finetune=before_finetune["top1"], top5_before_finetune=before_finetune["top5"]
            )
        if planned.criterion == config.ship_criterion:
            variants.shippable[planned.name] = (pruned.model, pruned.history)
        log.info(
            "%-16s top-1 %.2f%% (before recovery %.2f%%), MACs x%.2f",
            planned.name,
            record["accuracy"]["top1"],
            before["top1"],
            record["macs_ratio"],
        )
    return variants


def _rank0_fidelity(fidelity: FidelityFn, distributed: Distributed, model: nn.Module) -> float:
    return distributed.broadcast_object(fidelity(model))


def _finetune(
    name: str, model: nn.Module, config: RunConfig, inputs: _Inputs, variants: _Variants
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fine-tune the pruned `model` in place (the original only teaches): its accuracy before, and
    how the training went."""
    before = _accuracy_now(model, name, config, inputs, variants)
    teacher = inputs.model if config.distill else None
    result = train(
        model,
        inputs.splits.training,
        config.train_settings(),
        teacher=teacher,
        distributed=inputs.distributed,
        desc=f"fine-tuning {name}",
    )
    log.info("%-16s fine-tuned %d epochs in %.0f s", name, config.finetune_epochs, result.seconds)
    return before, {
        "epochs": result.epochs,
        "images_per_epoch": result.images_per_epoch,
        "seconds": round(result.seconds, 3),
        "device": result.device,
        "world_size": result.world_size,
    }


def _accuracy_now(
    model: nn.Module, name: str, config: RunConfig, inputs: _Inputs, variants: _Variants
) -> dict[str, float]:
    """Top-1/top-5 of `model` as it is now (before recovery, before fine-tuning), with onnxruntime:
    a file of this shape is exported anyway, so the translation is shared (ExportCache) and
    onnxruntime evaluates the images 2-3 times faster than PyTorch."""
    with scratch_directory("compress-interim-") as scratch:
        path = export_onnx(
            model,
            inputs.example,
            Path(scratch) / "interim.onnx",
            opset=config.opset,
            exporter=config.exporter,
            cache=variants.exports,
        ).path
        session = make_session(path, "cpu", config.threads)
        return inputs.onnx_accuracy(session, config.batch_size, desc=f"{name} accuracy")


def _finish_variant(
    name: str,
    model: nn.Module,
    config: RunConfig,
    inputs: _Inputs,
    out: OutputDir,
    variants: _Variants,
) -> dict[str, Any]:
    """Export one variant, check it against PyTorch, measure its accuracy with onnxruntime, record it."""
    relative = f"onnx/{name}.onnx"
    path = out.path(relative)
    splits = inputs.splits
    metadata = preprocessing_metadata(
        splits.input_size, splits.mean, splits.std, model=inputs.loaded.spec.name, variant=name
    )
    with disk_errors(path):
        exported = export_onnx(
            model,
            inputs.example,
            path,
            opset=config.opset,
            exporter=config.exporter,
            metadata=metadata,
            cache=variants.exports,
        )
    if exported.fallback_reason:
        reason = f"exported with the {exported.exporter} exporter ({exported.fallback_reason})"
        warnings.warn(reason, CompressWarning, stacklevel=1)
    session = make_session(path, inputs.providers[0], config.threads)
    parity = check_parity(session, model, inputs.eval_images[:PARITY_IMAGES], tolerance=config.parity_tolerance)
    accuracy = inputs.onnx_accuracy(session, config.batch_size, desc=f"{name} onnx accuracy")
    macs, params = count_macs_params(model, inputs.example)
    record = {
        "name": name,
        "precision": "fp32",
        "onnx": relative,
        "macs": macs,
        "params": params,
        "macs_ratio": 1.0,
        "params_ratio": 1.0,
        "onnx_params": exported.onnx_params,
        "onnx_bytes": path.stat().st_size,
        "widths": layer_widths(model),
        "accuracy": {"top1": accuracy["top1"], "top5": accuracy["top5"], "runtime": "onnxruntime"},
        "parity": parity.as_dict(),
        "export": {"exporter": exported.exporter, "opset": exported.opset, "seconds": round(exported.seconds, 3)},
        "latency": {},
    }
    variants.records.append(record)
    variants.sessions[name] = session
    return record


def _add_int8_variants(config: RunConfig, inputs: _Inputs, variants: _Variants, out: OutputDir) -> None:
    """An INT8 (static, QDQ, per-channel) twin of the original and of every ship-criterion variant,
    calibrated on the calibration images; accuracy and parity are measured against the fp32 parent."""
    calibration = inputs.splits.loader("calibration", config.batch_size)
    models = {"original": inputs.model, **{name: model for name, (model, _) in variants.shippable.items()}}
    parents = [r for r in variants.records if r["name"] in models]
    for parent in progress(parents, desc="int8", unit="variant"):
        name = f"{parent['name']}-int8"
        relative = f"onnx/{name}.onnx"
        path = out.path(relative)
        with disk_errors(path):
            quantised = quantize_int8(out.path(parent["onnx"]), path, calibration, max_images=config.int8_images)
        session = make_session(path, inputs.providers[0], config.threads)
        model = models[parent["name"]]
        parity = check_parity(session, model, inputs.eval_images[:PARITY_IMAGES])  # reported, not gated
        with torch.no_grad():
            agree = (
                run_batched(session, inputs.eval_images.numpy()).argmax(1)
                == model.eval()(inputs.eval_images).numpy().argmax(1)
            ).mean()
        accuracy = inputs.onnx_accuracy(session, config.batch_size, desc=f"{name} onnx accuracy")
        record = {
            **{k: parent[k] for k in ("criterion", "ratio", "seed", "kept_unpruned", "channel_ratio", "widths")},
            **{k: parent[k] for k in ("macs", "params", "macs_ratio", "params_ratio")},
            "name": name,
            "precision": "int8",
            "parent": parent["name"],
            "onnx": relative,
            "onnx_params": parent["onnx_params"],
            "onnx_bytes": path.stat().st_size,
            "accuracy": {
                "top1": accuracy["top1"],
                "top5": accuracy["top5"],
                "runtime": "onnxruntime",
                "top1_drop_from_parent": parent["accuracy"]["top1"] - accuracy["top1"],
            },
            "parity": {
                **parity.as_dict(),
                "top1_agreement": float(agree),
                "agreement_images": len(inputs.eval_images),
                "against": f"{parent['name']} (PyTorch fp32)",
            },
            "quantization": {
                "format": "QDQ",
                "weights": "int8 per-channel" if quantised.per_channel else "int8 per-tensor",
                "activations": "uint8",
                "reduce_range": quantised.reduce_range,
                "calibration": quantised.method,
                "calibration_images": quantised.calibration_images,
                "seconds": round(quantised.seconds, 3),
            },
            "latency": {},
        }
        variants.records.append(record)
        variants.sessions[name] = session
        log.info("%-16s top-1 %.2f%% (fp32 parent %.2f%%)", name, accuracy["top1"], parent["accuracy"]["top1"])


@dataclass
class _Latency:
    settings: LatencySettings
    batches: list[int]
    order: dict[str, list[str]]  # provider -> the first timed slices, showing the interleaving


def _measure_latency(config: RunConfig, inputs: _Inputs, variants: _Variants, out: OutputDir) -> _Latency:
    """Time every variant on every provider, interleaved, at batch 1 and the larger batch; record the
    measured speed-up over the original and its efficiency against the MACs saved."""
    settings = LatencySettings(
        warmup=config.warmup,
        runs=config.latency_runs,
        min_seconds=config.latency_min_seconds,
        window_seconds=config.latency_window_seconds,
    )
    batches = {b: inputs.eval_images[:b].numpy() for b in sorted({1, config.latency_batch})}
    timed = time_providers(
        {v["name"]: out.path(v["onnx"]) for v in variants.records},
        batches,
        settings,
        inputs.providers,
        macs={r["name"]: r["macs"] for r in variants.records},
        baseline="original",
        threads=config.threads,
        sessions=variants.sessions,
    )
    for provider, timing in timed.items():
        for record in variants.records:
            record["latency"][provider] = timing.latency[record["name"]]
            record.setdefault("speedup", {})[provider] = timing.speedup[record["name"]]
    return _Latency(settings, sorted(batches), {provider: timing.order for provider, timing in timed.items()})


def _assemble_report(
    config: RunConfig,
    inputs: _Inputs,
    scorers: dict[str, Scorer],
    variants: _Variants,
    latency: _Latency,
    target: TargetSearch | None,
    targets: Mapping[str, TargetSearch] | None,
) -> dict[str, Any]:
    splits, loaded, records = inputs.splits, inputs.loaded, variants.records
    settings = latency.settings
    chosen = choose_variant(records, config, target)
    gates = check_gates(config, records, chosen["variant"], inputs.providers[0])
    session = next(iter(variants.sessions.values()))
    return {
        "schema": REPORT_SCHEMA,
        "compress_version": __version__,
        "model": {
            "name": loaded.spec.name,
            "source": loaded.spec.source,
            "weights": loaded.weights,
            "weights_sha256": loaded.weights_sha256,
            "num_classes": loaded.num_classes,
            "input_size": list(splits.input_size),
            "output_layers": inputs.protected,
            "macs": records[0]["macs"],
            "params": records[0]["params"],
        },
        "data": {
            **splits.info,
            "num_classes": splits.num_classes,
            "input_size": list(splits.input_size),
            "mean": list(splits.mean),
            "std": list(splits.std),
        },
        "scoring": {criterion: _scoring_record(criterion, s, config) for criterion, s in scorers.items()},
        "finetune": _finetune_record(config, splits),
        "distributed": inputs.distributed.as_dict(),
        "benchmark": {
            "providers": inputs.providers,
            "threads": int(session.get_session_options().intra_op_num_threads),
            "latency_batches": latency.batches,
            "warmup": settings.warmup,
            "runs": settings.runs,
            "min_seconds": settings.min_seconds,
            "window_seconds": settings.window_seconds,
            "rounds": settings.rounds,
            "slice_seconds": settings.slice_seconds,
            "interleaved": True,
            "run_order": latency.order,
            "io_binding": True,
            "graph_optimization": "all",
            "parity_images": PARITY_IMAGES,
            "parity_tolerance": config.parity_tolerance,
            "speedup": "original median / variant median, same run; efficiency = speedup / (original MACs / MACs)",
        },
        "seeds": {
            "seed": config.seed,
            "random_baselines": config.random_seed_list() if "random" in config.criteria else [],
        },
        "config": config.to_dict(),
        "environment": environment(),
        "variants": records,
        "summary": summarise_by_ratio(records, config.criteria),
        "chosen": chosen,
        "target": target.as_dict() if target else None,
        # with global allocation each criterion has its own target record (a speed-up search is its own)
        "targets": {c: t.as_dict() for c, t in targets.items()} if targets and config.allocation != "uniform" else None,
        "gates": gates,
        "gates_passed": all(g["passed"] for g in gates),
    }


def _finetune_record(config: RunConfig, splits: DataSplits) -> dict[str, Any] | None:
    """The fine-tuning every pruned variant got (the same for all, random baselines included)."""
    if not config.finetune_epochs:
        return None
    return {
        **config.train_settings().as_dict(),
        "teacher": "original" if config.distill else None,
        "training_images": len(splits.training),
        "applies_to": "every pruned variant, random baselines included (the original is not fine-tuned)",
    }


def _scoring_record(criterion: str, scorer: Scorer, config: RunConfig) -> dict[str, Any]:
    record: dict[str, Any] = {
        "calibration_images": scorer.n_images_,
        "groups": {root: len(v) for root, v in scorer.importances_.items()},
        "seconds": round(scorer.fit_seconds_, 3),
    }
    if isinstance(scorer, CausalScorer):
        record.update(ridge=config.ridge, pool_grid=config.pool_grid, consumer_layers=len(scorer.graph_.consumers))
    elif isinstance(scorer, TotalEffectScorer):
        record.update(effect_images=config.effect_images, consumer_layers=len(scorer.graph_.consumers))
    return record


def _channel_ratio(widths: dict[str, int], base: dict[str, int], protected: list[str]) -> float:
    """Fraction of the prunable layers' output channels that were kept."""
    names = [n for n in base if n not in protected]
    return sum(widths[n] for n in names) / max(1, sum(base[n] for n in names))


def choose_variant(
    variants: list[dict[str, Any]], config: RunConfig, target: TargetSearch | None = None
) -> dict[str, Any]:
    """The ship criterion's variant at the ratio a target search found, if there was one; else its
    most pruned variant within `accuracy_tolerance` points of the original.

    If none is within tolerance, the least pruned one ships, and the reason says so.
    """
    original = variants[0]["accuracy"]["top1"]
    candidates = [v for v in variants if v["criterion"] == config.ship_criterion and v["precision"] == "fp32"]
    good = [v for v in candidates if v["accuracy"]["top1"] >= original - config.accuracy_tolerance]
    if target is not None:
        pick = next(v for v in candidates if v["ratio"] == target.ratio)
        what = "MACs ratio" if target.kind == "macs_ratio" else "measured speed-up"
        if target.reached and not target.searched:
            found = f"{config.allocation} allocation removed {target.ratio:g} of the MACs ({what} {target.value:.3f})"
        elif target.reached:
            found = f"{target.ratio:g} is the smallest pruning ratio that reaches it ({what} {target.value:.3f})"
        else:
            found = f"not reached: even pruning ratio {target.ratio:g} gave {what} {target.value:.3f}"
        reason = (
            f"target {what} {target.target:g}: {found}; top-1 {pick['accuracy']['top1']:.2f}% against the "
            f"original's {original:.2f}%"
        )
    elif good:
        pick = max(good, key=lambda v: v["ratio"])
        reason = (
            f"largest {config.ship_criterion} pruning ratio whose top-1 accuracy "
            f"({pick['accuracy']['top1']:.2f}%) is within {config.accuracy_tolerance:g} points of the "
            f"original ({original:.2f}%)"
        )
    else:
        pick = min(candidates, key=lambda v: v["ratio"])
        reason = (
            f"no {config.ship_criterion} variant is within {config.accuracy_tolerance:g} points of the "
            f"original ({original:.2f}%); shipping the least pruned one ({pick['accuracy']['top1']:.2f}%)"
        )
    if config.ship_int8:
        pick, reason = _prefer_int8_twin(variants, pick, reason, original, config.accuracy_tolerance)
    return {
        "variant": pick["name"],
        "file": "model.onnx",
        "pruned_weights": "pruned.pt",
        "reason": reason,
        "within_tolerance": bool(pick["accuracy"]["top1"] >= original - config.accuracy_tolerance),
    }


def _prefer_int8_twin(
    variants: list[dict[str, Any]], pick: dict[str, Any], reason: str, original: float, tolerance: float
) -> tuple[dict[str, Any], str]:
    """--ship-int8: the INT8 twin of `pick` instead, when its top-1 is within `tolerance` of the original."""
    twin = next((v for v in variants if v.get("parent") == pick["name"]), None)
    if twin is None:
        return pick, reason
    top1 = twin["accuracy"]["top1"]
    if top1 >= original - tolerance:
        return twin, f"{reason}; its INT8 twin ({top1:.2f}%) is within {tolerance:g} points of the original and ships"
    return pick, f"{reason}; its INT8 twin ({top1:.2f}%) is not within {tolerance:g} points of the original"


def _write_outputs(
    out: OutputDir, report: dict[str, Any], variants: _Variants, scorers: dict[str, Scorer], inputs: _Inputs
) -> None:
    chosen = report["chosen"]["variant"]
    record = next(v for v in report["variants"] if v["name"] == chosen)
    with disk_errors(out.path("model.onnx")):
        shutil.copyfile(out.path(record["onnx"]), out.path("model.onnx"))
    if record["precision"] == "int8":  # --ship-int8: pruned.pt holds the fp32 parent PyTorch can run
        record = next(v for v in report["variants"] if v["name"] == record["parent"])
    model, history = variants.shippable[record["name"]]
    splits = inputs.splits
    save_pruned(
        out.path("pruned.pt"),
        model,
        history,
        inputs.loaded.spec.name,
        inputs.loaded.num_classes,
        splits.input_size,
        splits.mean,
        splits.std,
        record,
    )
    if scorers:
        save_importances(out.path("importances.npz"), scorers)
    report["files"] = {
        "model": "model.onnx",
        "pruned": "pruned.pt",
        "report": "report.json",
        "summary": "report.md",
        "importances": "importances.npz" if scorers else None,
        "plots": write_plots(report, out.path),
        "manifest": "manifest.json",
    }
    out.write_json("report.json", report)
    out.write_text("report.md", write_report_md(report))
