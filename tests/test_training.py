"""Fine-tuning: schedules, augmentation, distillation, the training split, and `run --finetune-epochs`."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from builders import FlattenHead, TwoConv, load_script
from PIL import Image
from torch.utils.data import TensorDataset

from compress.cli import main
from compress.config import RunConfig
from compress.data import load_data
from compress.errors import ConfigError, DataError
from compress.training import TrainSettings, augment_batch, distillation_loss, learning_rate, train

FAST = ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]


def test_schedules_start_at_lr_and_follow_their_shape():
    cosine, step = TrainSettings(lr=0.1, schedule="cosine"), TrainSettings(lr=0.1, schedule="step")
    assert learning_rate(cosine, 0, 100) == pytest.approx(0.1)
    assert learning_rate(cosine, 50, 100) == pytest.approx(0.05)
    assert learning_rate(cosine, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert [learning_rate(step, s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    assert learning_rate(TrainSettings(lr=0.1, schedule="constant"), 99, 100) == 0.1


def _placements(out: torch.Tensor, image: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) whose crop of the zero-padded `image` equals `out`."""
    padded = F.pad(image, (pad, pad, pad, pad))
    height, width = image.shape[-2:]
    found = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + height, dx : dx + width]
            found += [(dy, dx, False)] if torch.equal(out, crop) else []
            found += [(dy, dx, True)] if torch.equal(out, crop.flip(-1)) else []
    return found


def test_augmentation_keeps_shapes_and_is_seeded():
    # distinct non-zero values: each output image matches exactly one placement (shift, flip) of its input
    images = torch.arange(1, 32 * 3 * 8 * 8 + 1, dtype=torch.float32).reshape(32, 3, 8, 8)
    a = augment_batch(images, "crop-flip", torch.Generator().manual_seed(1))
    b = augment_batch(images, "crop-flip", torch.Generator().manual_seed(1))
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, augment_batch(images, "crop-flip", torch.Generator().manual_seed(2)))
    assert torch.equal(augment_batch(images, "none", torch.Generator()), images)
    pad = 1  # 1/8 of the side
    crop = augment_batch(images, "crop", torch.Generator().manual_seed(3))
    crops = [_placements(crop[i], images[i], pad) for i in range(32)]
    assert all(len(p) == 1 and not p[0][2] for p in crops)  # a shifted copy of its own image, never flipped
    assert sum(p[0][:2] != (pad, pad) for p in crops) >= 16  # most moved: the crop is not a no-op
    flipped = [_placements(a[i], images[i], pad) for i in range(32)]
    assert all(len(p) == 1 for p in flipped)
    flips = [p[0][2] for p in flipped]
    assert 8 <= sum(flips) <= 24  # about half the images are mirrored, the others not
    i = flips.index(True)
    dy, dx, _ = flipped[i][0]
    # a flipped image's rows are its crop's rows reversed
    row = F.pad(images[i], (pad,) * 4)[:, dy + 3, dx : dx + 8]
    assert torch.equal(a[i, :, 3], row.flip(-1))


def test_distillation_loss_mixes_soft_and_hard_targets():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    hard = F.cross_entropy(student, labels)
    assert distillation_loss(student, teacher, labels, 4.0, 0.0) == pytest.approx(float(hard))
    # a student that already matches its teacher pays only the label part
    same = distillation_loss(student, student.clone(), labels, 4.0, 0.7)
    assert float(same) == pytest.approx(0.3 * float(hard), rel=1e-5)
    soft = F.kl_div(F.log_softmax(student / 2, 1), F.softmax(teacher / 2, 1), reduction="batchmean") * 4
    mixed = distillation_loss(student, teacher, labels, 2.0, 0.5)
    assert float(mixed) == pytest.approx(0.5 * float(soft) + 0.5 * float(hard), rel=1e-5)


