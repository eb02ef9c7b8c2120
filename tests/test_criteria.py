import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import TwoConv, Widening, batches, randomise_batchnorm

from compress.causal.intervention import InterventionScorer
from compress.causal.reference import ReferenceCausalScorer
from compress.cifar_resnet import CifarResNet
from compress.criteria import CRITERIA, importance_factory, make_scorer
from compress.errors import CompressWarning
from compress.plans import PruningPlan, execute_plan
from compress.pruning import layer_widths, output_layer_names, prune
from compress.zoo import DigitsCNN


def _rescaled(model, factors):
    """conv1's filters times `factors`, conv2's inputs divided by them: the same function."""
    rescaled = copy.deepcopy(model)
    with torch.no_grad():
        rescaled.conv1.weight.mul_(factors.view(-1, 1, 1, 1))
        rescaled.conv1.bias.mul_(factors)
        rescaled.conv2.weight.div_(factors.view(1, -1, 1, 1))
    return rescaled


def test_rescaling_keeps_the_causal_ranking_but_changes_the_references():
    torch.manual_seed(1)
    model = TwoConv().eval()
    rescaled = _rescaled(model, torch.tensor([10.0, 0.1, 1.0, 5.0, 0.5, 2.0]))
    x = batches(n=256)
    torch.testing.assert_close(model(x[0][0]), rescaled(x[0][0]), rtol=1e-4, atol=1e-5)
    ranks = {}
    for criterion in ("causal", "causal-reference"):
        a = make_scorer(criterion).fit(model, x).layer_importances_["conv1"]
        b = make_scorer(criterion).fit(rescaled, x).layer_importances_["conv1"]
        ranks[criterion] = (np.argsort(a).tolist(), np.argsort(b).tolist())
    assert ranks["causal"][0] == ranks["causal"][1]
    assert ranks["causal-reference"][0] != ranks["causal-reference"][1]


def test_the_last_conv_layer_is_scored_by_causal_and_uniform_in_the_reference():
    torch.manual_seed(0)
    model = TwoConv().eval()
    x = batches(n=256)
    causal = make_scorer("causal").fit(model, x).layer_importances_["conv2"]
    reference = ReferenceCausalScorer().fit(model, x)
    assert causal.std() > 0.05 * causal.mean()
    np.testing.assert_allclose(reference.layer_importances_["conv2"], np.full(8, 1 / 8))
    np.testing.assert_allclose(reference.layer_importances_["conv1"].sum(), 1.0)
    assert reference.layers_ == ["conv1", "conv2"]


def test_intervention_measures_the_kl_divergence_of_zeroing_a_channel():
    torch.manual_seed(0)
    model = TwoConv().eval()
    with torch.no_grad():
        model.conv2.weight[:, 2] = 0.0  # nothing reads conv1's filter 2
    x = batches(n=48)
    scorer = InterventionScorer(max_images=40, rows_per_pass=64).fit(model, x)
    scores = scorer.importances_["conv1"]
    assert scorer.n_images_ == 40 and scores[2] == pytest.approx(0.0, abs=1e-9)
    assert (np.delete(scores, 2) > 0).all()
    # channel 4 by hand: zero it where conv2 reads it, compare the softmax outputs
    images = torch.cat([b[0] for b in x])[:40]

    def zero_channel(module, args):
        h = args[0].clone()
        h[:, 4] = 0
        return (h,)

    with torch.no_grad():
        clean = F.log_softmax(model(images), 1)
        handle = model.conv2.register_forward_pre_hook(zero_channel)
        hit = F.log_softmax(model(images), 1)
        handle.remove()
    expected = (clean.exp() * (clean - hit)).sum(1).mean().item()
    assert scores[4] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_prunes_through_one_interface_deterministically(criterion):
    torch.manual_seed(0)
    model = randomise_batchnorm(DigitsCNN())
    x = batches(n=64, shape=(1, 8, 8), classes=10)
    example = x[0][0]
    runs = []
    for _ in range(2):
        scorer = make_scorer(criterion, seed=3, intervention_images=16).fit(model, x, example)
        assert set(scorer.importances_) == {"conv1", "conv2", "conv3", "conv4"}
        result = prune(model, importance_factory(criterion, scorer), 0.5, example)
        runs.append(result.pruned_channels())
        assert result.model.conv1.out_channels == 16 and result.model(example).shape == (16, 10)
    assert runs[0] == runs[1]


def test_scored_criteria_need_a_fitted_scorer():
    with pytest.raises(ValueError, match="needs a fitted scorer"):
        importance_factory("intervention", None)
    with pytest.raises(ValueError, match="unknown criterion 'magic'"):
        importance_factory("magic")


def test_option_a_cifar_resnet_prunes_whole_with_every_scored_criterion():
    torch.manual_seed(0)
    model = randomise_batchnorm(CifarResNet(20, num_classes=10, shortcut="A"))
    x = batches(n=32, shape=(3, 32, 32), classes=10)
    for criterion in CRITERIA:
        scorer = make_scorer(criterion, intervention_images=16).fit(model, x)
        result = prune(model, importance_factory(criterion, scorer), 0.5, x[0][0])
        assert result.kept_unpruned == {}, criterion
        assert result.model.conv1.out_channels == 8  # the first residual stream is pruned too
        assert result.model(x[0][0]).shape == (16, 10)


def test_a_group_magnitudes_cannot_score_is_kept_whole_by_them_and_auto_still_tries_their_order_elsewhere():
    torch.manual_seed(0)
    model = randomise_batchnorm(Widening()).eval()
    data = batches(n=32, shape=(3, 8, 8))
    x, protected = data[0][0], output_layer_names(Widening(), data[0][0])
    l1 = make_scorer("l1").fit(model, data, x)
    assert set(l1.importances_) == {"dw", "pw"}  # torch-pruning indexes past the widening conv for `conv`
    with pytest.warns(CompressWarning, match="l1 gives no scores to group"):
        by_l1 = execute_plan(model, PruningPlan("l1", 0.4, "global"), lambda m: l1, x, protected=protected, round_to=2)
    assert layer_widths(by_l1.model)["conv"] == 8 and layer_widths(by_l1.model)["dw"] < 16
    causal = make_scorer("causal").fit(model, data, x)
    later = iter(range(10))  # a stand-in fidelity that prefers each candidate to the ones before it
    result = execute_plan(
        model,
        PruningPlan("causal", 0.4, "auto"),
        lambda m: causal,
        x,
        protected=protected,
        round_to=2,
        normalise="sqrt-total",  # causal's own scale, and no second one to try
        fidelity=lambda m: next(later),
    )
    assert result.allocation_choices[0]["chosen"] == "global-l1-order"  # the last candidate
    removed = result.pruned_channels()
    # `pw`, a plain group (no coupled channels to tie), loses its weakest channels by l1
    assert sorted(removed["pw"]) == sorted(np.argsort(l1.importances_["pw"])[: len(removed["pw"])])
    assert sorted(removed["pw"]) != sorted(np.argsort(causal.importances_["pw"])[: len(removed["pw"])])
