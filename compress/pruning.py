"""Structural pruning with torch-pruning, checked against the unpruned model.

Removing a channel must be equivalent to feeding zeros for it to every layer that reads it. The slim
model is compared with a copy of the original whose consumer layers see the removed channels zeroed;
when they differ, pruning is repeated with that check after every group, the group that fails (an
operator torch-pruning maps wrongly, like a channel-padding shortcut it does not know) is kept
unpruned, with a warning, and pruning starts again without it. A model that does not pass is never
handed out.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from .allocation import uniform_keep
from .causal.graph import (
    CONSUMER_HANDLERS,
    build_dependency_graph,
    find_output_layers,
    forward_with_hooks,
    group_root,
    indexed_groups,
    is_producer,
    misrouted,
    misrouted_groups,
    prunable_groups,
)
from .errors import CompressWarning, PruningError
from .layers import is_fixed

# Builds, for the model copy being pruned, the torch-pruning Importance that ranks its channels.
ImportanceFactory = Callable[[nn.Module], tp.importance.Importance]

# Pruned and masked-reference logits may differ by float rounding only (sums over fewer terms).
VALIDATION_RTOL = 1e-3
VALIDATION_ATOL = 1e-4


@dataclass
class PruneResult:
    """A physically smaller model and how it was obtained."""

    model: nn.Module
    ratio: float
    history: list[list]  # torch-pruning pruning history: [root layer, is_out_channels, [indices]]
    kept_unpruned: dict[str, str] = field(default_factory=dict)  # group root -> why it was kept
    seconds: float = 0.0
    # auto allocation, per step: the allocation kept and each candidate's agreement with the original
    allocation_choices: list[dict] = field(default_factory=list)

    def pruned_channels(self) -> dict[str, list[int]]:
        """Output-channel indices (in the original model's numbering) removed from each group root."""
        removed: dict[str, list[int]] = {}
        for name, is_out, idxs in self.history:
            if is_out:
                removed.setdefault(name, []).extend(int(i) for i in idxs)
        return removed


class _GroupRejected(Exception):
    """A pruned group (`root`; None: some group of the whole pruned model) fails validation. `reason`
    is the same for every variant; `detail` (a measured difference, an exception's text) is not."""

    def __init__(self, root: str | None, reason: str, detail: str = ""):
        super().__init__(f"{root}: {reason} {detail}")
        self.root, self.reason, self.detail = root, reason, detail


def output_layer_names(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """The layers producing the model's outputs (traced), whose output channels are never pruned.

    Raises PruningError when torch-pruning's trace misses a conv or linear layer: it follows the
    autograd graph, so a layer run under torch.no_grad, behind a .detach() or a non-differentiable op
    is invisible to it and would silently never be pruned (or be pruned without its consumers). Warns
    about the groups it maps out of range (compress.causal.graph.misrouted), which are kept whole.
    """
    observed = copy.deepcopy(model).eval()
    graph = build_dependency_graph(observed, example_inputs)
    names = {m: n for n, m in observed.named_modules()}
    missing = [names[m] for m in _layers_run(observed, example_inputs) if m not in graph.module2node]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise PruningError(
            f"torch-pruning cannot trace layer(s) {shown} of {type(model).__name__}: they are not in the autograd "
            "graph of the output (run under torch.no_grad, behind .detach() or a non-differentiable op); "
            "make the forward differentiable to prune this model"
        )
    outputs = find_output_layers(graph)
    unfollowed = misrouted_groups(graph, outputs)
    if unfollowed:
        shown = ", ".join(unfollowed[:3]) + (f" and {len(unfollowed) - 3} more" if len(unfollowed) > 3 else "")
        warnings.warn(
            f"keeping {len(unfollowed)} group(s) unpruned ({shown}): torch-pruning maps their channels past "
            "their layers' (a split of a layer's output it does not follow)",
            CompressWarning,
            stacklevel=2,
        )
    return outputs


def _layers_run(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The conv and linear layers a forward pass actually runs (an unused auxiliary head is not one)."""
    ran: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda module, args, out: ran.append(module))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    forward_with_hooks(model, example_inputs, handles)
    return list(dict.fromkeys(ran))


def prune(
    model: nn.Module,
    importance: ImportanceFactory,
    ratio: float,
    example_inputs: torch.Tensor,
    *,
    protected: Sequence[str] | None = None,
    round_to: int | None = None,
    keep: Mapping[str, int] | None = None,
    layouts: Mapping[str, GroupLayout] | None = None,
) -> PruneResult:
    """Remove `ratio` of the channels of every prunable group of a copy of `model`.

    `importance` builds a torch-pruning Importance for the copy being pruned (a fresh one per attempt,
    so seeded criteria stay reproducible). `protected` names layers whose output channels are kept
    (default: the traced output layers). `round_to` keeps each group's channel count a multiple of it
    (rounding down; None or 1: exact ratio). `keep`, when given, replaces the ratio: the channels each
    group keeps, by group root (compress.allocation); groups it does not name stay whole. A group whose
    channels come in equal parts (a grouped convolution's, a group norm's) loses the same channels from
    every part, and one whose channels are removed in sets (GhostNet's) loses whole sets, so its kept
    count is rounded down to a whole multiple of its `GroupLayout.unit`; `layouts`, when the caller has
    them already (`group_layouts` of `model`, with `protected`), spare tracing them again.
    `example_inputs` are real inputs: they trace the graph and validate every pruned group. The
    caller's model is not changed.
    """
    if keep is None and not 0.0 < ratio < 1.0:
        raise PruningError(f"pruning ratio must be in (0, 1), got {ratio}")
    round_to = round_to if round_to is not None and round_to > 1 else None
    start = time.perf_counter()
    reference = copy.deepcopy(model).eval()
    if protected is None:
        protected = output_layer_names(reference, example_inputs)
    if layouts is None:  # traced once, not per attempt below
        layouts = group_layouts(reference, example_inputs, protected)
    if keep is None:  # the same fraction of every group, never emptying one (compress.allocation)
        keep = {root: uniform_keep(layout.width, ratio, round_to) for root, layout in layouts.items()}
    with torch.no_grad():
        expected_shape = tuple(reference(example_inputs).shape)
    kept: dict[str, str] = {}
    # The pruned model is checked once as a whole; only when that fails is it pruned again with a
    # check after every group, to find the group to keep (a forward pass per group is the slow part).
    check_each = False
    while True:
        try:
            with indexed_groups():  # torch-pruning builds every group again, pruning it
                pruned, history = _prune_once(
                    reference, importance, example_inputs, list(protected) + list(kept), check_each, keep, layouts
                )
        except _GroupRejected as rejected:
            if rejected.root is None:
                check_each = True
                continue
            if rejected.root in kept:  # cannot happen unless torch-pruning ignores ignored_layers
                raise PruningError(f"pruning group {rejected.root} failed validation even when ignored") from None
            warnings.warn(f"keeping group {rejected.root} unpruned: {rejected.reason}", CompressWarning, stacklevel=2)
            kept[rejected.root] = f"{rejected.reason} {rejected.detail}".strip()
            check_each = False
            continue
        break
    with torch.no_grad():
        shape = tuple(pruned(example_inputs).shape)
    if shape != expected_shape:
        raise PruningError(f"pruned model outputs shape {shape}, expected {expected_shape}")
    return PruneResult(pruned, ratio, history, kept, time.perf_counter() - start)


def _prune_once(
    reference: nn.Module,
    importance: ImportanceFactory,
    example_inputs: torch.Tensor,
    ignored: list[str],
    check_each: bool,
    keep: Mapping[str, int],
    layouts: Mapping[str, GroupLayout],
) -> tuple[nn.Module, list[list]]:
    work = copy.deepcopy(reference)
    names = {m: n for n, m in work.named_modules()}
    # torch-pruning's per-layer ratios, each group its own ranking scope; a ratio of the group's width as
    # torch-pruning counts it, which is not always its root layer's (GroupLayout)
    per_group = {
        work.get_submodule(root): 1.0 - (kept + 0.5) / width  # + 0.5: torch-pruning floors width * (1 - ratio)
        for root, kept in keep.items()
        if root not in ignored and root in layouts
        for width in [layouts[root].width]
        for kept in [whole_units(kept, layouts[root].unit)]
        if kept < width
    }
    coupled = {root: layout for root, layout in layouts.items() if layout.coupled is not None}
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")  # torch-pruning warns about every unknown op it meets
        try:
            # The kept widths come rounded (compress.allocation), so torch-pruning gets no round_to: it
            # would round a grouped convolution's count per part against the whole width.
            pruner = tp.pruner.BasePruner(
                work,
                example_inputs,
                importance=_GroupImportance(importance(work), coupled, names),
                pruning_ratio=0.0,  # every pruned group has its own ratio
                pruning_ratio_dict=per_group,
                ignored_layers=[work.get_submodule(n) for n in ignored],
            )
        except Exception as exc:  # tracing runs arbitrary model code
            raise PruningError(
                f"torch-pruning could not trace {type(work).__name__} ({type(exc).__name__}: {exc})"
            ) from exc
    masked = _MaskedReference(reference)
    try:
        for group in pruner.step(interactive=True):
            root = names[group[0].dep.target.module]
            if misrouted(group):  # a sound group's chosen channels can still be mapped past a layer's
                raise _GroupRejected(root, "torch-pruning maps its channels past its layers'")
            masked.remove(_consumed_indices(group, names))
            try:
                group.prune()
            except Exception as exc:  # torch-pruning failed half-way: the copy is unusable
                raise _GroupRejected(root, "torch-pruning failed", f"({type(exc).__name__}: {exc})") from exc
            if check_each:
                _check_equivalent(work, masked, example_inputs, root)
        if not check_each:
            _check_equivalent(work, masked, example_inputs, None)
    finally:
        masked.close()
    history = [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in pruner.pruning_history()]
    return work.eval(), history


class _GroupImportance(tp.importance.Importance):
    """`inner`'s scores, with each coupled set of channels given its mean (GroupLayout.tie), so that
    torch-pruning's ranking takes whole sets and removes the count it was asked for, and none for a
    misrouted group (compress.causal.graph.misrouted), which torch-pruning then leaves alone."""

    def __init__(self, inner: tp.importance.Importance, coupled: Mapping[str, GroupLayout], names):
        self.inner, self.coupled, self.names = inner, coupled, names
        self.order = {m: i for i, m in enumerate(names)}

    def __call__(self, group):
        if misrouted(group):  # it may share its root layer with a sound group that has a ratio
            return None
        scores = self.inner(group)
        layout = self.coupled.get(group_root(group, self.names, self.order))
        if scores is None or layout is None or len(scores) != layout.width:
            return scores
        tied = layout.tie(scores.detach().cpu().double().numpy())
        return torch.as_tensor(tied, dtype=scores.dtype, device=scores.device)


def _parts(module: nn.Module) -> int:
    """Into how many equal parts torch-pruning splits a layer's channels: a grouped convolution's groups
    (not a depthwise one's: its channels pass one to one), a group norm's."""
    if isinstance(module, nn.Conv2d) and module.groups != module.out_channels:
        return module.groups
    return module.num_groups if isinstance(module, nn.GroupNorm) else 1


@dataclass(frozen=True)
class GroupLayout:
    """How torch-pruning removes one pruning group's channels.

    `width`: its channels as torch-pruning counts them. `parts`: equal parts they come in (a grouped
    convolution's, a group norm's), each losing the same channels. `coupled`: for a group whose channels
    are removed in sets, each channel's set label. GhostNet's modules concatenate a convolution's output
    with a depthwise copy of it, so where such a concatenation joins a residual stream, removing the
    stream's channel j removes the convolution's channel j and, with its copy, another stream channel.
    """

    width: int
    parts: int = 1
    coupled: np.ndarray | None = None

    @property
    def unit(self) -> int:
        """Kept widths are whole multiples of this (sets of unequal sizes cannot be cut alike: then the
        whole width, so the group is kept whole)."""
        if self.coupled is None:
            return self.parts
        sizes = set(np.bincount(self.coupled).tolist())  # labels are 0..n-1 (`_coupled`)
        return math.lcm(self.parts, sizes.pop()) if len(sizes) == 1 else self.width

    def tie(self, scores: np.ndarray) -> np.ndarray:
        """`scores` with every channel given its set's mean: what pruning one of them removes."""
        if self.coupled is None:
            return scores
        means = np.bincount(self.coupled, weights=scores) / np.bincount(self.coupled)
        return means[self.coupled]


def group_layouts(model: nn.Module, example_inputs: torch.Tensor, ignored: Sequence[str]) -> dict[str, GroupLayout]:
    """Every prunable group's GroupLayout, by group root (the layers in `ignored` excluded)."""
    observed = copy.deepcopy(model).eval()
    graph = build_dependency_graph(observed, example_inputs)
    names = {m: n for n, m in observed.named_modules()}
    order = {m: i for i, m in enumerate(names)}
    layouts = {}
    with indexed_groups():  # for _coupled's queries
        for group in prunable_groups(graph, list(ignored)):
            width = len(group[0].idxs)
            parts = max(_parts(item.dep.target.module) for item in group)
            layouts[group_root(group, names, order)] = GroupLayout(width, parts, _coupled(graph, group, width))
    return layouts


def _coupled(graph: tp.DependencyGraph, group, width: int) -> np.ndarray | None:
    """Set labels of a group whose channels torch-pruning removes in sets, else None. Only a group with
    a producing layer narrower than the group can be one, so only those are asked channel by channel."""
    if all(len(set(item.idxs)) >= width for item in group if is_producer(item)):
        return None
    root, handler = group[0].dep.target.module, group[0].dep.handler
    labels = np.full(width, -1)
    for channel in range(width):
        if labels[channel] < 0:  # sets are closed: a channel already in one is not asked again
            labels[[int(i) for i in graph.get_pruning_group(root, handler, [channel])[0].idxs]] = channel
    if (labels == np.arange(width)).all():
        return None
    return np.unique(labels, return_inverse=True)[1]


def whole_units(kept: int, unit: int) -> int:
    """`kept` channels rounded down to a whole multiple of `unit` (at least one)."""
    return kept if unit == 1 else max(unit, kept // unit * unit)


def _consumed_indices(group, names: dict[nn.Module, str]) -> list[tuple[str, list[int]]]:
    """(consumer layer, its current input indices) for each layer that reads the group's channels."""
    return [(names[item.dep.target.module], list(item.idxs)) for item in group if item.dep.handler in CONSUMER_HANDLERS]


class _MaskedReference:
    """The original model with removed channels zeroed at the input of every layer that reads them."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.alive: dict[str, list[int]] = {}  # consumer -> original indices of its surviving inputs
        self.removed: dict[str, torch.Tensor] = {}
        self.handles = []

    def remove(self, consumed: list[tuple[str, list[int]]]) -> None:
        for name, idxs in consumed:
            module = self.model.get_submodule(name)
            if name not in self.alive:
                width = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
                self.alive[name] = list(range(width))
                self.handles.append(module.register_forward_pre_hook(self._hook(name)))
            originals = [self.alive[name][i] for i in idxs]
            gone = set(idxs)
            self.alive[name] = [o for i, o in enumerate(self.alive[name]) if i not in gone]
            previous = self.removed.get(name, torch.empty(0, dtype=torch.long))
            self.removed[name] = torch.cat([previous, torch.as_tensor(originals, dtype=torch.long)])

    def _hook(self, name: str):
        def zero_removed(module, args):
            x = args[0].clone()
            x.index_fill_(1 if isinstance(module, nn.Conv2d) else x.dim() - 1, self.removed[name], 0.0)
            return (x, *args[1:])

        return zero_removed

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def _check_equivalent(work: nn.Module, masked: _MaskedReference, inputs: torch.Tensor, root: str | None) -> None:
    """The pruned model equals the masked original on `inputs`, else _GroupRejected for `root`."""
    try:
        out = work(inputs)
    except Exception as exc:
        raise _GroupRejected(root, "the pruned model no longer runs", f"({type(exc).__name__}: {exc})") from exc
    expected = masked(inputs)
    if out.shape != expected.shape:
        raise _GroupRejected(root, f"output shape changed to {tuple(out.shape)} from {tuple(expected.shape)}")
    scale = float(expected.abs().max().clamp(min=1.0))
    error = float((out - expected).abs().max())
    if error > VALIDATION_ATOL + VALIDATION_RTOL * scale:
        raise _GroupRejected(
            root, "the pruned model differs from the original with those channels zeroed", f"(max {error:.3g})"
        )


def group_widths(model: nn.Module, example_inputs: torch.Tensor, protected: Sequence[str]) -> dict[str, int]:
    """Channels of every prunable group of `model`, by group root (the layers in `protected` excluded)."""
    return {root: layout.width for root, layout in group_layouts(model, example_inputs, protected).items()}


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """Multiply-accumulates for one input and the number of parameters.

    torch-pruning's counter matches layer types exactly, so it skips fixed selection convolutions
    (compress.layers); they are counted here, because the exported file runs them as convolutions.
    """
    macs, params = tp.utils.count_ops_and_params(model, example_inputs[:1])
    return int(macs) + _fixed_layer_macs(model, example_inputs[:1]), int(params)


@torch.no_grad()
def _fixed_layer_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    fixed = [m for m in model.modules() if is_fixed(m)]
    if not fixed:
        return 0
    macs = []
    handles = [m.register_forward_hook(lambda m, args, out: macs.append(out.numel() * m.in_channels)) for m in fixed]
    try:
        model.eval()(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sum(macs)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer."""
    return {
        name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def apply_history(model: nn.Module, history: list[list], example_inputs: torch.Tensor) -> nn.Module:
    """Replay a pruning history on a fresh model of the same architecture (to load pruned.pt)."""
    graph = build_dependency_graph(model.eval(), example_inputs)
    with indexed_groups():
        graph.load_pruning_history([[n, bool(out), list(idxs)] for n, out, idxs in history])
    return model
