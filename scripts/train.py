"""Train a model of the zoo from scratch and write its checkpoint and model card.

    python scripts/train.py --model cifar_resnet20 --data ../shared/data/cifar10 --epochs 10 \\
        --out models/cifar_resnet20.pt

The model trains on every training image of --data (for an image folder with train/ and test/: all
of train/) and is evaluated on the evaluation split (test/). The checkpoint is a plain state dict
(loads with weights_only=True: `compress run --model cifar_resnet20 --weights models/cifar_resnet20.pt`),
normalised with the model's registered mean/std so `compress` feeds it correctly by default. The
model card beside it (same name, .md) records data, recipe, seed, accuracy and this command.

Runs under torchrun too (`torchrun --nproc-per-node N scripts/train.py ...`): DistributedDataParallel,
--batch-size is the global batch. On a GPU the loop runs there.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import heldout_models  # registers the held-out architectures by name
import torch
from torch.utils.data import ConcatDataset

from compress.artifacts import OutputFiles, sha256
from compress.data import load_data
from compress.distributed import distributed_from_env
from compress.errors import CompressError
from compress.evaluation import evaluate_sharded
from compress.training import SCHEDULES, TrainSettings, resolve_augment, train
from compress.zoo import get_spec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="cifar_resnet20",
        help="a compress model name (compress models), or one of scripts/heldout_models.py's",
    )
    parser.add_argument("--data", default="../shared/data/cifar10", help="image folder with train/ and test/")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", default="models/cifar_resnet20.pt", help="checkpoint; the card goes beside it")
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint and card")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = get_spec(args.model)
    out = Path(args.out)
    with distributed_from_env() as distributed, OutputFiles(force=args.force) as files:
        if distributed.is_main:  # an existing checkpoint is refused before the training, not after it
            checkpoint, card = files.stage(out), files.stage(out.with_suffix(".md"))
        # Calibration plays no part here: it takes one image and the training split the rest, so
        # together they are the whole training portion of the data.
        splits = load_data(
            args.data,
            input_size=spec.input_size,
            mean=spec.mean,
            std=spec.std,
            calibration_size=1,
            seed=args.seed,
            training=True,
        )
        images = ConcatDataset([splits.calibration, splits.training])
        model = spec.build(splits.num_classes)
        settings = TrainSettings(
            epochs=args.epochs,
            lr=args.lr,
            schedule=args.schedule,
            batch_size=args.batch_size,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            seed=args.seed,
        )
        result = train(model, images, settings, distributed=distributed, desc=f"training {args.model}")
        accuracy = evaluate_sharded(model, splits.evaluation, 512, distributed)
        if not distributed.is_main:
            return 0
        print(f"top-1 {accuracy['top1']:.2f}%  top-5 {accuracy['top5']:.2f}%  ({len(splits.evaluation)} images)")
        torch.save(model.state_dict(), checkpoint)
        text = model_card(args, spec, model, splits, len(images), settings, result, accuracy, sha256(checkpoint))
        card.write_text(text)
        files.commit()
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def model_card(args, spec, model, splits, n_train, settings, result, accuracy, digest) -> str:
    command = "python scripts/train.py " + shlex.join(sys.argv[1:])
    augment = resolve_augment(settings.augment, spec.input_size[0])
    rows = {
        "file": f"`{Path(args.out).name}` (a plain state dict; loads with `weights_only=True`)",
        "architecture": f"`{spec.name}`: {spec.description}",
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "data": f"{splits.info.get('root', args.data)}: trained on all {n_train} images of its training part "
        f"(train/ for an image folder), evaluated on the {len(splits.evaluation)} of its evaluation part (test/)",
        "preprocessing": f"resize to {spec.input_size[1]}x{spec.input_size[2]}, normalise with mean "
        f"{list(spec.mean)}, std {list(spec.std)} (the registered model's)",
        "recipe": f"{settings.epochs} epochs, SGD (momentum {settings.momentum}, Nesterov), lr {settings.lr} with a "
        f"{settings.schedule} schedule per step, batch {settings.batch_size}, weight decay {settings.weight_decay} "
        f"(not on biases and batch-norm), label smoothing {settings.label_smoothing}, augmentation {augment} "
        "(random crops with 1/8-side padding; flips for colour images)",
        "seed": str(settings.seed),
        "accuracy": f"**top-1 {accuracy['top1']:.2f}%**, top-5 {accuracy['top5']:.2f}% on the evaluation split",
        "training time": f"{result.seconds / 60:.1f} min on {result.world_size} process(es), device {result.device}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}",
        "sha256": f"`{digest}`",
    }
    table = "\n".join(f"| {key} | {value} |" for key, value in rows.items())
    losses = ", ".join(f"{e['loss']:.3f}" for e in result.epochs)
    if spec.name in heldout_models.HELDOUT:  # a benchmark fixture: the zoo, so `compress run`, does not know it
        use = f"python scripts/bench_criteria.py --models {spec.name}={args.out} --targets 1.3,1.5,2,3"
    else:
        use = f"compress run --model {spec.name} --weights {args.out} --data {args.data}"
    return f"""# {spec.name}: {spec.description}

Trained from scratch by this project with `scripts/train.py`; a plain state dict, loadable with
`weights_only=True`:

```bash
{use}
```

| | |
|---|---|
{table}

Command:

```bash
{command}
```

Per-epoch mean training loss: {losses}.
"""


def cli(argv: list[str] | None = None) -> int:
    """`main`, with a user's mistake (missing data, an existing checkpoint) as one line and exit 2."""
    try:
        return main(argv)
    except CompressError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(cli())
