import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from compress.data import load_data
from compress.errors import DataError

RGB = dict(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _image_tree(root, classes=("cat", "dog", "emu"), per_class=8, size=(20, 24), mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / c / f"{i:03d}.png")
    return root


def test_digits_split_is_fixed_stratified_and_disjoint(digits_splits):
    calibration, evaluation = digits_splits.calibration, digits_splits.evaluation
    assert (len(calibration), len(evaluation)) == (1257, 540)
    counts = np.bincount(evaluation.tensors[1].numpy(), minlength=10)
    assert counts.min() >= 52 and counts.max() <= 55  # 30% of each class
    assert calibration.tensors[0].shape[1:] == (1, 8, 8)
    flat_c = {tuple(x.flatten().tolist()) for x in calibration.tensors[0][:200]}
    flat_e = {tuple(x.flatten().tolist()) for x in evaluation.tensors[0]}
    assert not flat_c & flat_e
    assert abs(float(calibration.tensors[0].mean())) < 0.05  # normalised with the training statistics


def test_calibration_subset_is_seeded_and_stratified():
    args = dict(input_size=(1, 8, 8), mean=(0.3,), std=(0.4,), calibration_size=200)
    a, b = load_data("digits", **args, seed=1), load_data("digits", **args, seed=1)
    c = load_data("digits", **args, seed=2)
    assert len(a.calibration) == 200
    assert torch.equal(a.calibration.tensors[0], b.calibration.tensors[0])
    assert not torch.equal(a.calibration.tensors[0], c.calibration.tensors[0])
    assert np.bincount(a.calibration.tensors[1].numpy()).min() >= 19


def test_single_image_folder_is_split_into_disjoint_parts(tmp_path):
    root = _image_tree(tmp_path / "images")
    splits = load_data(str(root), **RGB, calibration_size=6, seed=0)
    assert splits.num_classes == 3 and splits.class_names == ["cat", "dog", "emu"]
    assert (len(splits.calibration), len(splits.evaluation)) == (6, 18)
    assert splits.calibration[0][0].shape == (3, 16, 16)
    assert sorted(np.bincount(splits.calibration.tensors[1].numpy())) == [2, 2, 2]


def test_train_and_test_folders_are_used_as_given_and_grey_becomes_rgb(tmp_path):
    _image_tree(tmp_path / "ds" / "train", mode="L")
    _image_tree(tmp_path / "ds" / "test", per_class=3, mode="L")
    splits = load_data(str(tmp_path / "ds"), **RGB)
    assert (len(splits.calibration), len(splits.evaluation)) == (24, 9)
    image = splits.evaluation[0][0]
    assert image.shape == (3, 16, 16) and torch.equal(image[0], image[1])
    assert "train" in splits.info["split"]


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(str(tmp_path / "nowhere"), **RGB)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_data(str(tmp_path / "empty"), **RGB)
    _image_tree(tmp_path / "mismatch" / "train")
    _image_tree(tmp_path / "mismatch" / "test", classes=("cat", "dog", "fox"))
    with pytest.raises(DataError, match="differ"):
        load_data(str(tmp_path / "mismatch"), **RGB)
    root = _image_tree(tmp_path / "broken")
    (root / "cat" / "999.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read image .*999\.png"):
        load_data(str(root), **RGB)
    with pytest.raises(DataError, match="3 channels"):
        load_data("digits", input_size=(3, 8, 8), mean=(0.5,), std=(0.5,))
    _image_tree(tmp_path / "half" / "train")  # a split layout missing its test/: not one class "train"
    with pytest.raises(DataError, match=r"half has train/ but no test/ or val/ or validation/; give both splits"):
        load_data(str(tmp_path / "half"), **RGB)


def test_a_class_called_train_among_others_is_a_class(tmp_path):
    root = _image_tree(tmp_path / "vehicles", classes=("car", "plane", "train"))
    splits = load_data(str(root), **RGB)
    assert splits.num_classes == 3


def _write_idx(path, array, magic):
    with gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes())


def test_torchvision_dataset_by_name_reads_its_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 12)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), 2049)
    splits = load_data("mnist", root=tmp_path, input_size=(1, 8, 8), mean=(0.1,), std=(0.3,), calibration_size=20)
    assert (len(splits.calibration), len(splits.evaluation), splits.num_classes) == (20, 12, 10)
    assert splits.calibration[0][0].shape == (1, 8, 8)
    with pytest.raises(DataError, match="--download"):
        load_data("cifar10", root=tmp_path / "none", **RGB)


def test_a_failed_download_is_named_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    (tmp_path / "notes.txt").write_text("the user's")  # an existing root: only what the download made goes
    for root in (tmp_path, tmp_path / "new" / "data"):
        with pytest.raises(DataError) as info:
            load_data("mnist", root=root, download=True, input_size=(1, 8, 8), mean=(0.1,), std=(0.3,))
        message = str(info.value)
        assert message.startswith(f"could not download mnist to {root} (<urlopen error Name or service not known>)")
        assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
