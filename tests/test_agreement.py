"""Agreement with the unpruned model: auto allocation's label-free measure of a pruned candidate."""

import copy

import pytest
import torch
import torch.nn as nn
from builders import batches

from compress.agreement import Agreement


@pytest.fixture
def reference():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()


def test_agreement_is_the_share_of_images_whose_predicted_class_is_the_references(reference):
    data = batches(n=64, shape=(3, 2, 2), classes=3)
    agreement = Agreement(data).fit(reference)
    assert agreement.score(reference) == 1.0
    swapped = copy.deepcopy(reference)  # classes 0 and 1 trade places: images predicted as 2 still agree
    swapped[1].weight.data = reference[1].weight.data[[1, 0, 2]]
    swapped[1].bias.data = reference[1].bias.data[[1, 0, 2]]
    predicted = torch.cat([reference(x).argmax(1) for x, _ in data])
    assert 0 < (predicted == 2).sum() < 64
    assert agreement.score(swapped) == pytest.approx(float((predicted == 2).double().mean()))


def test_recovery_is_measured_on_a_copy_and_the_candidate_is_left_as_it_was(reference):
    data = batches(n=32, shape=(3, 2, 2), classes=3)
    broken = copy.deepcopy(reference)
    nn.init.zeros_(broken[1].weight)
    nn.init.zeros_(broken[1].bias)
    before = broken[1].weight.clone()

    def restore(model):  # a stand-in recovery that repairs the candidate completely
        model[1].load_state_dict(reference[1].state_dict())

    assert Agreement(data, recover=restore).fit(reference).score(broken) == 1.0
    assert torch.equal(broken[1].weight, before)
    assert Agreement(data).fit(reference).score(broken) < 1.0


def test_agreement_refuses_what_it_cannot_measure(reference):
    with pytest.raises(RuntimeError, match="before fit"):
        Agreement(batches(n=8, shape=(3, 2, 2))).score(reference)
    with pytest.raises(ValueError, match="at least one image"):
        Agreement([]).fit(reference)
    data = batches(n=32, shape=(3, 2, 2), classes=3)
    agreement = Agreement(data).fit(reference)
    agreement.batches = data[:1]  # a loader that does not give the same images again
    with pytest.raises(ValueError, match="the same images every time"):
        agreement.score(reference)


def test_shuffled_batches_are_refused_since_images_are_compared_one_by_one(reference):
    images = torch.utils.data.TensorDataset(torch.randn(16, 3, 2, 2), torch.zeros(16, dtype=torch.long))
    shuffled = torch.utils.data.DataLoader(images, batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="shuffled on every pass: give a DataLoader with shuffle=False"):
        Agreement(shuffled).fit(reference)
    in_order = torch.utils.data.DataLoader(images, batch_size=4)
    assert Agreement(in_order).fit(reference).score(reference) == 1.0


class _Jittered(torch.utils.data.Dataset):
    """Images with random noise added on every read: a random augmentation."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i] + 0.1 * torch.randn_like(self.images[i]), 0


class _Reshuffling(torch.utils.data.Sampler):
    """A new order on every pass, as a custom or distributed sampler may give."""

    def __init__(self, n: int):
        self.n, self.generator = n, torch.Generator().manual_seed(0)

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


def test_batches_that_change_between_passes_are_refused_whatever_changes_them(reference):
    images = torch.randn(16, 3, 2, 2)
    jittered = torch.utils.data.DataLoader(_Jittered(images), batch_size=4)  # in order, but augmented
    agreement = Agreement(jittered).fit(reference)
    with pytest.raises(ValueError, match="other images than the reference saw"):
        agreement.score(reference)
    reshuffled = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, torch.zeros(16)), batch_size=4, sampler=_Reshuffling(16)
    )  # a sampler of the user's own, not a RandomSampler
    agreement = Agreement(reshuffled).fit(reference)
    with pytest.raises(ValueError, match="other images than the reference saw"):
        agreement.score(reference)
