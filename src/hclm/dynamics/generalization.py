"""Noisy representations ``Z̃ = f(X) + σξ``: the Gaussian-channel information bound and a generalization bound.

The bound of Xu & Raginsky (2017) is applied to a nearest-class-mean head that depends on its training
set only through noisy representations, and ``run_noise_sweep`` compares it with gaps measured on digits.
"""

from __future__ import annotations

import io
import logging
import math
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sklearn.model_selection import train_test_split
from torch import nn

from hclm._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from hclm.experiments.data import Dataset
from hclm.experiments.models import MLPEncoder

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, dict[str, Any]], None]
"""Called as ``progress(done, total, row)`` after each (σ, seed) run."""

ZERO_ONE_SUBGAUSSIAN = 0.5
"""Sub-Gaussian parameter of a loss with values in [0, 1] (Hoeffding's lemma: range/2)."""

PLOT_FILE = "generalization.png"
_DPI = 110


def gaussian_channel_bound(covariance: np.ndarray, sigma: float) -> float:
    """Bound the information of a Gaussian channel: ``I(X; f(X) + σξ) ≤ ½ log det(I + Σ_f/σ²)``.

    ``ξ ~ N(0, I_d)`` is independent of ``X``, so ``I(X; Z̃) = h(Z̃) − h(σξ)`` and
    ``Cov(Z̃) = Σ_f + σ²I``. Among all distributions with a given covariance the Gaussian has the
    largest differential entropy (Cover & Thomas, Elements of Information Theory, ch. 8), so
    ``h(Z̃) ≤ ½ log((2πe)^d det(Σ_f + σ²I))`` while ``h(σξ) = ½ log((2πe)^d σ^{2d})``. The difference
    is the bound, with equality when ``f(X)`` is Gaussian. It needs only a finite covariance of
    ``f(X)``, not Gaussian data.

    Args:
        covariance: ``Σ_f``, symmetric positive semi-definite, shape (d, d).
        sigma: noise standard deviation ``σ > 0``, in the units of ``f``.

    Returns:
        The bound in nats.

    Raises:
        ValueError: ``σ ≤ 0`` or not finite, a non-square or non-finite covariance, or a
            clearly negative eigenvalue.
    """
    _check_sigma(sigma)
    matrix = np.asarray(covariance, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"covariance must be a square (d, d) matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("covariance contains non-finite values; check the representations for NaN or inf")
    eigenvalues = np.linalg.eigvalsh(0.5 * (matrix + matrix.T))
    scale = max(float(np.abs(eigenvalues).max(initial=0.0)), 1.0)
    if eigenvalues.size and eigenvalues[0] < -1e-9 * scale:
        raise ValueError(f"covariance has a negative eigenvalue {eigenvalues[0]:.3g}; pass a covariance matrix")
    return 0.5 * float(np.sum(np.log1p(np.clip(eigenvalues, 0.0, None) / sigma**2)))


def representation_information(z: np.ndarray, sigma: float) -> float:
    """Return :func:`gaussian_channel_bound` with the sample covariance of ``z`` (shape (n, d), ``n ≥ 2``).

    NOTE: the sample covariance estimates ``Σ_f``, so the result estimates the bound.
    """
    rows = _as_rows(z, "z")
    return gaussian_channel_bound(np.cov(rows, rowvar=False).reshape(rows.shape[1], rows.shape[1]), sigma)


def class_conditional_information(z: np.ndarray, labels: np.ndarray, sigma: float) -> float:
    """Return ``Σ_c ½ log det(I + Σ_{f|c}/σ²)`` with the sample covariance of each class of ``z``.

    Raises:
        ValueError: shapes that do not match, ``σ ≤ 0``, or a class with fewer than 2 rows.
    """
    rows = _as_rows(z, "z")
    labels = np.asarray(labels)
    if labels.shape != (rows.shape[0],):
        raise ValueError(f"labels must have shape ({rows.shape[0]},), got {labels.shape}")
    total = 0.0
    for label in np.unique(labels):
        members = rows[labels == label]
        if len(members) < 2:
            raise ValueError(f"class {label!r} has {len(members)} row(s); a class covariance needs at least 2")
        total += gaussian_channel_bound(np.cov(members, rowvar=False).reshape(rows.shape[1], rows.shape[1]), sigma)
    return total


def count_entropy_bound(samples: int, classes: int) -> float:
    """Bound the entropy of the class counts of ``samples`` i.i.d. labels: ``H(N) ≤ (C − 1)·log(n + 1)``.

    The counts are fixed by ``C − 1`` of them, each an integer in ``0 … n``.
    """
    if samples < 1 or classes < 1:
        raise ValueError(f"samples and classes must be >= 1, got {samples} and {classes}")
    return (classes - 1) * math.log(samples + 1)


def mutual_information_gap_bound(information: float, samples: int, subgaussian: float = ZERO_ONE_SUBGAUSSIAN) -> float:
    """Return the Xu & Raginsky (2017) bound ``|E[gen]| ≤ √(2R²·I(S; W)/n)``.

    Source: A. Xu and M. Raginsky, "Information-theoretic analysis of generalization capability of
    learning algorithms", NeurIPS 2017, Theorem 1. It holds when ``ℓ(w, Z)`` is R-sub-Gaussian
    under the data distribution for every ``w`` and ``S`` has ``n`` i.i.d. samples. ``gen`` is the
    population risk minus the empirical risk on ``S`` of the output ``W``, and the expectation is
    over ``S`` and the randomness of the algorithm. A loss in [0, 1] has ``R = 1/2``.

    Args:
        information: ``I(S; W)`` or an upper bound on it, in nats.
        samples: ``n``.
        subgaussian: ``R``.

    Raises:
        ValueError: negative or non-finite ``information``, ``n < 1`` or ``R ≤ 0``.
    """
    if not (math.isfinite(information) and information >= 0):
        raise ValueError(f"information must be a finite number >= 0 (nats), got {information}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not (math.isfinite(subgaussian) and subgaussian > 0):
        raise ValueError(f"subgaussian must be a finite number > 0, got {subgaussian}")
    return math.sqrt(2.0 * subgaussian**2 * information / samples)


def nearest_mean_head_bound(z: np.ndarray, labels: np.ndarray, sigma: float, classes: int) -> dict[str, float]:
    """Bound the expected 0-1 generalization gap of a nearest-class-mean head on noisy representations.

    Setting: the encoder ``f`` is fixed and independent of the head's training set
    ``S = {(X_i, Y_i)}`` of ``n`` i.i.d. samples in which every class occurs. The head depends on
    ``S`` only through the class means ``μ̃_c`` of ``Z̃_i = f(X_i) + σξ_i`` (one noise draw per sample),
    and predicts ``argmin_c ‖z̃ − μ̃_c‖``. The loss is the 0-1 loss averaged over fresh noise,
    which lies in [0, 1].

    Since ``W = (μ̃_c)`` is a function of ``(N, μ̃)`` with ``N`` the class counts,
    ``I(S; W) ≤ H(N) + I(S; μ̃ | N)``. Given the counts, ``μ̃_c = μ_c + (σ/√n_c)·ξ̄_c`` with
    ``Cov(μ_c | N) = Σ_{f|c}/n_c``, and the Gaussian-channel argument of
    :func:`gaussian_channel_bound` gives ``I(S; μ̃ | N) ≤ Σ_c ½ log det(I + Σ_{f|c}/σ²)``; the
    ``n_c`` cancel. ``H(N)`` is bounded by :func:`count_entropy_bound`. Then
    :func:`mutual_information_gap_bound` with ``R = 1/2`` bounds ``|E[gen]|``.

    NOTE: ``Σ_{f|c}`` is estimated by the class covariances of ``z``, so the result estimates the bound.

    Args:
        z: clean representations ``f(X)`` of the head's training set, shape (n, d).
        labels: their labels, shape (n,).
        sigma: noise standard deviation ``σ > 0``.
        classes: number of classes ``C``.

    Returns:
        ``count_entropy``, ``channel_information`` (both in nats), ``information`` (their sum),
        ``samples`` and ``bound`` (on the accuracy gap, a fraction).
    """
    count_entropy = count_entropy_bound(len(labels), classes)
    channel = class_conditional_information(z, labels, sigma)
    information = count_entropy + channel
    return {
        "count_entropy": count_entropy,
        "channel_information": channel,
        "information": information,
        "samples": len(labels),
        "bound": mutual_information_gap_bound(information, len(labels)),
    }


class NoiseSweepConfig(BaseModel):
    """Settings of the noise sweep on digits. Unknown keys and invalid values are errors.

    The representation is ``f(x) = √d·g(x)/‖g(x)‖`` with ``g`` an MLP encoder, so every
    representation has norm ``√d`` (mean power 1 per coordinate) and ``σ`` is a noise level
    relative to that scale.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    sigmas: list[float] = Field(
        default_factory=lambda: [0.03, 0.1, 0.3, 1.0, 3.0],
        description="noise standard deviations σ > 0, relative to a per-coordinate RMS of 1",
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], description="seeds of split, initialisation and noise")
    hidden: list[int] = Field(default_factory=lambda: [64], description="hidden widths of the MLP encoder")
    representation_dim: int = Field(16, ge=1, description="dimension d of the representation")
    steps: int = Field(300, ge=1, description="Adam steps of encoder training")
    batch_size: int = Field(128, ge=2, description="rows per training step")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate")
    encoder_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="share of the train split used to train the encoder")
    noise_draws: int = Field(8, ge=1, description="fresh noise draws per sample when measuring accuracy and loss")

    @field_validator("sigmas")
    @classmethod
    def _positive_sigmas(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("sigmas must contain at least one noise level")
        for sigma in value:
            if not (math.isfinite(sigma) and sigma > 0):
                raise ValueError(f"every sigma must be a finite number > 0, got {sigma}; use e.g. 0.1,0.3,1")
        if len(set(value)) != len(value):
            raise ValueError(f"sigmas has duplicates: {value}")
        return sorted(value)

    @field_validator("seeds")
    @classmethod
    def _valid_seeds(cls, value: list[int]) -> list[int]:
        if not value or any(seed < 0 for seed in value) or len(set(value)) != len(value):
            raise ValueError(f"seeds must be one or more distinct integers >= 0, got {value}")
        return value

    @classmethod
    def quick(cls, sigmas: Sequence[float] | None = None) -> "NoiseSweepConfig":
        """Return a smoke-run config: 4 noise levels (or ``sigmas``), 2 seeds, 150 steps."""
        return cls(sigmas=list(sigmas) if sigmas else [0.03, 0.1, 0.3, 1.0], seeds=[0, 1], steps=150)


def run_noise_sweep(
    config: NoiseSweepConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    dataset: Dataset | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Train with noisy representations for each σ and seed, and compare measured gaps with the bound.

    For each (σ, seed) the train split is divided, stratified, into an encoder split ``A`` and a
    head split ``S``. The MLP encoder and a linear softmax head are trained on ``A`` with noise
    ``σξ`` added to the representation at every step. Then a nearest-class-mean head is fitted on
    one noisy draw of the representations of ``S``, and its accuracy is measured with fresh noise
    on ``S`` and on the test split. Its gap is the quantity that :func:`nearest_mean_head_bound`
    bounds. The end-to-end gap (encoder and softmax head on ``A`` against the test split) is
    reported too, but no bound here covers it, because the encoder is trained on ``A`` without noise on its inputs.

    Args:
        config: sweep settings; the defaults when None.
        out_dir: folder for ``summary.json``, ``generalization.png`` and ``report.md``; nothing is
            written when None.
        dataset: the digits split; loaded with the default data config when None.
        progress: called after each run.

    Returns:
        The summary: config, machine, per-run rows and per-σ means and standard deviations.
    """
    config = config or NoiseSweepConfig()
    if dataset is None:
        from hclm.experiments.config import DataConfig
        from hclm.experiments.data import load_dataset

        dataset = load_dataset(DataConfig())

    rows: list[dict[str, Any]] = []
    total = len(config.sigmas) * len(config.seeds)
    previous_threads = torch.get_num_threads()
    # One thread keeps runs reproducible and avoids oversubscribing shared cores.
    torch.set_num_threads(1)
    try:
        for sigma in config.sigmas:
            for seed in config.seeds:
                row = _run_one(config, dataset, sigma, seed)
                rows.append(row)
                logger.info(
                    "sigma %g seed %d: head gap %.4f (bound %.3f), end-to-end gap %.4f",
                    sigma, seed, row["head_gap"], row["head_bound"], row["end_to_end_gap"],
                )
                if progress is not None:
                    progress(len(rows), total, row)
    finally:
        torch.set_num_threads(previous_threads)

    summary = {
        "config": config.model_dump(),
        "dataset": dataset.name,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}",
        "bound": (
            "Xu & Raginsky (2017): |E[gen]| <= sqrt(2 R^2 I(S;W)/n), R = 1/2 for the 0-1 loss; "
            "I(S;W) <= (C-1) log(n+1) + sum_c 1/2 log det(I + Sigma_f|c / sigma^2) for the nearest-class-mean head"
        ),
        "by_sigma": _aggregate(rows, config.sigmas),
        "runs": rows,
    }
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "summary.json", summary)
        plot_noise_sweep(summary, out / PLOT_FILE)
        atomic_write_text(out / "report.md", render_noise_report(summary))
        logger.info("wrote the noise sweep to %s", out)
    return summary


