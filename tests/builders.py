"""Small models with known structure, and the benchmark scripts as modules, for tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class TwoConv(nn.Module):
    """conv1 -> ReLU -> conv2 -> ReLU -> global pool -> fc; no batch norm, so rescalings are exact."""

    def __init__(self, c1: int = 6, c2: int = 8, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc = nn.Linear(c2, classes)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class FlattenHead(nn.Module):
    """A conv whose map is flattened straight into the classifier (no pooling)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.bn(self.conv(x))), 1))


class Grouped(nn.Module):
    """conv -> grouped conv (`groups` parts of the `c` channels, ResNeXt style) -> conv, with batch norms."""

    def __init__(self, c: int = 16, groups: int = 4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = nn.Conv2d(c, c // 2, 1, bias=False), nn.BatchNorm2d(c // 2)
        self.fc = nn.Linear(c // 2, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


class Depthwise(nn.Module):
    """conv -> depthwise conv -> pointwise conv, MobileNet style."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.dw_bn(self.dw(x)))
        x = F.relu(self.pw_bn(self.pw(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Widening(nn.Module):
    """conv -> depthwise conv with two filters per channel (8 -> 16, as FastViT's and MobileOne's stems
    widen) -> pointwise conv; torch-pruning's magnitude importance cannot score the first group."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.dw_bn = nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(16)
        self.pw, self.pw_bn = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu(self.dw_bn(self.dw(x)))
        x = F.relu(self.pw_bn(self.pw(x)))
        return self.fc(x.mean((2, 3)))


class _GhostModule(nn.Module):
    """GhostNet's module: half the output from a 1x1 conv, the other half a depthwise copy of that half."""

    def __init__(self, cin: int, cout: int, relu: bool = True):
        super().__init__()
        half = cout // 2
        self.primary, self.primary_bn = nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half)
        self.cheap = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.cheap_bn = nn.BatchNorm2d(half)
        self.relu = relu

    def forward(self, x):
        a = self.primary_bn(self.primary(x))
        a = F.relu(a) if self.relu else a
        b = self.cheap_bn(self.cheap(a))
        return torch.cat([a, F.relu(b) if self.relu else b], 1)


class GhostStyle(nn.Module):
    """Residual blocks of ghost modules, GhostNet style. The second block's shortcut reads the first
    stream with a depthwise conv, so torch-pruning counts that stream's 2c channels, which are removed in
    pairs: channel j (the first block's primary channel j) and j + c (its depthwise copy)."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.expand1, self.project1 = _GhostModule(c, 2 * c), _GhostModule(2 * c, 2 * c, relu=False)
        self.shortcut1 = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c))
        self.expand2, self.project2 = _GhostModule(2 * c, 4 * c), _GhostModule(4 * c, 4 * c, relu=False)
        self.shortcut2 = nn.Sequential(
            nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c, bias=False),
            nn.BatchNorm2d(2 * c),
            nn.Conv2d(2 * c, 4 * c, 1, bias=False),
            nn.BatchNorm2d(4 * c),
        )
        self.fc = nn.Linear(4 * c, 5)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.project1(self.expand1(x)) + self.shortcut1(x)
        x = self.project2(self.expand2(x)) + self.shortcut2(x)
        return self.fc(x.mean((2, 3)))


class CrossStage(nn.Module):
    """A CSPNet stage: a conv's output split in two, one half through a residual block and a transition
    conv, then merged. torch-pruning maps the block's stream to channels past the splitting conv's."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.expand, self.expand_bn = nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c)
        self.block1, self.block1_bn = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.block2, self.block2_bn = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.transition, self.transition_bn = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)
        self.merge, self.merge_bn = nn.Conv2d(2 * c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c)
        self.fc = nn.Linear(2 * c, 5)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        kept, through = self.expand_bn(self.expand(x)).chunk(2, dim=1)
        through = through + self.block2_bn(self.block2(F.relu(self.block1_bn(self.block1(through)))))
        through = F.relu(self.transition_bn(self.transition(through)))
        x = F.relu(self.merge_bn(self.merge(torch.cat([kept, through], 1))))
        return self.fc(x.mean((2, 3)))


class Mixed(nn.Module):
    """MixNet's mixed convolutions: channels split unevenly, each part with its own kernel, concatenated.
    torch-pruning cannot prune through the uneven split (its chosen channels map past a layer's)."""

    def __init__(self, c: int = 12):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.dw3 = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.dw5 = nn.Conv2d(c - 4, c - 4, 5, padding=2, groups=c - 4, bias=False)
        self.dw_bn = nn.BatchNorm2d(c)
        self.pw_a, self.pw_b = nn.Conv2d(c // 2, 8, 1, bias=False), nn.Conv2d(c // 2, 8, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        a, b = x.split([4, x.shape[1] - 4], 1)
        x = F.relu(self.dw_bn(torch.cat([self.dw3(a), self.dw5(b)], 1)))
        a, b = x.chunk(2, 1)
        x = F.relu(self.pw_bn(torch.cat([self.pw_a(a), self.pw_b(b)], 1)))
        return self.fc(x.mean((2, 3)))


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _OptionABlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        pad = cout // 4
        self.shortcut = (
            _Lambda(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))) if stride != 1 else nn.Identity()
        )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class OptionAResNet(nn.Module):
    """The CIFAR ResNet's 'option A' shortcut: sub-sample, then zero-pad channels. torch-pruning maps
    the padding wrongly and builds a model that fails at the classifier."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = _OptionABlock(8, 8, 1)
        self.layer2 = _OptionABlock(8, 16, 2)
        self.linear = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch-norm layers non-trivial statistics, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=generator) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
    return model.eval()


def batches(n: int = 64, shape=(3, 8, 8), batch_size: int = 16, seed: int = 0, classes: int = 5):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@contextmanager
def scripts_on_path() -> Iterator[None]:
    """scripts/ on the import path for a while: the scripts import their neighbours (benchmark_tables,
    heldout_models) by name."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield
    finally:
        sys.path.remove(str(SCRIPTS))


def load_script(name: str):
    """scripts/NAME.py as a module (scripts/ is not a package)."""
    with scripts_on_path():
        spec = importlib.util.spec_from_file_location(f"compress_scripts_{name}", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # registered, as an import does (dataclasses look their module up)
        spec.loader.exec_module(module)
        return module
