"""Datasets of the comparison experiment: digits, a low-rank Gaussian mixture, and user files."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from hclm.experiments.config import DataConfig, MixtureConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """A stratified train/test split with integer labels ``0 … classes−1``.

    Attributes:
        name: short description for reports.
        x_train, x_test: float32 features, shapes (n_train, p) and (n_test, p).
        y_train, y_test: int64 labels.
        classes: number of classes.
        feature_mean, feature_std: train statistics used to standardize the features (``None`` when
            ``standardize`` is off); ``x_raw = x · std + mean``.
        image_shape: (height, width) of each flattened image, or ``None`` for non-image data.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None
    image_shape: tuple[int, int] | None = None

    @property
    def features(self) -> int:
        """Number of input features."""
        return int(self.x_train.shape[1])


def load_dataset(config: DataConfig) -> Dataset:
    """Load the data named in ``config``, split it stratified, and standardize it on the train part.

    Raises:
        FileNotFoundError: a user file is missing.
        ValueError: a user file has the wrong arrays, columns or values.
    """
    if config.name == "digits":
        bunch = load_digits()
        x, y, name = bunch.data / 16.0, bunch.target, "digits (scikit-learn, 8×8 handwritten digits)"
    elif config.name == "mixture":
        x, y = make_low_rank_mixture(config.mixture, seed=config.split_seed)
        m = config.mixture
        name = f"low-rank Gaussian mixture (dim {m.dim}, rank {m.rank}, {m.classes} classes, noise {m.noise})"
    elif config.name == "npz":
        x, y = read_npz(_existing(config.path))
        name = f"npz file {config.path}"
    else:
        x, y = read_csv(_existing(config.path), str(config.label_column))
        name = f"csv file {config.path}"

    x, y = _validated(np.asarray(x), np.asarray(y), source=name)
    labels, y_index = np.unique(y, return_inverse=True)
    counts = np.bincount(y_index)
    if len(labels) < 2:
        raise ValueError(f"{name}: found a single class ({labels[0].item()!r}); the experiment needs at least 2 classes")
    if counts.min() < 2:
        rare = labels[int(np.argmin(counts))].item()
        raise ValueError(
            f"{name}: class {rare!r} has {int(counts.min())} sample(s); "
            "a stratified split needs at least 2 per class, so remove or merge that class"
        )

    x_train, x_test, y_train, y_test = train_test_split(
        x, y_index, test_size=config.test_fraction, random_state=config.split_seed, stratify=y_index
    )
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    if config.standardize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std

    logger.info("loaded %s: %d train, %d test, %d features, %d classes", name, len(y_train), len(y_test), x.shape[1], len(labels))
    return Dataset(
        name=name,
        x_train=x_train.astype(np.float32),
        y_train=y_train.astype(np.int64),
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.int64),
        classes=len(labels),
        feature_mean=None if mean is None else mean.astype(np.float64),
        feature_std=None if std is None else std.astype(np.float64),
        image_shape=(8, 8) if config.name == "digits" else None,
    )


def make_low_rank_mixture(config: MixtureConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample a Gaussian mixture whose signal lies in a random ``rank``-dim subspace.

    ``x = U(μ_y + ξ) + noise·ε`` with ``U`` a random orthonormal ``dim × rank`` basis, class means
    ``μ_y ~ N(0, separation²·I_rank)``, within-class ``ξ ~ N(0, I_rank)`` and ``ε ~ N(0, I_dim)``.

    Returns:
        ``(x, y)`` with shapes (samples, dim) and (samples,).
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((config.dim, config.rank)))
    means = config.separation * rng.standard_normal((config.classes, config.rank))
    y = np.arange(config.samples) % config.classes
    rng.shuffle(y)
    latent = means[y] + rng.standard_normal((config.samples, config.rank))
    x = latent @ basis.T + config.noise * rng.standard_normal((config.samples, config.dim))
    return x, y


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read arrays ``x`` (n, p) and ``y`` (n,) from an ``.npz`` file."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as an .npz archive: {error}") from None
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            raise ValueError(
                f"{path} has arrays {sorted(archive.files)} but no {missing[0]!r}; "
                "save features as x (n, p) and labels as y (n,), e.g. np.savez(path, x=x, y=y)"
            )
        return archive["x"], archive["y"]


def read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV file with a header row: every column but ``label_column`` is a numeric feature."""
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise ValueError(f"{path} is empty; it needs a header row and data rows") from None
        if label_column not in header:
            raise ValueError(f"{path} has no column {label_column!r}; columns are {header}; set data.label_column")
        label_index = header.index(label_column)
        features, labels = [], []
        for line_number, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}, line {line_number}: expected {len(header)} fields, found {len(row)}")
            labels.append(row[label_index].strip())
            values = []
            for column, cell in enumerate(row):
                if column == label_index:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    raise ValueError(
                        f"{path}, line {line_number}, column {header[column]!r}: {cell!r} is not a number"
                    ) from None
                if not math.isfinite(value):
                    raise ValueError(
                        f"{path}, line {line_number}, column {header[column]!r}: {cell!r} is not a finite number; "
                        "drop or impute that row"
                    )
                values.append(value)
            features.append(values)
    if not features:
        raise ValueError(f"{path} has a header but no data rows")
    return np.array(features, dtype=np.float64), np.array(labels)


def _existing(path: Path | None) -> Path:
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"data file not found: {path}; set data.path to an existing .npz or .csv file")
    return Path(path)


def _validated(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim != 2:
        raise ValueError(f"{source}: features must have shape (n, p), got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{source}: labels must have shape ({len(x)},), got {y.shape}")
    try:
        x = x.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: features must be numeric, got dtype {x.dtype}") from None
    bad = ~np.isfinite(x)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{source}: {int(bad.sum())} non-finite feature value(s), first at sample {row}, column {column} "
            "(both counted from 0); "
            "drop or impute those rows"
        )
    return x, y