def _separable(n: int = 96, seed: int = 0) -> TensorDataset:
    """Two classes told apart by the sign of the mean of channel 0."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randn(n, 3, 8, 8, generator=generator) * 0.5
    images[:, 0] += (labels.float() * 2 - 1).view(-1, 1, 1)
    return TensorDataset(images, labels)


def test_train_lowers_the_loss_and_is_repeatable():
    data = _separable()
    settings = TrainSettings(epochs=4, lr=0.05, batch_size=16, augment="none", seed=3)
    first, second = TwoConv(classes=2), TwoConv(classes=2)
    second.load_state_dict(first.state_dict())
    result = train(first, data, settings)
    train(second, data, settings)
    losses = [e["loss"] for e in result.epochs]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0]
    assert not first.training  # handed back in eval mode
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_weight_decay_skips_biases_and_norms():
    # one full-batch step with and without decay: only conv and linear weights may move differently
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, 4, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator))
    torch.manual_seed(0)
    start = FlattenHead()  # conv with bias -> batch norm -> linear with bias
    stepped = {}
    for decay in (0.0, 0.5):
        model = copy.deepcopy(start)
        settings = TrainSettings(epochs=1, lr=0.1, batch_size=16, weight_decay=decay, augment="none")
        train(model, data, settings)
        stepped[decay] = dict(model.named_parameters())
    changed = {name for name, p in stepped[0.5].items() if not torch.equal(p, stepped[0.0][name])}
    assert changed == {"conv.weight", "fc.weight"}  # conv.bias, bn.weight, bn.bias, fc.bias: no decay


def test_distillation_leaves_the_teacher_alone():
    data = _separable()
    teacher = TwoConv(classes=2).eval()
    before = copy.deepcopy(teacher.state_dict())
    train(TwoConv(classes=2), data, TrainSettings(epochs=1, batch_size=16, distill=True), teacher=teacher)
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name])
    with pytest.raises(ValueError, match="needs a teacher"):
        train(TwoConv(classes=2), data, TrainSettings(epochs=1, distill=True))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be an integer >= 1"),
        ("lr", -1.0, "lr must be a finite number > 0"),
        ("schedule", "linear", "schedule must be one of cosine, step, constant"),
        ("distill_weight", 1.5, "distill_weight must be in [0, 1]"),
    ],
)
def test_train_settings_name_the_bad_value(field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainSettings(**{field: value}).validate()


def _image_tree(root, classes=("cat", "dog"), per_class=20):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


def _rows(dataset) -> set[tuple]:
    return {tuple(dataset[i][0].flatten().tolist()) for i in range(len(dataset))}


RGB = dict(input_size=(3, 8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_training_split_is_what_calibration_left_of_train(tmp_path):
    _image_tree(tmp_path / "data" / "train")
    _image_tree(tmp_path / "data" / "test", per_class=5)
    splits = load_data(str(tmp_path / "data"), **RGB, calibration_size=10, training=True)
    assert (len(splits.calibration), len(splits.training), len(splits.evaluation)) == (10, 30, 10)
    assert not _rows(splits.calibration) & _rows(splits.training)
    capped = load_data(str(tmp_path / "data"), **RGB, calibration_size=10, training=True, training_size=8)
    assert len(capped.training) == 8 and _rows(capped.training) <= _rows(splits.training)
    assert load_data(str(tmp_path / "data"), **RGB, calibration_size=10).training is None  # only when asked


def test_single_folder_splits_three_ways(tmp_path):
    splits = load_data(str(_image_tree(tmp_path / "flat")), **RGB, calibration_size=10, training=True)
    sizes = (len(splits.calibration), len(splits.training), len(splits.evaluation))
    assert sizes == (10, 15, 15)
    rows = [_rows(s) for s in (splits.calibration, splits.training, splits.evaluation)]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])


def test_no_training_images_left_is_a_clear_error():
    spec = dict(input_size=(1, 8, 8), mean=(0.3,), std=(0.4,))
    with pytest.raises(DataError, match=r"no training images left for fine-tuning.*lower --calibration-size"):
        load_data("digits", **spec, calibration_size=5000, training=True)


def test_distill_without_finetuning_is_a_config_error():
    with pytest.raises(ConfigError, match="give --finetune-epochs N"):
        RunConfig(distill=True).validate()
    with pytest.raises(ConfigError, match="finetune_schedule must be one of"):
        RunConfig(finetune_epochs=1, finetune_schedule="linear").validate()


def test_run_finetunes_every_pruned_variant_with_the_same_budget(tmp_path, capsys):
    from compress import load_model
    from compress.artifacts import sha256
    from compress.zoo import get_spec

    spec = get_spec("digits-cnn")
    weights = spec.default_weights
    digest, original = sha256(weights), load_model(spec, num_classes=10).model.state_dict()
    out = tmp_path / "tuned"
    args = ["run", "--out", str(out), "--calibration-size", "300", "--ratios", "0.3", "--random-seeds", "2"]
    args += ["--finetune-epochs", "1", "--distill", "--quiet", *FAST]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["finetune"]["training_images"] == 1257 - 300
    assert report["finetune"]["teacher"] == "original" and report["finetune"]["epochs"] == 1
    pruned = [v for v in report["variants"] if v["criterion"] is not None]
    assert {v["criterion"] for v in pruned} == {"causal", "l1", "random"} and len(pruned) == 4
    for v in pruned:  # random baselines included, each with the same number of steps
        assert v["finetune"]["images_per_epoch"] == pruned[0]["finetune"]["images_per_epoch"] > 0
        assert len(v["finetune"]["epochs"]) == 1 and math.isfinite(v["finetune"]["epochs"][0]["loss"])
        assert "top1_before_finetune" in v["accuracy"]
    assert "finetune" not in report["variants"][0]  # the original only teaches
    assert "after fine-tuning" in (out / "report.md").read_text()
    # the original model and its file are untouched
    assert sha256(weights) == digest
    for name, value in load_model(spec, num_classes=10).model.state_dict().items():
        assert torch.equal(value, original[name])


def test_interrupted_finetuning_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import compress.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compress.pipeline, "train", interrupted)
    out = tmp_path / "stopped"
    config = RunConfig(out=str(out), calibration_size=300, ratios=(0.3,), criteria=("l1",), finetune_epochs=1)
    with pytest.raises(KeyboardInterrupt):
        compress.pipeline.run(config)
    assert not list(tmp_path.iterdir())


def test_diverging_finetuning_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "diverged"
    args = ["run", "--out", str(out), "--calibration-size", "300", "--ratios", "0.3", "--criteria", "l1"]
    code = main([*args, "--finetune-epochs", "1", "--finetune-lr", "1e12", "--quiet", *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert "lower the learning rate (--finetune-lr)" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


class _TinyDigits(nn.Module):
    """A model small enough to train on the digits in a second."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))


