"""Total causal effect of each filter on the model's output, by path analysis over the network itself.

The seed scores a filter by its *direct* effect on its children. In a structural model the effect of a
filter on the output is its *total* effect: the sum over every directed path to the output of the
products of the path coefficients. In a network the structural equations are known (they are the
layers), and the sum over paths of products of local derivatives is exactly what back-propagation
computes: one backward pass gives every filter's total effect at once, through residual streams,
concatenations and nonlinearities, with the network's own coefficients instead of fitted ones.

The intervention is the one pruning makes, less what batch-norm re-estimation repairs. A removed
channel is zero at every layer that read it: it stops varying, and its mean goes too. Re-estimating a
batch norm absorbs a constant shift of its input, so the mean's loss is repaired wherever a batch norm
sits on the way, and only there: a layer a batch norm reads (a conv before its BN) loses the variation
alone, while what reaches the output with no batch norm between (the classifier reading the pooled
features, a shortcut adding into the stream that feeds it, a squeeze-excitation layer) loses the mean
as well. To first order:

    s_c(x) = sum over consumers L of c, and positions p, of
             (a_Lc(x, p) - mean_Lc) * dg(x)/da_Lc(x, p)  +  mean_Lc * d~g(x)/da_Lc(x, p)

with g the log-probability of the class the model predicts for x (no labels needed), and d~ the
derivative along the paths on which no batch norm re-estimates the shift (back-propagation with the
gradient stopped at every batch norm's input; zero for a layer a batch norm reads). A channel's
importance is the root mean square of s_c over calibration images: how far, typically, removing it
moves the model's confidence in its own answer after batch-norm re-estimation. Scores of all groups
are on that one scale. (Measured at matched MACs over eight models: do(channel := its mean) at every
consumer, the mean assumed repaired everywhere, and do(channel := 0), repaired nowhere, each averaged
lower top-1; BENCHMARKS.md, criteria at matched MACs.) do(channel := 0)'s effects come from the same
pass (the products alone) and are kept as `unrepaired_importances_`: where re-estimation repairs less
than this first-order estimate assumes, they rank channels better, and auto allocation measures which
is the case (compress.plans.allocation_candidates).

Cost: one forward and backward pass over `max_images` calibration images, and a second backward only
towards the layers whose output no batch norm reads directly (usually the classifier alone, which
costs nothing: the second backward stops there); the mean is not needed during the pass, since
s_c = sum_p a * grad - mean * sum_p (grad - grad~). Memory: per consumer and image the two sums over
positions (at most `max_images` rows), independent of the calibration set's size.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import progress
from .calibration import batch_images
from .graph import ChannelGraph, build_channel_graph, forward_with_hooks, layer_scores_from_groups

SumAcross = Callable[[list[torch.Tensor]], None]


class TotalEffectScorer:
    """Score each group channel by its total effect on the model's output (see the module docstring).

    Parameters
    ----------
    max_images:
        Calibration images used (the first ones the loader gives).

    Attributes (after `fit`)
    ------------------------
    importances_: dict pruning-group root -> per-channel total effect (rms over images)
    unrepaired_importances_: the same for do(channel := 0) with nothing repaired: the mean's loss counted
        at every consumer, as if no batch norm were re-estimated (a candidate of auto allocation,
        compress.plans.allocation_candidates)
    renormalised_: consumer layers whose output a batch norm reads: the mean their removed inputs leave
        behind is absorbed when it is re-estimated
    consumer_importances_: dict consumer layer -> per input feature, the effect through that layer alone
    layer_importances_: dict conv/linear layer -> importance of each of its output filters (its group's)
    graph_: the traced ChannelGraph
    n_images_, fit_seconds_: images used, wall time
    """

    def __init__(self, max_images: int = 512):
        self.max_images = max_images

    def fit(
        self,
        model: nn.Module,
        batches: Iterable,
        example_inputs: torch.Tensor | None = None,
        sum_across: SumAcross | None = None,
    ) -> TotalEffectScorer:
        """`collect` then `solve`. The caller's model is never changed."""
        return self.collect(model, batches, example_inputs).solve(sum_across)

    def collect(
        self, model: nn.Module, batches: Iterable, example_inputs: torch.Tensor | None = None
    ) -> TotalEffectScorer:
        """Keep a copy of `model`, its traced graph and the first `max_images` images of `batches`."""
        if not (isinstance(self.max_images, int) and self.max_images >= 1):
            raise ValueError(f"max_images must be a positive integer, got {self.max_images!r}")
        self._start = time.perf_counter()
        self._observed = copy.deepcopy(model).eval()
        self._batches = self._images(batches)  # kept for the two passes: at most max_images of them
        example = example_inputs if example_inputs is not None else self._batches[0][:2]
        self.graph_ = build_channel_graph(self._observed, example)
        self.renormalised_ = read_by_batchnorm(self._observed, list(self.graph_.consumers), example)
        for parameter in self._observed.parameters():  # gradients are wanted for activations only
            parameter.requires_grad_(False)
        return self

    def solve(self, sum_across: SumAcross | None = None) -> TotalEffectScorer:
        """One forward and backward pass over the kept images. `sum_across` sums lists of tensors over
        data-parallel processes (each one holding its shard), so every process gets the scores of all
        the images."""
        if not hasattr(self, "_batches"):
            raise RuntimeError("call collect(model, batches) before solve()")
        graph = self.graph_
        sums, counts, products, repaired = self._pass(self._observed, graph, self._batches)
        if sum_across is not None:
            sum_across([*sums.values(), *counts.values()])
        # s(x) = sum_p (a - mean) * grad + mean * grad~ = sum_p a * grad - mean * sum_p (grad - grad~): the
        # mean is known only after the pass, so the pass keeps both per-image sums (images x features, at
        # most max_images rows).
        effects = {
            name: products[name] - (sums[name] / counts[name].clamp(min=1)) * repaired[name] for name in products
        }
        # The products alone are do(channel := 0)'s effects, nothing repaired (`unrepaired_importances_`).
        squares, unrepaired = _group_squares(graph, effects), _group_squares(graph, products)
        consumers = {name: (effect * effect).sum(0) for name, effect in effects.items()}
        totals = [torch.tensor(float(sum(len(b) for b in self._batches)), dtype=torch.float64)]
        totals += [*squares.values(), *unrepaired.values(), *consumers.values()]
        if sum_across is not None:
            sum_across(totals)
        self.n_images_ = int(totals[0].item())
        scale = max(self.n_images_, 1)
        self.importances_ = {root: (s / scale).sqrt().numpy() for root, s in squares.items()}
        self.unrepaired_importances_ = {root: (s / scale).sqrt().numpy() for root, s in unrepaired.items()}
        self.consumer_importances_ = {name: (s / scale).sqrt().numpy() for name, s in consumers.items()}
        self.layer_importances_ = layer_scores_from_groups(graph, self.importances_)
        del self._observed, self._batches  # what the scores needed; the model copy and images can go
        self.fit_seconds_ = time.perf_counter() - self._start
        return self

    def _images(self, batches: Iterable) -> list[torch.Tensor]:
        """The first `max_images` images of `batches`, batch by batch."""
        kept, seen = [], 0
        for batch in batches:
            images = batch_images(batch)[: self.max_images - seen]
            if len(images) == 0:
                break
            kept.append(images)
            seen += len(images)
        if not kept:
            raise ValueError("no calibration batches: the calibration data is empty")
        return kept

    def _pass(
        self, observed: nn.Module, graph: ChannelGraph, batches: list[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], ...]:
        """Per consumer: the sum of each input feature over images and positions, their count, and per
        image the sums over positions of input * gradient and of the gradient batch norms repair (g's
        gradient with respect to that consumer's input alone, less the part along paths with no batch
        norm between the consumer and the output)."""
        captured: dict[str, torch.Tensor] = {}
        sums = {name: torch.zeros(c.n_inputs, dtype=torch.float64) for name, c in graph.consumers.items()}
        counts = {name: torch.zeros((), dtype=torch.float64) for name in graph.consumers}
        products: dict[str, list[torch.Tensor]] = {name: [] for name in graph.consumers}
        repaired: dict[str, list[torch.Tensor]] = {name: [] for name in graph.consumers}
        # Layers a batch norm does not read directly: their mean's loss may reach the output unrepaired.
        exposed = [name for name in graph.consumers if name not in self.renormalised_]
        stopping = [False]  # True during the second backward: gradients stop at every batch norm's input
        # Without batch norms nothing is repaired: the second backward would repeat the first.
        stops = any(_is_batchnorm(m) for m in observed.modules())
        linear = {name for name, c in graph.consumers.items() if isinstance(c.module, nn.Linear)}

        def hook_for(name: str):
            def hook(module, args):
                x = args[0]
                # A tensor several consumers read gets a view per consumer, so each view's gradient is
                # the path through that consumer only; a tensor outside the autograd graph (upstream of
                # every consumer) becomes a leaf.
                x = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
                captured[name] = x
                rows = _rows(x.detach(), name in linear)
                sums[name] += rows.sum((0, 2)).double()
                counts[name] += rows.shape[0] * rows.shape[2]
                return (x, *args[1:])

            return hook

        def stop_at_batchnorm(module, args):
            x = args[0]
            return (_StopGradient.apply(x, stopping), *args[1:]) if x.requires_grad else None

        handles = [c.module.register_forward_pre_hook(hook_for(n)) for n, c in graph.consumers.items()]
        handles += [m.register_forward_pre_hook(stop_at_batchnorm) for m in observed.modules() if _is_batchnorm(m)]
        try:
            for images in progress(batches, desc="total effects", unit="batch"):
                captured.clear()
                with torch.enable_grad():
                    logits = observed(images)
                    log_probs = F.log_softmax(logits, 1)
                    g = log_probs.gather(1, logits.argmax(1, keepdim=True)).sum()
                    names = list(captured)
                    seen = [n for n in exposed if n in captured]
                    twice = stops and bool(seen)
                    stopping[0] = False
                    full = torch.autograd.grad(g, [captured[n] for n in names], retain_graph=twice, allow_unused=True)
                    gradients = dict(zip(names, full, strict=True))
                    if twice:
                        stopping[0] = True
                        second = torch.autograd.grad(g, [captured[n] for n in seen], allow_unused=True)
                        unrepaired = dict(zip(seen, second, strict=True))
                    else:
                        unrepaired = {n: gradients[n] for n in seen}
                for name, grad in gradients.items():
                    x = captured[name].detach()
                    last = name in linear
                    values, grads = _rows(x, last), _rows(_or_zeros(grad, x), last)
                    products[name].append((values * grads).sum(2).double())
                    grads = grads.sum(2)
                    if name in unrepaired:
                        grads = grads - _rows(_or_zeros(unrepaired[name], x), last).sum(2)
                    repaired[name].append(grads.double())
        finally:
            for handle in handles:
                handle.remove()
        return (
            sums,
            counts,
            {n: torch.cat(v) for n, v in products.items()},
            {n: torch.cat(v) for n, v in repaired.items()},
        )


class _StopGradient(torch.autograd.Function):
    """Identity; its backward passes no gradient on while `stopping[0]` is true. Passing none (rather
    than zeros) lets autograd skip everything upstream that only this path reaches."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stopping: list[bool]) -> torch.Tensor:
        ctx.stopping = stopping
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None if ctx.stopping[0] else grad), None


def read_by_batchnorm(model: nn.Module, names: list[str], example_inputs: torch.Tensor) -> set[str]:
    """Those of the layers `names` whose output tensor a batch norm reads (one traced forward pass)."""
    modules = dict(model.named_modules())
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor kept alive, so its id stays its own
    read: set[str] = set()

    def remember(name: str):
        return lambda module, args, output: produced.__setitem__(id(output), (name, output))

    def check(module, args):
        name, _ = produced.get(id(args[0]), (None, None))
        if name is not None:
            read.add(name)

    handles = [modules[n].register_forward_hook(remember(n)) for n in names]
    handles += [m.register_forward_pre_hook(check) for m in model.modules() if _is_batchnorm(m)]
    forward_with_hooks(model, example_inputs, handles)
    return read


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _group_squares(graph: ChannelGraph, effects: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per group root, each channel's per-image effect summed over its consumers, squared and summed
    over images."""
    squares = {}
    for group in graph.groups:
        total = torch.zeros(len(next(iter(effects.values()))), group.channels, dtype=torch.float64)
        for name, idxs, root_idxs in group.links:
            total.index_add_(1, torch.as_tensor(root_idxs), effects[name][:, torch.as_tensor(idxs)])
        squares[group.root] = (total * total).sum(0)
    return squares


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A gradient autograd leaves out (the input does not reach g) is zero."""
    return torch.zeros_like(like) if grad is None else grad


def _rows(x: torch.Tensor, features_last: bool = False) -> torch.Tensor:
    """(images, features, positions): a conv's input channels over its pixels, or a linear layer's
    input features (`features_last`: its last dimension) over any other dimensions, tokens or the
    pixels of a channels-last map (ConvNeXt)."""
    if x.dim() == 4 and not features_last:
        return x.reshape(x.shape[0], x.shape[1], -1)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return x.transpose(1, 2)
