"""Which ONNX form of the option-A shortcut runs fastest? ResNet-56 at 32x32 on onnxruntime.

    python scripts/bench_shortcut.py                          # print the table
    python scripts/bench_shortcut.py --write BENCHMARKS.md    # also replace its section there

The option-A shortcut (sub-sample by 2, zero-pad the channel axis) can be written three ways that
compute the same numbers:
- `pad`: the community implementation, `F.pad(x[:, :, ::2, ::2], ...)` (Slice, Pad). It only exists
  unpruned: torch-pruning cannot prune through channel padding.
- `gather`: a strided slice, one zero channel appended, then a channel Gather with an index buffer
  (Slice, Pad, Gather), which a pruned selection can use too.
- `conv`: compress's `ChannelPadShortcut`, a 1x1 stride-2 convolution with a 0/1 selection weight.
Every form of the same model is exported, checked against PyTorch, and timed interleaved in one
process at batch 1 and --batch, --repeats times with fresh sessions (randomly initialised weights with
batch-norm statistics of random images: latency depends on shapes only). compress exports the fastest.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from bench_latency import time_variants
from benchmark_tables import machine, replace_section

from compress.artifacts import package_versions
from compress.benchmark import default_threads, make_session
from compress.cifar_resnet import CifarResNet
from compress.criteria import importance_factory
from compress.export import check_parity, export_onnx
from compress.layers import ChannelPadShortcut
from compress.progress import set_quiet
from compress.pruning import count_macs_params, prune
from compress.recovery import recalibrate_batchnorm

HEADING = "### Option-A shortcut: ONNX form"


class PadForm(nn.Module):
    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class GatherForm(nn.Module):
    def __init__(self, selection: ChannelPadShortcut):
        super().__init__()
        weight = selection.weight.detach()[:, :, 0, 0]
        zero = torch.full((weight.shape[0],), weight.shape[1])
        self.register_buffer("source", torch.where(weight.sum(1) > 0, weight.argmax(1), zero))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 1)).index_select(1, self.source)


def with_form(model: nn.Module, form: str) -> nn.Module:
    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, ChannelPadShortcut) and form != "conv":
            parent, _, attr = name.rpartition(".")
            replacement = PadForm(module.out_channels // 4) if form == "pad" else GatherForm(module)
            setattr(model.get_submodule(parent), attr, replacement)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=4.0)
    parser.add_argument("--slice", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    set_quiet(True)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = CifarResNet(args.depth).eval()
    images = torch.randn(64, 3, 32, 32)
    recalibrate_batchnorm(model, [(images, None)])  # batch-norm statistics of the inputs: activations in range
    pruned = prune(model, importance_factory("random", seed=0), args.ratio, images[:16], round_to=4).model
    variants = {
        "unpruned, pad": with_form(model, "pad"),
        "unpruned, gather": with_form(model, "gather"),
        "unpruned, conv": with_form(model, "conv"),
        f"pruned {args.ratio:g}, gather": with_form(pruned, "gather"),
        f"pruned {args.ratio:g}, conv": with_form(pruned, "conv"),
    }
    files, parity, macs = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, variant) in enumerate(variants.items()):
            path = export_onnx(variant, images[:2], Path(tmp) / f"v{i}.onnx").path
            parity[label] = check_parity(make_session(path), variant, images[:32], tolerance=1e-4).max_abs_diff
            macs[label] = count_macs_params(variant, images)[0]
            files[label] = path
        repeats = time_variants(files, 32, "cpu", args)
    lines = [
        HEADING,
        "",
        f"Command: `{' '.join(['python scripts/bench_shortcut.py', *sys.argv[1:]])}` "
        f"({time.perf_counter() - start:.0f} s wall). Machine: {machine()}; onnxruntime "
        f"{package_versions().get('onnxruntime')}, {args.threads or default_threads()} intra-op threads.",
        "",
        f"ResNet-{args.depth} (option A) at 32x32, randomly initialised, unpruned and randomly pruned at "
        f"{args.ratio:g} (every stream, channels rounded to 4). Each row is the same model with its two option-A "
        "shortcuts written in one form; all rows timed interleaved, median over "
        f"{args.repeats} repeats of each row's median latency; speed-up against the `pad` form (unpruned rows) "
        "or the `gather` form (pruned rows) within each repeat.",
        "",
        "| model, shortcut form | MACs | parity max abs | b1 median ms | b1 speed-up | "
        f"b{args.batch} median ms | b{args.batch} speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in files:
        base = "unpruned, pad" if label.startswith("unpruned") else f"pruned {args.ratio:g}, gather"
        cells = [label, f"{macs[label]:,}", f"{parity[label]:.1e}"]
        for b in (1, args.batch):
            key = f"batch_{b}"
            median = np.median([r[label][key]["median_ms"] for r in repeats])
            speedup = np.median([r[base][key]["median_ms"] / r[label][key]["median_ms"] for r in repeats])
            cells += [f"{median:.3f}", f"{speedup:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()
