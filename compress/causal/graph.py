"""The filter graph as torch-pruning traces it: who consumes the channels of each pruning group.

A pruning group is a set of channels that torch-pruning removes together (a conv's filters with its
batch norm, or every conv writing into one residual stream). Its channels' children are the outputs
of the layers that take those channels as input: its *consumers*, wherever they are in the network,
across residual additions, concatenations and flattening.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import PruningError

CONSUMER_HANDLERS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


@contextlib.contextmanager
def indexed_groups() -> Iterator[None]:
    """Within the block, torch-pruning builds the groups it would, in far less time.

    While it builds a group, torch-pruning (1.6) looks every dependency it meets up in the whole group
    so far (`Group.has_pruning_op`), and merges each into the group's item for the same layer and
    operation found by another scan (`Group.add_and_merge`): both grow quadratic in the group's size,
    and on MobileViT or ReXNet, whose groups reach across many layers, take minutes per trace. Here each
    group also keeps a set of what it holds and the position of each layer's item, and both lookups ask
    those: the same answers, found at once. Only the Group class's methods change, and only in the block.
    """
    group_class = tp.dependency.group.Group
    if getattr(group_class.has_pruning_op, "_indexed", False):  # already inside such a block
        yield
        return
    add_dep, has_pruning_op, add_and_merge = group_class.add_dep, group_class.has_pruning_op, group_class.add_and_merge

    def indexed_add_dep(self, dep, idxs):
        self.__dict__.setdefault("_compress_ops", set()).add((dep.target, dep.handler, tuple(idxs)))
        self.__dict__.setdefault("_compress_where", {}).setdefault((dep.target, dep.handler), len(self._group))
        add_dep(self, dep, idxs)

    def indexed_has_pruning_op(self, dep, idxs) -> bool:
        if len(self.__dict__.get("_compress_where", ())) == 0 and len(self._group):  # filled elsewhere: scan
            return has_pruning_op(self, dep, idxs)
        return (dep.target, dep.handler, tuple(idxs)) in self.__dict__.get("_compress_ops", ())

    def indexed_add_and_merge(self, dep, idxs):
        where = self.__dict__.get("_compress_where", {})
        if len(where) == 0 and len(self._group):  # filled elsewhere: scan, as torch-pruning does
            return add_and_merge(self, dep, idxs)
        i = where.get((dep.target, dep.handler))
        if i is None:
            return indexed_add_dep(self, dep, idxs)
        kept, seen, merged = self._group[i], set(), []  # torch-pruning's merge: each channel's first index
        for index in kept.idxs + idxs:
            if index.idx not in seen:
                merged.append(index)
                seen.add(index.idx)
        self._group[i] = tp._helpers.GroupItem(dep=kept.dep, idxs=merged)

    indexed_has_pruning_op._indexed = True
    group_class.add_dep, group_class.has_pruning_op = indexed_add_dep, indexed_has_pruning_op
    group_class.add_and_merge = indexed_add_and_merge
    try:
        yield
    finally:
        group_class.add_dep, group_class.has_pruning_op, group_class.add_and_merge = (
            add_dep,
            has_pruning_op,
            add_and_merge,
        )


@dataclass
class Consumer:
    """A layer whose input channels belong to one or more pruning groups."""

    name: str
    module: nn.Module
    n_inputs: int  # input features as the layer sees them
    features_per_channel: int = 1  # > 1 for a linear layer reading a flattened (C, H, W) map
    groups: int = 1  # convolution groups: children see only the parents of their own group

    @property
    def n_parents(self) -> int:
        return self.n_inputs // self.features_per_channel

    @property
    def n_children(self) -> int:
        return self.module.out_channels if isinstance(self.module, nn.Conv2d) else self.module.out_features


@dataclass
class GroupLinks:
    """One pruning group: its root layer, its channel count and where its channels are consumed."""

    root: str
    channels: int
    # (consumer name, consumer input indices, the group channel of each of those indices)
    links: list[tuple[str, list[int], list[int]]] = field(default_factory=list)
    # (producer name, its output channel indices, the group channel of each): the conv and linear
    # layers whose filters are removed with the group
    producers: list[tuple[str, list[int], list[int]]] = field(default_factory=list)


@dataclass
class ChannelGraph:
    consumers: dict[str, Consumer]
    groups: list[GroupLinks]
    output_layers: list[str]
    widths: dict[str, int] = field(default_factory=dict)  # output channels of every conv and linear layer


def build_dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph, with tracing failures turned into a clear error."""
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    except Exception as exc:  # tracing runs arbitrary model code
        raise PruningError(
            f"torch-pruning could not trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
            "the model must run on a batch of the data in plain eager mode"
        ) from exc


def forward_with_hooks(model: nn.Module, example_inputs: torch.Tensor, handles: list) -> None:
    """One forward pass of `model` without gradients, for the hooks behind `handles` to watch; they are
    removed afterwards, whatever happens."""
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for handle in handles:
            handle.remove()


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def is_producer(item) -> bool:
    """A group item that removes output filters of a conv or linear layer."""
    handler = getattr(item.dep.handler, "__name__", "")
    return handler == "prune_out_channels" and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))


