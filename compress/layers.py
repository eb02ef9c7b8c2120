"""Layers compress puts into models: structure that looks like a layer but is not learned.

`ChannelPadShortcut` is the CIFAR ResNets' option-A shortcut (sub-sample by the stride, zero-pad the
channel axis) written as what it computes exactly: a 1x1 strided convolution whose weight is a fixed
0/1 selection matrix. As a convolution, torch-pruning couples its input channels to the residual stream
it reads and its output channels to the stream it writes, like any option-B shortcut, and pruning
either stream prunes the selection with it: the streams of option-A networks prune whole. As
channel padding (`F.pad`), torch-pruning merges the streams into one group with a wrong index map.

The selection is structure, not a filter: it is frozen (also after torch-pruning replaces its weight),
it is not in the state dict (checkpoints of the padded form load unchanged; a pruned model rebuilds it
from its pruning history), and criteria, explanations and counts of learned filters skip it.
ONNX keeps the convolution: onnxruntime ran ResNet-56 with it 4-7% faster than with the padded form's
strided Slice and Pad (and faster than Slice, Pad and a channel Gather once the streams are pruned),
because the convolution stays in its blocked channel layout (BENCHMARKS.md, option-A shortcut form).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn


class ChannelPadShortcut(nn.Conv2d):
    """`F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, p, p))` with p = (out - in) // 2, as a fixed 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        if out_channels < in_channels:
            raise ValueError(f"a padding shortcut cannot narrow {in_channels} channels to {out_channels}")
        super().__init__(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        self._register_state_dict_hook(_drop_selection)

    def reset_parameters(self) -> None:
        """The selection: input channel i goes to output channel p + i; the others are zero."""
        pad = (self.out_channels - self.in_channels) // 2
        with torch.no_grad():
            self.weight.zero_()
            channels = torch.arange(self.in_channels)
            self.weight[pad + channels, channels] = 1.0

    def __setattr__(self, name: str, value) -> None:
        # torch-pruning replaces `weight` with a new (trainable) Parameter when it prunes: keep it frozen.
        if name == "weight" and isinstance(value, nn.Parameter):
            value.requires_grad_(False)
        super().__setattr__(name, value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        state_dict.setdefault(prefix + "weight", self.weight.detach().clone())  # not saved: keep our own
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _drop_selection(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    state_dict.pop(prefix + "weight", None)


def is_fixed(module: nn.Module) -> bool:
    """A layer whose weights are structure compress added, not learned filters."""
    return isinstance(module, ChannelPadShortcut)


class _LearnedConvType(type):
    def __instancecheck__(cls, instance) -> bool:
        return isinstance(instance, nn.modules.conv._ConvNd) and not is_fixed(instance)


class LearnedConv(metaclass=_LearnedConvType):
    """`isinstance(m, LearnedConv)`: a convolution with learned filters. For torch-pruning's importance
    `target_types`, so magnitude and gradient criteria never score a fixed selection."""


def learned_convs(model: nn.Module) -> Iterator[tuple[str, nn.Conv2d]]:
    """(name, layer) of every convolution with learned filters, in registration order."""
    return ((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and not is_fixed(m))
