"""Train the embedded default checkpoint, models/digits_cnn.pt, and write its model card.

    python scripts/train_digits.py            # ~1 minute on 2 CPU cores, bit-for-bit repeatable

Data: scikit-learn's bundled digits (1,797 8x8 images), the fixed stratified 70/30 split of
compress.data.digits_arrays; training uses only the 70% part. Deterministic: one thread, seeded
augmentation, deterministic algorithms.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compress.artifacts import sha256
from compress.data import digits_arrays, normalize
from compress.evaluation import accuracy
from compress.zoo import DIGITS_MEAN, DIGITS_STD, DigitsCNN

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"  # the source of compress.checkpoints

RECIPE = {
    "epochs": 40,
    "batch_size": 64,
    "optimizer": "SGD, momentum 0.9, nesterov",
    "lr": 0.05,
    "schedule": "cosine to 0",
    "weight_decay": 5e-4,
    "label_smoothing": 0.05,
    "augmentation": "random shift of up to 1 pixel (zero padding)",
}


def shift_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel in each direction."""
    padded = F.pad(x, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (x.shape[0], 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + x.shape[2], dx : dx + x.shape[3]] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def train(seed: int) -> tuple[DigitsCNN, dict]:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(seed)

    x_train, x_test, y_train, y_test = digits_arrays()
    xt = normalize(torch.from_numpy(x_train).unsqueeze(1), DIGITS_MEAN, DIGITS_STD)
    xs = normalize(torch.from_numpy(x_test).unsqueeze(1), DIGITS_MEAN, DIGITS_STD)
    yt, ys = torch.from_numpy(y_train), torch.from_numpy(y_test)

    model = DigitsCNN(num_classes=10)
    epochs, batch_size = RECIPE["epochs"], RECIPE["batch_size"]
    steps = epochs * int(np.ceil(len(xt) / batch_size))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=RECIPE["lr"], momentum=0.9, nesterov=True, weight_decay=RECIPE["weight_decay"]
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            logits = model(shift_batch(xt[idx], generator))
            loss = F.cross_entropy(logits, yt[idx], label_smoothing=RECIPE["label_smoothing"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  test acc {accuracy(model, xs, ys):.2f}%")
    model.eval()
    metrics = {
        "train_accuracy": round(accuracy(model, xt, yt), 2),
        "test_accuracy": round(accuracy(model, xs, ys), 2),
        "train_images": len(xt),
        "test_images": len(xs),
    }
    return model, metrics


CARD = """# digits-cnn — the embedded default model

A small CNN for scikit-learn's bundled `digits` data set, trained by this project. It is what
`compress run` prunes when given no model.

| | |
|---|---|
| file | `digits_cnn.pt` (state dict under `"state_dict"`; loads with `weights_only=True`) |
| sha256 | `{sha256}` |
| architecture | `compress.zoo.DigitsCNN`: 4 x (3x3 conv, batch norm, ReLU) with 32-64-128-128 filters, 2x2 max pool after the second, global average pool, linear 128 -> 10 |
| parameters | {params:,} |
| input | 1 x 8 x 8, pixels / 16, normalised with mean {mean} and std {std} |
| data | scikit-learn `load_digits()`: 1,797 images of 10 digits; fixed stratified split `train_test_split(test_size=0.3, stratify=y, random_state=0)`: {train_images} training, {test_images} test images |
| recipe | {recipe} |
| seed | {seed} |
| training accuracy | {train_accuracy:.2f} % |
| **test accuracy** | **{test_accuracy:.2f} %** ({test_images} held-out images) |
| training time | {seconds:.0f} s on this machine's CPU (1 thread) |
| command | `python scripts/train_digits.py --seed {seed}` |

Training is deterministic (one thread, seeded augmentation, `torch.use_deterministic_algorithms`):
the same command reproduces the same weights on the same software.

Limits: the digits are tiny (8x8) and clean; this model is a test bed for the pipeline, not a
handwriting recogniser for real-world images.
"""  # noqa: E501


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "digits_cnn.pt")
    args = parser.parse_args()

    start = time.perf_counter()
    model, metrics = train(args.seed)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": model.state_dict(), "architecture": "digits-cnn", "seed": args.seed, **metrics},
        args.out,
    )
    card = CARD.format(
        sha256=sha256(args.out),
        params=sum(p.numel() for p in model.parameters()),
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        recipe="; ".join(f"{k}: {v}" for k, v in RECIPE.items()),
        seed=args.seed,
        seconds=seconds,
        **metrics,
    )
    args.out.with_suffix(".md").write_text(card)
    print(json.dumps({**metrics, "seconds": round(seconds, 1), "checkpoint": str(args.out)}))


if __name__ == "__main__":
    main()