def layer_scores_from_groups(graph: ChannelGraph, group_scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Give every producing layer's output filters the score of the group channel they belong to."""
    result: dict[str, np.ndarray] = {}
    for group in graph.groups:
        scores = group_scores.get(group.root)
        if scores is None:
            continue
        for name, idxs, root_idxs in group.producers:
            layer = result.setdefault(name, np.zeros(_width(graph, name, idxs)))
            layer[idxs] = scores[root_idxs]
    return result


def group_scores_from_layers(graph: ChannelGraph, layer_scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A group channel's score is the mean score of the filters removed with it (layers scored only)."""
    result: dict[str, np.ndarray] = {}
    for group in graph.groups:
        total, count = np.zeros(group.channels), np.zeros(group.channels)
        for name, idxs, root_idxs in group.producers:
            if name in layer_scores:
                np.add.at(total, root_idxs, layer_scores[name][idxs])
                np.add.at(count, root_idxs, 1.0)
        if count.any():
            result[group.root] = total / np.maximum(count, 1.0)
    return result


def _width(graph: ChannelGraph, name: str, idxs: list[int]) -> int:
    return graph.widths.get(name, max(idxs) + 1)


def find_output_layers(graph: tp.DependencyGraph) -> list[str]:
    """Layers that produce the model's outputs: nothing but parameter-free or per-channel ops after them.

    Their output channels are the model's outputs (the classifier's classes), which are never pruned.
    """
    names = {m: n for n, m in graph.model.named_modules()}
    layers = [n for n in graph.module2node.values() if isinstance(n.module, (nn.Conv2d, nn.Linear))]
    outputs = []
    for node in layers:
        stack, seen, reaches_output = [node], set(), False
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if not current.outputs:
                reaches_output = True
                break
            for nxt in current.outputs:
                if not isinstance(nxt.module, (nn.Conv2d, nn.Linear)):
                    stack.append(nxt)
        if reaches_output:
            outputs.append(names[node.module])
    return outputs


def group_root(group, names: dict[nn.Module, str], order: dict[nn.Module, int]) -> str:
    """The name a torch-pruning group goes by here: its first producing layer in definition order
    (torch-pruning's own root depends on traversal order: it can be a depthwise conv that merely passes
    channels on)."""
    producers = [
        item.dep.target.module
        for item in group
        if isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear)) and item.dep.handler not in CONSUMER_HANDLERS
    ]
    return names[min(producers or [group[0].dep.target.module], key=lambda m: order.get(m, len(order)))]


def prunable_groups(graph: tp.DependencyGraph, ignored: list[str]) -> list:
    """torch-pruning's groups of `graph`'s model, but those of the `ignored` layers (the outputs) and
    those it maps out of range (`misrouted`), which are kept whole."""
    return [group for group in _all_groups(graph, ignored) if not misrouted(group)]


def misrouted_groups(graph: tp.DependencyGraph, ignored: list[str]) -> list[str]:
    """The groups `prunable_groups` leaves out as misrouted, each by the layer torch-pruning counts its
    channels on (its producing layer can be shared with a sound group that goes by that layer's name)."""
    names = {m: n for n, m in graph.model.named_modules()}
    return [
        names.get(g[0].dep.target.module, str(g[0].dep.target)) for g in _all_groups(graph, ignored) if misrouted(g)
    ]


def misrouted(group) -> bool:
    """Whether torch-pruning maps some of the group's channels to indices its layers do not have. It
    does on CSPNet's stages, where a convolution's output is split in two and one half runs through the
    blocks: pruning or scoring such a group would index past its layers' channels."""
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        if not item.idxs or not isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            size = module.num_features
        elif handler in CONSUMER_HANDLERS:
            size = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
        else:
            size = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        if max(item.idxs) >= size:
            return True
    return False


def _all_groups(graph: tp.DependencyGraph, ignored: list[str]) -> list:
    model = graph.model
    with indexed_groups():
        return list(
            graph.get_all_groups(
                ignored_layers=[model.get_submodule(n) for n in ignored], root_module_types=(nn.Conv2d, nn.Linear)
            )
        )


def build_channel_graph(model: nn.Module, example_inputs: torch.Tensor) -> ChannelGraph:
    """Trace `model` (eval mode; the caller passes a copy it owns) and link groups to consumers."""
    graph = build_dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    order = {m: i for i, m in enumerate(names)}
    output_layers = find_output_layers(graph)
    consumers: dict[str, Consumer] = {}
    groups: list[GroupLinks] = []
    for group in prunable_groups(graph, output_layers):
        links = GroupLinks(root=group_root(group, names, order), channels=len(group[0].idxs))
        for item in group:
            module = item.dep.target.module
            idxs, root_idxs = list(item.idxs), list(item.root_idxs)
            if any(r is None for r in root_idxs):
                continue
            if is_producer(item):
                links.producers.append((names[module], idxs, root_idxs))
            if item.dep.handler not in CONSUMER_HANDLERS or is_depthwise(module):
                continue
            name = names[module]
            per_channel = max(1, len(idxs) // max(1, len(set(root_idxs))))
            n_inputs = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
            if n_inputs % per_channel:
                per_channel = 1
            consumer = consumers.setdefault(
                name,
                Consumer(
                    name,
                    module,
                    n_inputs,
                    features_per_channel=per_channel,
                    groups=module.groups if isinstance(module, nn.Conv2d) else 1,
                ),
            )
            if consumer.features_per_channel != per_channel:
                consumer.features_per_channel = 1  # inconsistent evidence: regress on raw features
            links.links.append((name, idxs, root_idxs))
        groups.append(links)
    widths = {
        n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    return ChannelGraph(consumers, groups, output_layers, widths)
