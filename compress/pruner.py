"""One pruned model from Python, pruned as `compress run` prunes each of its variants.

`compress run` scores the model, executes a pruning plan (compress.plans) and re-estimates the batch
norms; `Pruner` does the same for one criterion and one amount, with the run's defaults (auto
allocation spending a MACs budget, scores put on one scale per criterion, channels rounded to
multiples of 4), so that a model pruned from Python is the one the benchmarks measure:

    pruner = compress.Pruner("causal", target_macs_ratio=0.5).fit(model, calibration)
    pruner.model_            # a physically smaller copy; the caller's model is not changed

`compress.prune` stays the low-level step beneath it (uniform ratios or given widths, no recovery).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from .agreement import recalibrated_agreement
from .allocation import DEFAULT_ALLOCATION, DEFAULT_MAX_FRACTION, DEFAULT_NORMALISATION, settings_problem
from .causal.calibration import batch_images
from .criteria import CRITERIA, Scorer, make_scorer
from .plans import PruningPlan, execute_plan
from .pruning import count_macs_params, group_widths, output_layer_names
from .recovery import recalibrate_batchnorm
from .targets import budget_amount, search_macs_ratio

EXAMPLE_IMAGES = 16  # real inputs that trace the graph and validate every pruned group, as `compress run` takes


class Pruner:
    """Prune a copy of a model by `criterion`, as `compress run` prunes one variant.

    Give exactly one of `target_macs_ratio` (keep at most this fraction of the MACs: 0.5 is ~2x fewer)
    and `ratio` (the amount, as `--ratios`: with global or auto allocation the share of the MACs
    removed, with uniform allocation the share of every group's channels). The other settings are
    `compress run`'s options of the same names, with its defaults; `seed` seeds the random baseline.

    `fit(model, calibration)` scores the model on the calibration batches (images or (images, labels);
    `taylor` needs labels), prunes it by the plan, and re-estimates its batch norms on the same batches
    unless `recalibrate` is False. The batches are read several times (a generator is read once into a
    list) and must come in the same order each time: auto allocation compares predictions image by
    image (a DataLoader without shuffling, or a list; a shuffling DataLoader is refused). Learned
    attributes:

    - `model_`: the pruned model (the caller's model is not changed);
    - `scorer_`: the criterion fitted on the original model (compress.criteria.make_scorer), and
      `scores_` its scores, group root -> one score per channel;
    - `amount_`: the amount pruned (from `target_macs_ratio` when that was given);
    - `widths_`: the channels each prunable group kept, `original_widths_` before;
    - `macs_ratio_`: the pruned model's MACs over the original's;
    - `allocation_choices_`: with auto allocation, per step, the allocation kept and each candidate's
      agreement with the original (compress.agreement); empty otherwise;
    - `result_`: the whole `PruneResult` (its `history` rebuilds the pruned model, compress.serialization).
    """

    def __init__(
        self,
        criterion: str = "causal",
        *,
        target_macs_ratio: float | None = None,
        ratio: float | None = None,
        allocation: str = DEFAULT_ALLOCATION,
        steps: int = 1,
        round_to: int | None = 4,
        max_group_ratio: float = DEFAULT_MAX_FRACTION,
        group_normalisation: str = DEFAULT_NORMALISATION,
        recalibrate: bool = True,
        protected: Sequence[str] | None = None,
        effect_images: int = 512,
        seed: int = 0,
    ):
        self.criterion = criterion
        self.target_macs_ratio = target_macs_ratio
        self.ratio = ratio
        self.allocation = allocation
        self.steps = steps
        self.round_to = round_to
        self.max_group_ratio = max_group_ratio
        self.group_normalisation = group_normalisation
        self.recalibrate = recalibrate
        self.protected = protected
        self.effect_images = effect_images
        self.seed = seed

    def fit(self, model: nn.Module, calibration: Iterable, example_inputs: torch.Tensor | None = None) -> Pruner:
        """Score, prune and recover a copy of `model`; `example_inputs` default to the first calibration
        images."""
        self._validate()
        calibration = _reiterable(calibration)
        example = example_inputs if example_inputs is not None else _first_images(calibration, EXAMPLE_IMAGES)
        protected = list(self.protected) if self.protected is not None else output_layer_names(model, example)
        recover = functools.partial(recalibrate_batchnorm, batches=calibration)

        def score(m: nn.Module) -> Scorer:
            scorer = make_scorer(self.criterion, effect_images=self.effect_images, seed=self.seed)
            return scorer.fit(m, calibration, example)

        self.scorer_ = score(model)
        self.scores_ = self.scorer_.importances_
        self.amount_ = self._amount(model, example, protected)
        fidelity = None
        if self.allocation == "auto":  # measured after the recovery the pruned model gets, as in `compress run`
            fidelity = recalibrated_agreement(model, calibration, self.recalibrate).score
        plan = PruningPlan(
            self.criterion,
            self.amount_,
            self.allocation,
            self.steps,
            self.seed if self.criterion == "random" else None,
        )
        self.result_ = execute_plan(
            model,
            plan,
            score,
            example,
            protected=protected,
            round_to=self.round_to,
            recalibrate=recover,
            scorer=self.scorer_,
            max_fraction=self.max_group_ratio,
            normalise=self.group_normalisation,
            fidelity=fidelity,
        )
        self.model_ = self.result_.model
        if self.recalibrate:
            recover(self.model_)
        self.model_.eval()
        self.original_widths_ = group_widths(model, example, protected)
        self.widths_ = group_widths(self.model_, example, protected)
        self.macs_ratio_ = count_macs_params(self.model_, example)[0] / count_macs_params(model, example)[0]
        self.allocation_choices_ = self.result_.allocation_choices
        return self

    def _amount(self, model: nn.Module, example: torch.Tensor, protected: list[str]) -> float:
        if self.ratio is not None:
            return self.ratio
        if self.allocation != "uniform":  # the amount is the share of MACs removed: no search
            return budget_amount(self.target_macs_ratio)
        # uniform shapes do not depend on the scores: the search prunes by magnitude, as `compress run`'s
        search = search_macs_ratio(model, example, self.target_macs_ratio, protected=protected, round_to=self.round_to)
        return search.ratio

    def _validate(self) -> None:
        if (self.target_macs_ratio is None) == (self.ratio is None):
            raise ValueError("give exactly one of target_macs_ratio and ratio")
        for name in ("target_macs_ratio", "ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        problem = settings_problem(self.allocation, self.group_normalisation, self.max_group_ratio)
        if problem:
            raise ValueError(problem)
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")


def _reiterable(batches: Iterable) -> Iterable:
    """`batches` as something that can be iterated more than once (a DataLoader or a list already can;
    an iterator, such as a generator, is read once into a list): scoring, agreement and re-estimation
    each pass over them."""
    return list(batches) if isinstance(batches, Iterator) else batches


def _first_images(batches: Iterable, n: int) -> torch.Tensor:
    taken: list[torch.Tensor] = []
    for batch in batches:
        taken.append(batch_images(batch))
        if sum(len(t) for t in taken) >= n:
            break
    if not taken:
        raise ValueError("calibration holds no batches: give at least one batch of images")
    return torch.cat(taken)[:n]