def plot_noise_sweep(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """Plot the measured gaps, the accuracies and the information bounds against σ into a PNG.

    The left panel shows the nearest-class-mean head's accuracy gap (mean ± std over seeds) with
    its bound, and the end-to-end gap, which no bound covers. The middle panel shows train and
    test accuracies, and the right panel the Gaussian-channel information in nats on a log scale.

    Returns:
        The path of the written PNG.
    """
    table = summary["by_sigma"]
    sigmas = np.array([row["sigma"] for row in table])

    def column(name: str) -> np.ndarray:
        return np.array([row[name] for row in table], dtype=np.float64)

    figure = Figure(figsize=(16.2, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    gap_axis, accuracy_axis, information_axis = figure.subplots(1, 3)

    gap_axis.errorbar(sigmas, column("head_gap_mean"), yerr=column("head_gap_std"), marker="o", capsize=3,
                      color="tab:blue", label="NCM head: train − test accuracy")
    gap_axis.plot(sigmas, column("head_bound_mean"), marker="s", color="tab:red", linestyle="--",
                  label="bound √(I(S;W)/(2n)) on |E gap|")
    gap_axis.errorbar(sigmas, column("end_to_end_gap_mean"), yerr=column("end_to_end_gap_std"), marker="^", capsize=3,
                      color="0.45", label="end-to-end (no bound applies)")
    gap_axis.axhline(0.0, color="0.6", linewidth=0.8)
    gap_axis.set_xscale("log")
    gap_axis.set_xlabel("noise σ (per-coordinate RMS of f is 1)")
    gap_axis.set_ylabel("accuracy gap (fraction)")
    gap_axis.set_title("Generalization gap and its bound")
    gap_axis.legend(fontsize="small")

    for name, label, style in (
        ("head_train_accuracy", "NCM head, train (S)", ("tab:blue", "-")),
        ("head_test_accuracy", "NCM head, test", ("tab:blue", "--")),
        ("end_to_end_train_accuracy", "end-to-end, train (A)", ("0.45", "-")),
        ("end_to_end_test_accuracy", "end-to-end, test", ("0.45", "--")),
    ):
        accuracy_axis.errorbar(sigmas, column(f"{name}_mean"), yerr=column(f"{name}_std"), marker="o", capsize=3,
                               color=style[0], linestyle=style[1], label=label)
    accuracy_axis.set_xscale("log")
    accuracy_axis.set_xlabel("noise σ")
    accuracy_axis.set_ylabel("accuracy with fresh noise")
    accuracy_axis.set_title("Accuracy")
    accuracy_axis.legend(fontsize="small")

    information_axis.plot(sigmas, column("representation_information_mean"), marker="o", color="tab:purple",
                          label="I(X; Z̃) ≤ ½ log det(I + Σ_f/σ²)")
    information_axis.plot(sigmas, column("channel_information_mean"), marker="s", color="tab:green",
                          label="Σ_c ½ log det(I + Σ_f|c/σ²)")
    information_axis.axhline(table[0]["count_entropy"], color="0.5", linestyle=":", label="(C−1)·log(n+1), class counts")
    information_axis.set_xscale("log")
    information_axis.set_yscale("log")
    information_axis.set_xlabel("noise σ")
    information_axis.set_ylabel("nats (log scale)")
    information_axis.set_title("Information through the noisy channel")
    information_axis.legend(fontsize="small")
    for axis in (gap_axis, accuracy_axis, information_axis):
        axis.grid(True, which="major", alpha=0.3)

    figure.suptitle(f"Noisy representations on {summary['dataset']}: mean ± std over {len(summary['config']['seeds'])} seeds")
    return _save_png(figure, Path(path))


def render_noise_report(summary: dict[str, Any]) -> str:
    """Render the sweep summary as Markdown: the setting, the bound with its assumptions, and a table per σ."""
    config = summary["config"]
    lines = [
        "# Noisy representations: measured generalization gap and an information bound",
        "",
        f"Data: {summary['dataset']}. Machine: {summary['machine']}.",
        f"Encoder: MLP 64 → {config['hidden']} → {config['representation_dim']}, output scaled to norm √d; "
        f"{config['steps']} Adam steps (lr {config['lr']:g}, batch {config['batch_size']}) on the encoder split "
        f"({config['encoder_fraction']:.0%} of the train split) with noise σξ on the representation. Seeds: {config['seeds']}.",
        "",
        "Bounded quantity: the accuracy gap (train on S minus test, both with fresh noise) of a nearest-class-mean (NCM)",
        "head fitted on one noisy draw of the representations of the head split S, with the encoder fixed.",
        "Assumptions: S is i.i.d. and independent of the encoder, every class occurs in S, and the head depends on S",
        "only through the noisy class means. Under them, Xu & Raginsky (2017, Theorem 1) with R = 1/2 for the 0-1 loss gives",
        "|E[gap]| ≤ √(I(S;W)/(2n)), and I(S;W) ≤ (C−1)·log(n+1) + Σ_c ½ log det(I + Σ_f|c/σ²).",
        "The class covariances Σ_f|c are sample estimates, so the bound column is an estimate of the bound.",
        "The digits split is a draw without replacement from a finite set, which the i.i.d. assumption idealizes.",
        "The end-to-end gap (encoder and softmax head on A) is not covered, because the encoder is trained on A directly.",
        "",
        "| σ | NCM train acc | NCM test acc | NCM gap | bound | I(S;W) bound (nats) | I(X;Z̃) bound (nats) "
        "| end-to-end train acc | end-to-end test acc | end-to-end gap | end-to-end loss gap |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary["by_sigma"]:
        cells = [
            f"{row['sigma']:g}",
            _mean_std(row, "head_train_accuracy"),
            _mean_std(row, "head_test_accuracy"),
            _mean_std(row, "head_gap"),
            f"{row['head_bound_mean']:.3f}",
            f"{row['information_mean']:.1f}",
            f"{row['representation_information_mean']:.1f}",
            _mean_std(row, "end_to_end_train_accuracy"),
            _mean_std(row, "end_to_end_test_accuracy"),
            _mean_std(row, "end_to_end_gap"),
            _mean_std(row, "end_to_end_loss_gap"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    bound_held = all(row["head_gap_mean"] <= row["head_bound_mean"] for row in summary["by_sigma"])
    lines += [
        "",
        f"The mean NCM gap is below the bound at {'every' if bound_held else 'not every'} σ.",
        "Losses are cross-entropy in nats; accuracies and gaps are fractions; mean ± std over seeds.",
        "",
    ]
    return "\n".join(lines)


def _run_one(config: NoiseSweepConfig, dataset: Dataset, sigma: float, seed: int) -> dict[str, Any]:
    x_encoder, x_head, y_encoder, y_head = train_test_split(
        dataset.x_train, dataset.y_train, test_size=1.0 - config.encoder_fraction, random_state=seed, stratify=dataset.y_train
    )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(1_000 + seed)
    encoder = MLPEncoder(dataset.features, config.hidden, config.representation_dim)
    head = nn.Linear(config.representation_dim, dataset.classes)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(head.parameters()), lr=config.lr)
    inputs, targets = torch.from_numpy(x_encoder), torch.from_numpy(y_encoder)
    size = min(config.batch_size, len(targets))
    for _ in range(config.steps):
        rows = torch.randperm(len(targets), generator=generator)[:size]
        noisy = _normalized(encoder(inputs[rows])) + sigma * torch.randn(size, config.representation_dim, generator=generator)
        loss = F.cross_entropy(head(noisy), targets[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        clean = {
            name: _normalized(encoder(torch.from_numpy(x)))
            for name, x in (("encoder", x_encoder), ("head", x_head), ("test", dataset.x_test))
        }
        labels = {"encoder": y_encoder, "head": y_head, "test": dataset.y_test}
        end_to_end = {name: _noisy_softmax_metrics(head, clean[name], labels[name], sigma, config.noise_draws, generator)
                      for name in ("encoder", "test")}
        noisy_head = clean["head"] + sigma * torch.randn(clean["head"].shape, generator=generator)
        means = torch.stack([noisy_head[torch.from_numpy(y_head == label)].mean(dim=0) for label in range(dataset.classes)])
        head_train = _nearest_mean_accuracy(means, clean["head"], y_head, sigma, config.noise_draws, generator)
        head_test = _nearest_mean_accuracy(means, clean["test"], dataset.y_test, sigma, config.noise_draws, generator)

    z_head = clean["head"].numpy().astype(np.float64)
    bound = nearest_mean_head_bound(z_head, y_head, sigma, dataset.classes)
    return {
        "sigma": sigma,
        "seed": seed,
        "head_samples": len(y_head),
        "head_train_accuracy": head_train,
        "head_test_accuracy": head_test,
        "head_gap": head_train - head_test,
        "head_bound": bound["bound"],
        "count_entropy": bound["count_entropy"],
        "channel_information": bound["channel_information"],
        "information": bound["information"],
        "representation_information": representation_information(z_head, sigma),
        "end_to_end_train_accuracy": end_to_end["encoder"]["accuracy"],
        "end_to_end_test_accuracy": end_to_end["test"]["accuracy"],
        "end_to_end_gap": end_to_end["encoder"]["accuracy"] - end_to_end["test"]["accuracy"],
        "end_to_end_train_loss": end_to_end["encoder"]["loss"],
        "end_to_end_test_loss": end_to_end["test"]["loss"],
        "end_to_end_loss_gap": end_to_end["test"]["loss"] - end_to_end["encoder"]["loss"],
    }


def _normalized(g: torch.Tensor) -> torch.Tensor:
    """Scale each row to norm √d, so the per-coordinate RMS of the representation is 1."""
    return F.normalize(g, dim=1) * math.sqrt(g.shape[1])


def _noisy_softmax_metrics(
    head: nn.Module, z: torch.Tensor, labels: np.ndarray, sigma: float, draws: int, generator: torch.Generator
) -> dict[str, float]:
    targets = torch.from_numpy(labels)
    correct, loss = 0.0, 0.0
    for _ in range(draws):
        logits = head(z + sigma * torch.randn(z.shape, generator=generator))
        correct += float((logits.argmax(dim=1) == targets).double().mean())
        loss += float(F.cross_entropy(logits, targets))
    return {"accuracy": correct / draws, "loss": loss / draws}


def _nearest_mean_accuracy(
    means: torch.Tensor, z: torch.Tensor, labels: np.ndarray, sigma: float, draws: int, generator: torch.Generator
) -> float:
    targets = torch.from_numpy(labels)
    correct = 0.0
    for _ in range(draws):
        noisy = z + sigma * torch.randn(z.shape, generator=generator)
        predictions = torch.cdist(noisy, means).argmin(dim=1)
        correct += float((predictions == targets).double().mean())
    return correct / draws


def _aggregate(rows: list[dict[str, Any]], sigmas: Sequence[float]) -> list[dict[str, Any]]:
    metrics = (
        "head_train_accuracy",
        "head_test_accuracy",
        "head_gap",
        "head_bound",
        "information",
        "channel_information",
        "representation_information",
        "end_to_end_train_accuracy",
        "end_to_end_test_accuracy",
        "end_to_end_gap",
        "end_to_end_loss_gap",
    )
    table = []
    for sigma in sigmas:
        group = [row for row in rows if row["sigma"] == sigma]
        entry: dict[str, Any] = {"sigma": sigma, "seeds": len(group), "count_entropy": group[0]["count_entropy"]}
        for name in metrics:
            values = np.array([row[name] for row in group], dtype=np.float64)
            entry[f"{name}_mean"] = float(values.mean())
            entry[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def _mean_std(row: dict[str, Any], name: str) -> str:
    return f"{row[f'{name}_mean']:.3f} ± {row[f'{name}_std']:.3f}"


def _check_sigma(sigma: float) -> None:
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma must be a finite number > 0 (the noise standard deviation), got {sigma}")


def _as_rows(z: np.ndarray, name: str) -> np.ndarray:
    rows = np.asarray(z, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise ValueError(f"{name} must have shape (n, d) with n >= 2, got {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError(f"{name} contains non-finite values; check the encoder output for NaN or inf")
    return rows


def _save_png(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    # Dropping the Software entry keeps the PNG free of the matplotlib version.
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    logger.debug("wrote plot %s", path)
    return path
