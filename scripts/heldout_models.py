"""Architectures the criterion work was checked on but never tuned to (BENCHMARKS.md, "Criteria at
matched MACs on networks outside shared/"): a VGG-style chain with batch norms, and a small plain CNN
of the kind users bring, with and without batch norms.

They are benchmark fixtures, not part of the zoo: importing this module registers them under the
names below for the benchmark scripts (`scripts/train.py`, `scripts/bench_criteria.py`), so
`compress models` does not list them.

- `cifar_vgg11_half_bn`: VGG-11 for 32x32 images at half width (32-256 channels), a batch norm after
  every convolution, max pooling to 1x1 and one linear classifier (the CIFAR form of VGG used by the
  channel-pruning literature, narrowed to train on two cores).
- `cnn5` / `cnn5_bn`: five 3x3 convolutions (32, 64, 64, 128, 128 channels; max pooling after the
  second and fourth), global average pooling and a linear classifier; `cnn5` has biases and no batch
  norm, so re-estimation repairs nothing there.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from compress.zoo import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register_model

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _conv_block(channels_in: int, channels_out: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(channels_out))
    return [*layers, nn.ReLU(inplace=True)]


class CifarVGG(nn.Module):
    def __init__(self, num_classes: int = 10, config: tuple = VGG11, width: float = 0.5, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += _conv_block(channels, int(item * width), batch_norm)
                channels = int(item * width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class SmallCNN(nn.Module):
    def __init__(
        self, num_classes: int = 10, batch_norm: bool = False, widths: tuple[int, ...] = (32, 64, 64, 128, 128)
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i, width in enumerate(widths):
            layers += _conv_block(channels, width, batch_norm)
            if i in (1, 3):
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


HELDOUT = {
    "cifar_vgg11_half_bn": (lambda n: CifarVGG(n), "VGG-11 at half width with batch norms, 32x32"),
    "cnn5": (lambda n: SmallCNN(n), "5-conv CNN without batch norms, global average pooling, 32x32"),
    "cnn5_bn": (lambda n: SmallCNN(n, batch_norm=True), "5-conv CNN with batch norms, global average pooling, 32x32"),
}

for _name, (_build, _description) in HELDOUT.items():
    register_model(
        ModelSpec(
            name=_name,
            build=_build,
            input_size=(3, 32, 32),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            description=_description,
            source="scripts/heldout_models.py",
        )
    )
