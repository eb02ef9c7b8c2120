"""Data sources: scikit-learn's digits, image folders, and torchvision's data sets by name.

Every source yields disjoint splits: `calibration` (statistics for scoring and batch-norm
re-estimation; drawn from training images where the source has them), `evaluation` (accuracy and
latency inputs) and, when asked for, `training` (fine-tuning: the training images calibration did
not take). Images are normalised with the caller's mean/std and sized to the model's input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .errors import DataError
from .progress import progress

if TYPE_CHECKING:
    from .config import RunConfig

# torchvision data sets reachable by name: torchvision class name, number of classes.
TORCHVISION_DATASETS: dict[str, tuple[str, int]] = {
    "cifar10": ("CIFAR10", 10),
    "cifar100": ("CIFAR100", 100),
    "mnist": ("MNIST", 10),
    "fashion-mnist": ("FashionMNIST", 10),
    "kmnist": ("KMNIST", 10),
}
EVAL_FOLDER_NAMES = ("test", "val", "validation")
# Decoded splits up to this size are kept in memory: every variant is evaluated on the same images.
MATERIALIZE_LIMIT_BYTES = 1 << 30


@dataclass
class DataSplits:
    """Disjoint calibration and evaluation splits, plus what the model needs to know about them."""

    calibration: Dataset
    evaluation: Dataset
    num_classes: int
    class_names: list[str]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)  # what went into the report
    training: Dataset | None = None  # only when asked for: fine-tuning images, disjoint from the others

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        dataset = {"calibration": self.calibration, "evaluation": self.evaluation, "training": self.training}[split]
        if dataset is None:
            raise ValueError(f"no {split} split was loaded")
        return make_loader(dataset, batch_size, shuffle=shuffle, seed=seed)

    def example_batch(self, n: int = 8) -> torch.Tensor:
        """The first `n` calibration images: real inputs for tracing and validation."""
        n = min(n, len(self.calibration))
        return torch.stack([self.calibration[i][0] for i in range(n)])

    def evaluation_batch(self, n: int) -> torch.Tensor:
        """The first `n` evaluation images (repeated when there are fewer): parity and latency inputs."""
        images = next(iter(make_loader(self.evaluation, n)))[0]
        if len(images) < n:
            images = images.repeat(-(-n // len(images)), *([1] * (images.dim() - 1)))[:n]
        return images.contiguous()


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)


def load_splits(
    config: RunConfig, input_size: tuple[int, int, int], mean, std, channels_known: bool = True
) -> DataSplits:
    """The data of a run's `config` for a model taking `input_size` normalised by `mean`/`std`;
    --image-size, --mean and --std override the model's own. Without `channels_known` (a model with
    no convolution to say them), --mean and --std give the channel count too."""
    channels, height, width = input_size
    if config.image_size is not None:
        height = width = config.image_size
    if not channels_known and config.mean is not None:
        channels = len(config.mean)
    return load_data(
        config.data,
        input_size=(channels, height, width),
        mean=config.mean or mean,
        std=config.std or std,
        root=config.data_root,
        calibration_size=config.calibration_size,
        evaluation_size=config.eval_size,
        seed=config.seed,
        download=config.download,
        training=config.finetune_epochs > 0,
        training_size=config.finetune_size,
    )


def load_data(
    source: str = "digits",
    *,
    input_size: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
    root: str | Path | None = None,
    calibration_size: int = 2000,
    evaluation_size: int | None = None,
    seed: int = 0,
    download: bool = False,
    training: bool = False,
    training_size: int | None = None,
) -> DataSplits:
    """Load `source` as calibration and evaluation splits sized and normalised for the model.

    `source` is "digits", a torchvision data set name (see TORCHVISION_DATASETS; `root` is where it
    lives, `download` fetches it there), or a directory in the layout torchvision's ImageFolder reads.
    A directory with `train/` and `test/` (or `val/`) subfolders calibrates on train and evaluates on
    test; a single class-folder tree is split, stratified and seeded, into the two.

    With `training`, the training images calibration did not take become the `training` split (at
    most `training_size` of them, stratified); a single class-folder tree then gives half of what is
    not calibration to training and half to evaluation.
    """
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != input_size[0] or len(std) != input_size[0]:
        raise DataError(
            f"mean/std have {len(mean)}/{len(std)} values but the model takes {input_size[0]} channels; "
            "give one value per channel with --mean and --std"
        )
    if any(s <= 0 for s in std):
        raise DataError(f"std must be positive, got {std}")
    if source == "digits":
        splits = _digits(input_size, mean, std)
    elif source.lower() in TORCHVISION_DATASETS:
        splits = _torchvision_dataset(source.lower(), root, download, input_size, mean, std)
    else:
        splits = _image_folder(Path(source), input_size, mean, std, calibration_size, seed, training)

    pool = splits.calibration
    splits.calibration, rest = _take(pool, calibration_size, seed, "calibration")
    if training:
        if splits.training is None:  # the training images calibration did not take
            splits.training = rest
        if splits.training is None or len(splits.training) == 0:
            raise DataError(
                f"no training images left for fine-tuning: calibration takes all {len(pool)} of them; "
                "lower --calibration-size"
            )
        if training_size is not None:
            splits.training, _ = _take(splits.training, training_size, seed, "training")
        splits.training = materialize(splits.training, "training")
        splits.info.update(training_images=len(splits.training))
    if evaluation_size is not None:
        splits.evaluation, _ = _take(splits.evaluation, evaluation_size, seed, "evaluation")
    splits.calibration = materialize(splits.calibration, "calibration")
    splits.evaluation = materialize(splits.evaluation, "evaluation")
    splits.info.update(calibration_images=len(splits.calibration), evaluation_images=len(splits.evaluation))
    return splits


# -- scikit-learn digits ---------------------------------------------------------------------------

DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0  # fixed: the shipped checkpoint was trained on exactly this training split


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed, stratified 70/30 split of scikit-learn's 1,797 digits: pixels in [0, 1], (N, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    return tuple(
        train_test_split(
            images,
            digits.target.astype(np.int64),
            test_size=DIGITS_TEST_FRACTION,
            stratify=digits.target,
            random_state=DIGITS_SPLIT_SEED,
        )
    )  # x_train, x_test, y_train, y_test


def _digits(input_size, mean, std) -> DataSplits:
    x_train, x_test, y_train, y_test = digits_arrays()

    def prepare(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x).unsqueeze(1)  # (N, 1, 8, 8)
        return normalize(resize_tensor(t, input_size), mean, std)

    return DataSplits(
        calibration=TensorDataset(prepare(x_train), torch.from_numpy(y_train)),
        evaluation=TensorDataset(prepare(x_test), torch.from_numpy(y_test)),
        num_classes=10,
        class_names=[str(d) for d in range(10)],
        input_size=input_size,
        mean=mean,
        std=std,
        info={
            "source": "digits",
            "split": "scikit-learn digits, stratified 70/30 (random_state=0): "
            "calibration from the training part, evaluation on the test part",
        },
    )


def resize_tensor(images: torch.Tensor, input_size: tuple[int, int, int]) -> torch.Tensor:
    """Fit (N, C, H, W) images in [0, 1] to the model's channels and size."""
    channels, height, width = input_size
    if images.shape[1] != channels:
        if images.shape[1] == 1:
            images = images.expand(-1, channels, -1, -1)
        elif channels == 1:
            images = images.mean(1, keepdim=True)
        else:
            raise DataError(f"cannot turn {images.shape[1]}-channel images into {channels}-channel input")
    if tuple(images.shape[2:]) != (height, width):
        images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    return images.contiguous()


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - m) / s


