"""What a pruned shape costs, before pruning: the model's MACs as a function of each group's kept width.

A convolution's multiply-accumulates are proportional to its input channels times its output channels
(a depthwise one's to its channels alone), a linear layer's likewise, and a batch norm's to its
channels; a pruning group's channels are some layers' outputs and other layers' inputs. So the MACs
of any kept widths follow from one count of the unpruned model, per layer, without pruning anything:
global allocation uses this to spend a MACs budget exactly. The few other counted operations
(activations, pooling, fixed shortcut selections) are held at their unpruned cost, so the prediction
never undercounts what pruning measures.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from .causal.graph import CONSUMER_HANDLERS, build_dependency_graph, group_root, is_depthwise, prunable_groups
from .pruning import count_macs_params

_SCALED = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


class MacsModel:
    """MACs of `model` for one input, predicted for any kept widths of its pruning groups.

    `total_` is the measured MACs of the unpruned model; `channels_` each group's width (by group
    root); `macs(keep)` the prediction when each named group keeps that many channels.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, protected: Sequence[str] = ()):
        observed = copy.deepcopy(model).eval()
        graph = build_dependency_graph(observed, example_inputs)
        _, _, per_layer, _ = tp.utils.count_ops_and_params(observed, example_inputs[:1], layer_wise=True)
        names = {module: name for name, module in observed.named_modules()}
        order = {module: i for i, module in enumerate(names)}
        self.total_ = float(count_macs_params(model, example_inputs)[0])
        # layer -> (operations scaling with inputs x outputs, with outputs alone, (inputs, outputs))
        self._layers = {
            names[m]: (*_split_bias(m, float(ops)), _in_out(m))
            for m, ops in per_layer.items()
            if isinstance(m, _SCALED) and m in names and ops is not None  # None: the counter saw it run no op
        }
        self._rest = self.total_ - sum(both + out for both, out, _ in self._layers.values())
        self.channels_: dict[str, int] = {}
        # layer -> [(group root, its features per group channel)], for outputs and for inputs
        self._outputs: dict[str, list[tuple[str, float]]] = {}
        self._inputs: dict[str, list[tuple[str, float]]] = {}
        known = set(names.values())
        for group in prunable_groups(graph, [n for n in protected if n in known]):
            root = group_root(group, names, order)
            if root in protected:
                continue
            width = len(group[0].idxs)
            self.channels_[root] = width
            for item in group:
                name = names.get(item.dep.target.module)
                if name not in self._layers or any(r is None for r in item.root_idxs):
                    continue
                consumer = item.dep.handler in CONSUMER_HANDLERS
                table = self._inputs if consumer else self._outputs
                table.setdefault(name, []).append((root, len(item.idxs) / width))

    def macs(self, keep: Mapping[str, int]) -> float:
        """Predicted MACs when each group in `keep` keeps that many channels (others stay whole)."""
        total = self._rest
        for name, (both, outputs_only, (n_in, n_out)) in self._layers.items():
            out = (n_out - self._removed(self._outputs.get(name, ()), keep)) / n_out
            inp = (n_in - self._removed(self._inputs.get(name, ()), keep)) / n_in
            total += both * out * inp + outputs_only * out
        return total

    def _removed(self, shares, keep: Mapping[str, int]) -> float:
        return sum(share * (self.channels_[root] - keep.get(root, self.channels_[root])) for root, share in shares)


def _split_bias(module: nn.Module, ops: float) -> tuple[float, float]:
    """A layer's counted operations split into those that scale with its inputs and outputs and those
    that scale with its outputs alone (a bias, a batch norm, a depthwise convolution)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) or is_depthwise(module):
        return 0.0, ops
    if module.bias is None:
        return ops, 0.0
    # the counter adds one operation per output element for the bias
    per_output = module.in_features if isinstance(module, nn.Linear) else module.in_channels // module.groups
    if isinstance(module, nn.Conv2d):
        per_output *= module.kernel_size[0] * module.kernel_size[1]
    bias = ops / (per_output + 1)
    return ops - bias, bias


def _in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.num_features, module.num_features  # a batch norm: its cost follows its channels