@pytest.fixture
def tiny_digits():
    from compress.zoo import _REGISTRY, ModelSpec, register_model

    spec = register_model(ModelSpec("test-tiny-digits", _TinyDigits, (1, 8, 8), (0.3056,), (0.3761,)))
    yield spec
    del _REGISTRY[spec.name]


def test_train_script_writes_a_checkpoint_that_loads_and_a_card_that_describes_it(
    tmp_path, capsys, tiny_digits, digits_splits
):
    from compress import load_model
    from compress.artifacts import sha256
    from compress.evaluation import evaluate

    script = load_script("train")
    out = tmp_path / "tiny.pt"
    args = ["--model", tiny_digits.name, "--data", "digits", "--epochs", "2", "--lr", "0.2", "--batch-size", "64"]
    args += ["--out", str(out)]
    assert script.cli(args) == 0
    printed = capsys.readouterr().out
    state = torch.load(out, weights_only=True)  # a plain state dict
    assert state.keys() == _TinyDigits().state_dict().keys()
    loaded = load_model(tiny_digits, out, num_classes=10).model  # as `compress run --weights` loads it
    assert all(torch.equal(value, state[name]) for name, value in loaded.state_dict().items())
    top1 = evaluate(loaded, digits_splits.loader("evaluation", 256))["top1"]
    assert top1 > 30.0  # it learned something: chance is 10%
    card = out.with_suffix(".md").read_text()
    assert f"top-1 {top1:.2f}%" in printed and f"**top-1 {top1:.2f}%**" in card  # the checkpoint's own accuracy
    assert f"`{sha256(out)}`" in card
    assert "trained on all 1257 images" in card and "2 epochs" in card
    assert "weight decay 0.0005 (not on biases and batch-norm)" in card
    assert len(card.split("Per-epoch mean training loss: ")[1].strip(".\n").split(", ")) == 2
    # an existing checkpoint is refused before training: one line, exit 2, the file as it was
    before = out.read_bytes()
    assert script.cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error:") and "already exists" in err[0]
    assert out.read_bytes() == before
