"""Open-system scenarios of a run: distribution shift, label noise, compute budget, recovery time."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hclm.experiments.config import ScenarioConfig
from hclm.experiments.data import Dataset

# Offsets of the per-run random streams, so shift noise and label noise never share draws with
# the batch order (10_000 + seed) or the model initialisation (seed).
_SHIFT_NOISE_OFFSET = 20_000
_LABEL_NOISE_OFFSET = 30_000


@dataclass(frozen=True)
class ShiftedData:
    """Train and test sets after a shift: float32 features and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def rotate_images(images: np.ndarray, angle: float) -> np.ndarray:
    """Rotate each image of ``images`` (n, height, width) by ``angle`` degrees counter-clockwise.

    Uses bilinear interpolation (``scipy.ndimage.rotate``, order 1) about the image centre, keeps the
    shape and fills pixels rotated in from outside with 0. Multiples of 90° are exact.
    """
    return ndimage.rotate(images, angle, axes=(2, 1), reshape=False, order=1, mode="constant", cval=0.0)


def rotate_features(x: np.ndarray, dataset: Dataset, angle: float) -> np.ndarray:
    """Rotate standardized flattened images: undo the train standardization, rotate, standardize again."""
    if dataset.image_shape is None:
        raise ValueError(f"{dataset.name} has no image shape; the rotation shift needs image data such as digits")
    raw = x.astype(np.float64)
    if dataset.feature_mean is not None and dataset.feature_std is not None:
        raw = raw * dataset.feature_std + dataset.feature_mean
    rotated = rotate_images(raw.reshape(len(raw), *dataset.image_shape), angle).reshape(len(raw), -1)
    if dataset.feature_mean is not None and dataset.feature_std is not None:
        rotated = (rotated - dataset.feature_mean) / dataset.feature_std
    return rotated.astype(np.float32)


def swap_labels(y: np.ndarray, pairs: list[tuple[int, int]], classes: int) -> np.ndarray:
    """Return ``y`` with the labels of each pair ``(a, b)`` traded: every a becomes b and every b becomes a."""
    mapping = np.arange(classes)
    for a, b in pairs:
        if a >= classes or b >= classes:
            raise ValueError(f"scenario.swap pair {(a, b)} names a class outside 0 … {classes - 1}")
        mapping[a], mapping[b] = b, a
    return mapping[y].astype(np.int64)


def shifted_data(dataset: Dataset, scenario: ScenarioConfig, seed: int) -> ShiftedData:
    """Build the shifted train and test sets of ``scenario.shift``, with noise draws fixed by ``seed``."""
    x_train, y_train, x_test, y_test = dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test
    if scenario.shift == "rotation":
        x_train = rotate_features(x_train, dataset, scenario.angle)
        x_test = rotate_features(x_test, dataset, scenario.angle)
    elif scenario.shift == "noise":
        rng = np.random.default_rng(_SHIFT_NOISE_OFFSET + seed)
        x_train = (x_train + scenario.noise * rng.standard_normal(x_train.shape)).astype(np.float32)
        x_test = (x_test + scenario.noise * rng.standard_normal(x_test.shape)).astype(np.float32)
    else:
        y_train = swap_labels(y_train, scenario.swap, dataset.classes)
        y_test = swap_labels(y_test, scenario.swap, dataset.classes)
    return ShiftedData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def corrupt_labels(y: np.ndarray, classes: int, rate: float, seed: int) -> np.ndarray:
    """Replace ``round(rate · n)`` labels, chosen at random, by a uniformly drawn different label.

    The choice is fixed by ``seed``, and a replaced label never equals the original one.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"scenario.rate must be in [0, 1), got {rate}")
    rng = np.random.default_rng(_LABEL_NOISE_OFFSET + seed)
    count = round(rate * len(y))
    chosen = rng.choice(len(y), size=count, replace=False)
    # Adding an offset in 1 … classes−1 modulo classes draws uniformly among the other labels.
    offsets = rng.integers(1, classes, size=count)
    noisy = y.copy()
    noisy[chosen] = (y[chosen] + offsets) % classes
    return noisy.astype(np.int64)


def recovery_time(losses: list[float] | np.ndarray, at: int, window: int = 10, tolerance: float = 0.1) -> int | None:
    """Count the steps after a shift at step ``at`` until the smoothed training loss recovers.

    The pre-shift level is the mean of the last ``window`` losses before the shift,
    ``loss[max(0, at − window) … at − 1]``. After the shift, the smoothed loss at step ``t ≥ at`` is
    the mean of the post-shift losses ``loss[max(at, t − window + 1) … t]``, so pre-shift steps never
    enter it. The recovery time is the smallest ``t − at`` whose smoothed loss is at most
    ``(1 + tolerance) ×`` the pre-shift level. It is 0 when the first shifted step is already
    within, and ``None`` when the loss never recovers, when ``at`` is 0 or when the run stopped
    before step ``at``. Steps are row positions, so ``losses[i]`` is the loss of step ``i``.
    """
    values = np.asarray(losses, dtype=np.float64)
    if at <= 0 or at >= len(values):
        return None
    pre_level = float(values[max(0, at - window) : at].mean())
    if not math.isfinite(pre_level):
        return None
    threshold = (1.0 + tolerance) * pre_level
    for t in range(at, len(values)):
        smoothed = float(values[max(at, t - window + 1) : t + 1].mean())
        if smoothed <= threshold:
            return t - at
    return None