# -- image folders and torchvision data sets -------------------------------------------------------


def _transform(input_size, mean, std):
    from torchvision import transforms

    channels, height, width = input_size
    return transforms.Compose(
        [
            transforms.Grayscale(1) if channels == 1 else transforms.Lambda(_to_rgb),
            transforms.Resize((height, width)) if height != width else transforms.Resize(height),
            transforms.CenterCrop((height, width)),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def _to_rgb(image):
    return image.convert("RGB")


class _CheckedImageFolder:
    """torchvision's ImageFolder whose read errors name the file that failed."""

    def __init__(self, root: Path, transform):
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(str(root), transform=transform)
        except FileNotFoundError as exc:
            raise DataError(
                f"no images found in {root}: expected one sub-folder per class holding image files "
                "(the layout torchvision.datasets.ImageFolder reads)"
            ) from exc
        self.classes = self.folder.classes
        self.targets = self.folder.targets

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        try:
            return self.folder[index]
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises these for unreadable files
            path = self.folder.samples[index][0]
            raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from exc


def _image_folder(
    root: Path, input_size, mean, std, calibration_size: int, seed: int, training: bool = False
) -> DataSplits:
    if not root.exists():
        raise DataError(
            f"data not found: {root} is not a directory, 'digits', or a torchvision data set name "
            f"({', '.join(TORCHVISION_DATASETS)})"
        )
    if not root.is_dir():
        raise DataError(f"data source {root} is a file; pass a directory of class folders")
    transform = _transform(input_size, mean, std)
    eval_dir = next((root / n for n in EVAL_FOLDER_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and eval_dir is not None:
        calibration = _CheckedImageFolder(root / "train", transform)
        evaluation = _CheckedImageFolder(eval_dir, transform)
        if calibration.classes != evaluation.classes:
            raise DataError(
                f"the class folders of {root / 'train'} and {eval_dir} differ "
                f"({_diff(calibration.classes, evaluation.classes)}); both splits need the same classes"
            )
        split = f"calibration from {root / 'train'}, evaluation on {eval_dir}"
        train_split = None
    else:
        folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        halves = [n for n in ("train", *EVAL_FOLDER_NAMES) if n in folders]
        if halves and len(halves) == len(folders):  # one half of a split layout, not a class called "train"
            missing = "train/" if halves[0] != "train" else " or ".join(f"{n}/" for n in EVAL_FOLDER_NAMES)
            raise DataError(
                f"{root} has {halves[0]}/ but no {missing}; give both splits, or one folder of class folders"
            )
        folder = _CheckedImageFolder(root, transform)
        calibration, evaluation = _split_folder(folder, calibration_size, seed, root)
        calibration.classes = evaluation.classes = folder.classes
        train_split = None
        if training:  # half of what calibration left trains, half evaluates
            targets = np.asarray(folder.targets)[evaluation.indices]
            if len(evaluation) < 2:
                raise DataError(f"{root} holds too few images to split off training images")
            first, second = _stratified_split(targets, len(evaluation) // 2, seed)
            indices = np.asarray(evaluation.indices)
            train_split = _LabelledSubset(folder, indices[first].tolist())
            evaluation = _LabelledSubset(folder, indices[second].tolist())
            evaluation.classes = folder.classes
        split = (
            f"{root} split into {len(calibration)} calibration"
            + (f", {len(train_split)} training" if train_split is not None else "")
            + f" and {len(evaluation)} evaluation images (stratified, seed {seed})"
        )
    return DataSplits(
        calibration=calibration,
        evaluation=evaluation,
        num_classes=len(calibration.classes),
        class_names=list(calibration.classes),
        input_size=input_size,
        mean=mean,
        std=std,
        info={"source": "image-folder", "root": str(root), "split": split},
        training=train_split,
    )


def _diff(a: Sequence[str], b: Sequence[str]) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return f"only in the first: {only_a[:5]}, only in the second: {only_b[:5]}"


class _LabelledSubset(Subset):
    classes: list[str]


def _split_folder(folder: _CheckedImageFolder, calibration_size: int, seed: int, root: Path):
    n, targets = len(folder), np.asarray(folder.targets)
    n_classes = len(folder.classes)
    # Half of a small folder at most goes to calibration: evaluation needs images too.
    n_calib = min(calibration_size, n // 2)
    if n_calib < 1 or n - n_calib < 1:
        raise DataError(f"{root} holds {n} images: too few to split into calibration and evaluation")
    calib_idx, eval_idx = _stratified_split(targets, n_calib, seed, stratify=n_calib >= n_classes)
    return _LabelledSubset(folder, calib_idx), _LabelledSubset(folder, eval_idx)


def _stratified_split(targets: np.ndarray, n_first: int, seed: int, stratify: bool = True):
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(targets))
    counts = np.bincount(targets)
    can_stratify = stratify and counts[counts > 0].min() >= 2 and n_first >= len(counts[counts > 0])
    first, second = train_test_split(
        indices, train_size=n_first, random_state=seed, stratify=targets if can_stratify else None
    )
    return sorted(first.tolist()), sorted(second.tolist())


def _undo_download(root: Path, before: set[Path], created: list[Path]) -> None:
    """Remove what a failed download wrote: the entries of `root` it added (folders, partial
    files), then `root` and its parents in `created` (those it made) if they are empty now."""
    import shutil

    for entry in set(root.iterdir()) - before if root.is_dir() else ():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for folder in created:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _missing_parents(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _torchvision_dataset(name: str, root, download: bool, input_size, mean, std) -> DataSplits:
    import torchvision.datasets as tvd

    class_name, num_classes = TORCHVISION_DATASETS[name]
    root = Path(root) if root is not None else Path("data")
    cls = getattr(tvd, class_name)
    transform = _transform(input_size, mean, std)
    created = _missing_parents(root)
    before = set(root.iterdir()) if root.is_dir() else set()
    try:
        train = cls(str(root), train=True, transform=transform, download=download)
        test = cls(str(root), train=False, transform=transform, download=download)
    except (RuntimeError, OSError) as exc:
        if not download:
            raise DataError(
                f"{name} not found or corrupt under {root}; pass --download to fetch it there (needs internet)"
            ) from exc
        _undo_download(root, before, created)  # nothing half-written is left behind
        # torchvision says which file and mirror failed over several lines; the last names the cause
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(exc).__name__
        raise DataError(
            f"could not download {name} to {root} ({cause}); check the network, or copy the data set "
            "there and leave out --download"
        ) from exc
    classes = list(getattr(train, "classes", [str(i) for i in range(num_classes)]))
    return DataSplits(
        calibration=train,
        evaluation=test,
        num_classes=len(classes),
        class_names=classes,
        input_size=input_size,
        mean=mean,
        std=std,
        info={
            "source": name,
            "root": str(root),
            "split": f"calibration from {name}'s training set, evaluation on its test set",
        },
    )


# -- subsets and in-memory copies ------------------------------------------------------------------


def _targets_of(dataset: Dataset) -> np.ndarray | None:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    if isinstance(dataset, Subset):
        parent = _targets_of(dataset.dataset)
        return None if parent is None else parent[np.asarray(dataset.indices)]
    targets = getattr(dataset, "targets", None)
    return None if targets is None else np.asarray(targets)


def _take(dataset: Dataset, size: int, seed: int, what: str) -> tuple[Dataset, Dataset | None]:
    """A stratified, seeded subset of `size` images (all of them if there are fewer), and the rest
    (None when nothing is left)."""
    if size < 1:
        raise DataError(f"{what} size must be at least 1, got {size}")
    n = len(dataset)
    if n == 0:
        raise DataError(f"the {what} split is empty")
    if size >= n:
        return dataset, None
    targets = _targets_of(dataset)
    if targets is None:
        chosen = np.zeros(n, dtype=bool)
        chosen[np.random.default_rng(seed).choice(n, size=size, replace=False)] = True
        first, rest = np.flatnonzero(chosen).tolist(), np.flatnonzero(~chosen).tolist()
    else:
        first, rest = _stratified_split(targets, size, seed)
    return Subset(dataset, first), Subset(dataset, rest)


def materialize(dataset: Dataset, what: str) -> Dataset:
    """Decode `dataset` once into memory when it is small enough; otherwise leave it lazy."""
    if isinstance(dataset, TensorDataset):
        return dataset
    first_image, _ = dataset[0]
    size = first_image.numel() * first_image.element_size() * len(dataset)
    if size > MATERIALIZE_LIMIT_BYTES:
        return dataset
    images, labels = [], []
    loader = DataLoader(dataset, batch_size=256, num_workers=0)
    total = math.ceil(len(dataset) / 256)
    for x, y in progress(loader, total=total, desc=f"reading {what} images", unit="batch"):
        images.append(x)
        labels.append(torch.as_tensor(y))
    return TensorDataset(torch.cat(images), torch.cat(labels).long())
