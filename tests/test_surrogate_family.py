"""Tests of all nine entropy surrogates against independent oracles.

The oracles are closed forms, naive re-derivations in NumPy/SciPy, float64 finite differences
(``torch.autograd.gradcheck``) and the sampling distribution of each estimator on Gaussian data.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln, polygamma

from hclm.surrogates import (
    CodingRate,
    KNNEntropy,
    LogDetEntropy,
    NonFiniteInputError,
    SoftmaxEntropy,
    SoftmaxMarginalEntropy,
    Surrogate,
    Uniformity,
    VarianceEntropy,
    VarianceHinge,
    VonNeumannEntropy,
    available_surrogates,
    coding_rate,
    get_surrogate,
    knn_entropy,
    logdet_entropy,
    softmax_entropy,
    softmax_marginal_entropy,
    uniformity,
    variance_entropy,
    variance_hinge,
    von_neumann_entropy,
)

SURROGATES: dict[str, Callable[..., torch.Tensor]] = {
    "softmax": softmax_entropy,
    "softmax_marginal": softmax_marginal_entropy,
    "variance": variance_entropy,
    "logdet": logdet_entropy,
    "coding_rate": coding_rate,
    "von_neumann": von_neumann_entropy,
    "knn": knn_entropy,
    "uniformity": uniformity,
    "variance_hinge": variance_hinge,
}
MODULES: dict[str, type[Surrogate]] = {
    "softmax": SoftmaxEntropy,
    "softmax_marginal": SoftmaxMarginalEntropy,
    "variance": VarianceEntropy,
    "logdet": LogDetEntropy,
    "coding_rate": CodingRate,
    "von_neumann": VonNeumannEntropy,
    "knn": KNNEntropy,
    "uniformity": Uniformity,
    "variance_hinge": VarianceHinge,
}
NAMES = sorted(SURROGATES)
# The softmax family reads rows as logits, so -inf masks a class and a single row is a valid batch.
SOFTMAX_FAMILY = ("softmax", "softmax_marginal")
BATCH_SURROGATES = tuple(name for name in NAMES if name not in SOFTMAX_FAMILY)
PRECISION_SURROGATES = ("coding_rate", "logdet", "von_neumann")

# Machine epsilon of each dtype (2⁻⁵² and 2⁻²³), written u in the bounds below.
U64 = torch.finfo(torch.float64).eps
U32 = torch.finfo(torch.float32).eps
# First-order rounding-error bounds (summation, Cholesky, symmetric eigenvalues) carry constants
# of a few units in front of n·u or m·u·κ. Every bound below uses this one constant for them.
ROUNDING_CONSTANT = 8.0
# Kept eigenvalues of a trace-1 density lie above the clamp floor λ_max·m·u ≥ 2⁻⁵², where |log λ| + 1 < 38.
LOG_EIGENVALUE_BOUND = 38.0

HYPOTHESIS_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


def random_orthogonal(size: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(randn(size, size, seed=seed))
    return q * torch.sign(torch.diagonal(r))


def value_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = z.detach().clone().requires_grad_()
    value = fn(leaf)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


# Naive oracles -------------------------------------------------------------------------------


def naive_softmax_rows(z: np.ndarray, tau: float = 1.0) -> np.ndarray:
    shifted = z / tau - np.max(z / tau, axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


def naive_entropy(p: np.ndarray) -> float:
    positive = p[p > 0]
    return float(-(positive * np.log(positive)).sum())


def naive_von_neumann(z: np.ndarray) -> float:
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    density = unit.T @ unit / z.shape[0]
    return naive_entropy(np.linalg.eigvalsh(density))


def kth_neighbour_distances(z: np.ndarray, k: int, block_rows: int = 512) -> np.ndarray:
    """Return each row's distance to its k-th nearest other row by an exhaustive O(n²) search."""
    n = z.shape[0]
    result = np.empty(n)
    for start in range(0, n, block_rows):
        block = z[start : start + block_rows]
        distances = np.sqrt(((block[:, None, :] - z[None, :, :]) ** 2).sum(axis=2))
        rows = np.arange(block.shape[0])
        distances[rows, start + rows] = np.inf
        result[start : start + block.shape[0]] = np.partition(distances, k - 1, axis=1)[:, k - 1]
    return result


def kl_entropy_from_distances(distances: np.ndarray, k: int, d: int, min_distance: float = 1e-8) -> float:
    n = distances.shape[0]
    positive = distances[distances > 0]
    # np.median averages the two middle values of an even count, where torch.median takes the lower
    # one. Only the duplicate tests reach the floor, and they keep the count of positive distances odd.
    floored = np.maximum(distances, min_distance * np.median(positive))
    log_ball_volume = 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1.0)
    return float(digamma(n) - digamma(k) + log_ball_volume + d * np.log(floored).mean())


def naive_knn_entropy(z: np.ndarray, k: int) -> float:
    return kl_entropy_from_distances(kth_neighbour_distances(z, k), k, z.shape[1])


def tree_knn_entropy(z: np.ndarray, k: int) -> float:
    """Return the Kozachenko–Leonenko estimate with a SciPy k-d tree (continuous data, no ties)."""
    distances, _ = cKDTree(z).query(z, k=k + 1)
    return kl_entropy_from_distances(distances[:, k], k, z.shape[1])


def naive_uniformity(z: np.ndarray, t: float) -> float:
    # A zero row stays at the origin instead of being projected onto the sphere.
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    unit = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
    n = z.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += math.exp(-t * float(((unit[i] - unit[j]) ** 2).sum()))
    return -math.log(total / (n * (n - 1)))


def naive_variance_hinge(z: np.ndarray, gamma: float, eps: float) -> float:
    std = np.sqrt(z.var(axis=0, ddof=1) + eps)
    return float(-np.maximum(0.0, gamma - std).mean())


def gaussian_entropy(log_det_covariance: float, d: int) -> float:
    return 0.5 * log_det_covariance + 0.5 * d * math.log(2 * math.pi * math.e)


# 1. Naive formulas on small data ---------------------------------------------------------------

# Hand-computed cases have at most three classes, and each p·log p is computed to a few u.
HAND_CASE_RTOL = ROUNDING_CONSTANT * 3 * U64


def test_softmax_marginal_mirrored_rows() -> None:
    # Rows p = (1/4, 3/4) and (3/4, 1/4) average to (1/2, 1/2), so H = log 2.
    z = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]], dtype=torch.float64)

    assert float(softmax_marginal_entropy(z)) == pytest.approx(math.log(2.0), rel=HAND_CASE_RTOL, abs=0.0)


def test_softmax_marginal_three_classes() -> None:
    # Rows (1/3, 1/3, 1/3) and (3/4, 1/4, 0) average to (13/24, 7/24, 4/24).
    z = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, -math.inf]], dtype=torch.float64)
    marginal = (13 / 24, 7 / 24, 4 / 24)
    expected = -sum(p * math.log(p) for p in marginal)

    assert float(softmax_marginal_entropy(z)) == pytest.approx(expected, rel=HAND_CASE_RTOL, abs=0.0)


def test_softmax_marginal_temperature() -> None:
    # Logits (0, 2·log 3) at τ = 2 give p = (1/4, 3/4), so H = log 4 − (3/4)·log 3.
    z = torch.tensor([[0.0, 2.0 * math.log(3.0)]], dtype=torch.float64)
    expected = math.log(4.0) - 0.75 * math.log(3.0)

    assert float(softmax_marginal_entropy(z, tau=2.0)) == pytest.approx(expected, rel=HAND_CASE_RTOL, abs=0.0)


def test_softmax_marginal_matches_naive() -> None:
    z = randn(7, 5, seed=100) * 3.0
    marginal = naive_softmax_rows(z.numpy(), tau=0.6).mean(axis=0)
    expected = naive_entropy(marginal)
    # Each p̄_k carries a relative rounding error of a few u, and H moves by |log p̄_k + 1|·δp̄_k.
    tolerance = ROUNDING_CONSTANT * U64 * float((marginal * (1 + np.abs(np.log(marginal)))).sum())

    assert float(softmax_marginal_entropy(z, tau=0.6)) == pytest.approx(expected, rel=0.0, abs=tolerance)


def masked_logits() -> torch.Tensor:
    """Return logits whose class 1 is masked in every row and class 3 in row 0 only."""
    z = randn(4, 5, seed=101)
    z[:, 1] = -math.inf
    z[0, 3] = -math.inf
    return z


def naive_marginal_entropy_torch(z: torch.Tensor) -> torch.Tensor:
    """Re-derive the marginal entropy with plain torch ops, for a reference gradient."""
    weights = torch.exp(z - z.max(dim=1, keepdim=True).values)
    marginal = (weights / weights.sum(dim=1, keepdim=True)).mean(dim=0)
    return -(marginal * torch.log(marginal)).sum()


def test_softmax_marginal_masked_value() -> None:
    z = masked_logits()
    expected = naive_entropy(naive_softmax_rows(z.numpy()).mean(axis=0))

    # The value sums five float64 terms of size at most log 5.
    assert float(softmax_marginal_entropy(z)) == pytest.approx(expected, rel=0.0, abs=ROUNDING_CONSTANT * U64 * 5)


def test_softmax_marginal_masked_gradient() -> None:
    z = masked_logits()
    unmasked_columns = [0, 2, 3, 4]
    _, grad = value_and_grad(softmax_marginal_entropy, z)
    _, reference = value_and_grad(naive_marginal_entropy_torch, z[:, unmasked_columns])
    marginal = naive_softmax_rows(z[:, unmasked_columns].numpy()).mean(axis=0)
    # Each gradient entry is a product of p_ik and log-marginal terms, each within a few u over the 4 classes.
    tolerance = ROUNDING_CONSTANT * 4 * U64 * (1 + float(np.abs(np.log(marginal)).max()))

    assert torch.isfinite(grad).all()
    assert torch.equal(grad[:, 1], torch.zeros(4, dtype=torch.float64))
    assert float(grad[0, 3]) == 0.0
    torch.testing.assert_close(grad[:, unmasked_columns], reference, rtol=0.0, atol=tolerance)


@pytest.mark.parametrize(("n", "d"), [(5, 12), (30, 6), (8, 8)])
def test_von_neumann_matches_naive(n: int, d: int) -> None:
    z = randn(n, d, seed=102) + 0.3
    expected = naive_von_neumann(z.numpy())
    # d eigenvalues, each off by ≤ c·d·u, and each term λ log λ moves by |log λ + 1| ≤ 38 times that.
    tolerance = ROUNDING_CONSTANT * d * d * U64 * LOG_EIGENVALUE_BOUND

    assert float(von_neumann_entropy(z)) == pytest.approx(expected, rel=0.0, abs=tolerance)


def test_von_neumann_parallel_rows() -> None:
    # Rows ±c·v normalize to ±v, so ρ = vvᵀ has the single eigenvalue 1 and S = 0.
    direction = randn(1, 6, seed=103)
    scales = torch.tensor([[0.5], [-2.0], [3.0], [-0.1], [7.0]], dtype=torch.float64)
    # λ_max = 1 up to c·d·u, and −λ log λ ≈ 1 − λ there.
    tolerance = ROUNDING_CONSTANT * 6 * U64

    assert float(von_neumann_entropy(scales * direction)) == pytest.approx(0.0, rel=0.0, abs=tolerance)


@pytest.mark.parametrize("d", [2, 5, 9])
def test_von_neumann_orthonormal_rows(d: int) -> None:
    # Orthogonal rows with any positive lengths normalize to an orthonormal basis, so ρ = I/d.
    lengths = torch.linspace(0.5, 4.0, d, dtype=torch.float64)[:, None]
    z = lengths * random_orthogonal(d, seed=104)
    tolerance = ROUNDING_CONSTANT * d * d * U64 * LOG_EIGENVALUE_BOUND

    assert float(von_neumann_entropy(z)) == pytest.approx(math.log(d), rel=0.0, abs=tolerance)


# Each log ρ_i is computed to a few u. With d ≤ 4 and |log ρ_i|, |ψ(n)| ≤ 10 the sum stays below this.
KNN_NAIVE_TOLERANCE = ROUNDING_CONSTANT * 4 * 10 * U64


@pytest.mark.parametrize(("n", "d", "k"), [(40, 1, 1), (40, 2, 3), (25, 4, 5), (12, 3, 11)])
def test_knn_matches_naive(n: int, d: int, k: int) -> None:
    z = randn(n, d, seed=105)

    actual = float(knn_entropy(z, k=k))

    assert actual == pytest.approx(naive_knn_entropy(z.numpy(), k), rel=0.0, abs=KNN_NAIVE_TOLERANCE)


def test_knn_tree_path_matches_naive() -> None:
    # With d ≤ 8 and n ≥ 4096 the library searches a k-d tree, while the oracle stays exhaustive.
    z = randn(4100, 2, seed=106)

    actual = float(knn_entropy(z, k=3))

    assert actual == pytest.approx(naive_knn_entropy(z.numpy(), 3), rel=0.0, abs=KNN_NAIVE_TOLERANCE)


def test_knn_duplicates_match_naive() -> None:
    # Rows 9 and 10 repeat rows 0 and 1, so four rows have ρ = 0 under k = 1 and take the floor.
    # Seven positive distances remain, an odd count, so their median is unambiguous.
    base = randn(9, 2, seed=107)
    z = torch.cat([base, base[:2]])

    actual = float(knn_entropy(z, k=1))

    assert actual == pytest.approx(naive_knn_entropy(z.numpy(), 1), rel=0.0, abs=KNN_NAIVE_TOLERANCE)


def uniformity_rounding(n: int, d: int, t: float) -> float:
    """Bound the float64 rounding of the uniformity score.

    ‖u_i − u_j‖² = 2 − 2u_i·u_j loses up to c·d·u absolutely, scaled by t in the exponent, and the
    log-sum-exp over n(n−1) pairs adds c·n²·u.
    """
    return ROUNDING_CONSTANT * (d * t + n * n) * U64


@pytest.mark.parametrize(("n", "d", "t"), [(6, 3, 2.0), (9, 2, 0.5), (4, 7, 5.0)])
def test_uniformity_matches_naive(n: int, d: int, t: float) -> None:
    z = randn(n, d, seed=108)
    tolerance = uniformity_rounding(n, d, t)

    assert float(uniformity(z, t=t)) == pytest.approx(naive_uniformity(z.numpy(), t), rel=0.0, abs=tolerance)


@pytest.mark.parametrize(
    "rows",
    [
        [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]],
        [[0.0, 0.0, 0.0]] * 4,
    ],
)
def test_uniformity_zero_rows(rows: list[list[float]]) -> None:
    z = torch.tensor(rows, dtype=torch.float64)
    n, d = z.shape
    expected = naive_uniformity(z.numpy(), 2.0)

    assert float(uniformity(z, t=2.0)) == pytest.approx(expected, rel=0.0, abs=uniformity_rounding(n, d, 2.0))


def test_uniformity_antipodal_pair() -> None:
    # Two antipodal unit vectors are 2 apart, so the score is −log exp(−4t) = 4t.
    z = torch.tensor([[3.0, 4.0], [-0.3, -0.4]], dtype=torch.float64)

    # Normalizing and the dot product each round by a few u.
    assert float(uniformity(z, t=1.5)) == pytest.approx(6.0, rel=ROUNDING_CONSTANT * U64, abs=0.0)


@pytest.mark.parametrize("d", [1, 3, 6])
def test_uniformity_regular_simplex(d: int) -> None:
    # The d + 1 centered basis vectors of R^{d+1} normalize to a regular simplex with
    # u_i·u_j = −1/d, so every pair is at squared distance 2 + 2/d and the score is t·(2 + 2/d).
    z = torch.eye(d + 1, dtype=torch.float64) - 1.0 / (d + 1)
    t = 0.7

    assert float(uniformity(z, t=t)) == pytest.approx(t * (2 + 2 / d), rel=ROUNDING_CONSTANT * (d + 1) * U64, abs=0.0)


@pytest.mark.parametrize(("gamma", "eps"), [(1.0, 1e-4), (2.5, 0.1), (0.2, 1e-4)])
def test_variance_hinge_matches_naive(gamma: float, eps: float) -> None:
    z = randn(15, 4, seed=109) * torch.tensor([0.3, 1.0, 2.0, 4.0], dtype=torch.float64)
    # Variances of 15 terms carry a relative error of c·n·u, and the score is a mean of O(γ) terms.
    tolerance = ROUNDING_CONSTANT * 15 * U64 * (gamma + 4.0)

    actual = float(variance_hinge(z, gamma=gamma, eps=eps))

    assert actual == pytest.approx(naive_variance_hinge(z.numpy(), gamma, eps), rel=0.0, abs=tolerance)


def test_variance_hinge_spread_columns_saturate() -> None:
    # Every column's standard deviation exceeds γ, so the score is 0 and its force vanishes.
    z = randn(20, 3, seed=110) * 10.0
    value, grad = value_and_grad(lambda x: variance_hinge(x, gamma=1.0), z)

    assert float(value) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_variance_hinge_gradient_closed_form() -> None:
    # For an active column, ∂/∂z_ij of −(γ − σ_j)/d is (z_ij − μ_j)/(d·(n−1)·σ_j), σ_j = √(s_j² + ε).
    z = randn(10, 3, seed=111) * torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    n, d = z.shape
    eps = 1e-3
    std = torch.sqrt(z.var(dim=0) + eps)
    expected = (z - z.mean(dim=0)) / (d * (n - 1) * std)
    # z_ij − μ_j is off by n·u·max|z| and σ_j by n·u relative, so each entry by twice that over d(n−1)σ_min.
    tolerance = 2 * ROUNDING_CONSTANT * n * U64 * float(z.abs().max()) / (d * (n - 1) * float(std.min()))

    _, grad = value_and_grad(lambda x: variance_hinge(x, gamma=2.0, eps=eps), z)

    torch.testing.assert_close(grad, expected, rtol=0.0, atol=tolerance)


def test_softmax_scattered_mask_matches_naive() -> None:
    z = randn(3, 4, seed=112)
    z[0, 1] = -math.inf
    z[1, 0] = -math.inf
    z[1, 3] = -math.inf
    probabilities = naive_softmax_rows(z.numpy())
    expected = float(np.mean([naive_entropy(row) for row in probabilities]))

    value, grad = value_and_grad(softmax_entropy, z)

    assert float(value) == pytest.approx(expected, rel=0.0, abs=ROUNDING_CONSTANT * 4 * U64)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[torch.isinf(z)], torch.zeros(3, dtype=torch.float64))


# 2. Gradients against float64 finite differences ----------------------------------------------

FD_STEP = 1e-6
# Every value below sums float64 terms smaller than 100 in magnitude (the largest is
# (d − n)·|log(ε(n−1))| = 31 for logdet with n = 3, d = 8, ε = 1e-3).
FD_VALUE_TERMS = 100.0


def finite_difference_atol(condition: float = 1.0, size: int = 1) -> float:
    """Bound the error of a central difference with step FD_STEP.

    The value's rounding, c·u·(terms + m·κ) with κ the condition number of a factorized m×m
    matrix, is divided by the step. The truncation error, h² times the third derivative over 6,
    is below 1e-10 for the unit-scale inputs used here and fits in the same bound.
    """
    return ROUNDING_CONSTANT * U64 * (FD_VALUE_TERMS + size * condition) / FD_STEP


def factorized_condition(name: str, z: torch.Tensor, params: dict[str, Any]) -> tuple[float, int]:
    """Return the condition number and size of the matrix that logdet or coding_rate factorizes."""
    x = z.detach().numpy()
    n, d = x.shape
    if name == "logdet":
        rows = x - x.mean(axis=0)
        ridge = params.get("eps", 1e-4) * (n - 1)
    elif name == "coding_rate":
        rows = x / np.linalg.norm(x, axis=1, keepdims=True)
        ridge = n * params.get("eps", 0.5) ** 2 / d
    else:
        return 1.0, 1
    product = rows @ rows.T if n < d else rows.T @ rows
    return float(np.linalg.cond(product + ridge * np.eye(product.shape[0]))), product.shape[0]


def assert_gradcheck(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, atol: float) -> None:
    leaf = z.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (leaf,), eps=FD_STEP, atol=atol, rtol=0.0)


def with_masked_logits(z: torch.Tensor) -> torch.Tensor:
    z = z.clone()
    z[:, 1] = -math.inf
    z[0, 2] = -math.inf
    return z


GRADCHECK_CASES = [
    ("softmax", (5, 6), {"tau": 1.3}, False),
    ("softmax", (4, 4), {}, True),
    ("softmax_marginal", (6, 4), {"tau": 0.8}, False),
    ("softmax_marginal", (4, 5), {}, True),
    ("variance", (4, 7), {"eps": 1e-3}, False),
    ("logdet", (5, 5), {"eps": 1e-2}, False),
    ("logdet", (3, 8), {"eps": 1e-3}, False),
    ("coding_rate", (5, 5), {"eps": 0.3}, False),
    ("von_neumann", (5, 9), {}, False),
    ("von_neumann", (12, 4), {}, False),
    ("von_neumann", (6, 6), {"precision": "float64"}, False),
    ("knn", (12, 2), {"k": 1}, False),
    ("knn", (15, 3), {"k": 3}, False),
    ("knn", (10, 6), {"k": 2}, False),
    ("uniformity", (6, 3), {"t": 2.0}, False),
    ("uniformity", (5, 7), {"t": 0.5}, False),
]


@pytest.mark.parametrize(("name", "shape", "params", "with_mask"), GRADCHECK_CASES)
def test_gradcheck_surrogate(name: str, shape: tuple[int, int], params: dict[str, Any], with_mask: bool) -> None:
    z = randn(*shape, seed=120) + 0.2
    if with_mask:
        z = with_masked_logits(z)
    surrogate = SURROGATES[name]
    condition, size = factorized_condition(name, z, params)

    assert_gradcheck(lambda x: surrogate(x, **params), z, finite_difference_atol(condition, size))


def test_gradcheck_variance_hinge() -> None:
    # Columns 0 and 1 sit below γ = 1.5 and column 2 above it, far from the kink at σ_j = γ.
    z = randn(8, 3, seed=121) * torch.tensor([0.3, 1.0, 5.0], dtype=torch.float64)
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    assert ((std - 1.5).abs() > 0.1).all()

    assert_gradcheck(lambda x: variance_hinge(x, gamma=1.5), z, finite_difference_atol())


def ill_conditioned(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return Z = G·diag(s)·Qᵀ with centered orthonormal G, so Σ = Q·diag(s²)·Qᵀ/(n−1) exactly.

    The singular values s span 1e-3..1e3, so the covariance has condition number 1e12.
    """
    g = randn(n, d, seed=seed)
    g, _ = torch.linalg.qr(g - g.mean(dim=0))
    q = random_orthogonal(d, seed=seed + 1)
    s = torch.logspace(-3, 3, d, dtype=torch.float64)
    return g @ torch.diag(s) @ q.T, g, s, q


def test_logdet_ill_conditioned_value() -> None:
    n, d = 12, 4
    z, _, s, _ = ill_conditioned(n, d, seed=122)
    expected = 0.5 * float(torch.log(s**2 / (n - 1)).sum())
    # Forming ZᵀZ perturbs it by c·n·u·‖Z‖², which moves each log λ_k by up to c·n·u·κ with κ = 1e12.
    tolerance = 0.5 * d * ROUNDING_CONSTANT * n * U64 * 1e12

    assert float(logdet_entropy(z, eps=0.0)) == pytest.approx(expected, rel=0.0, abs=tolerance)


def test_logdet_ill_conditioned_gradient() -> None:
    # ∂(½ log det Σ)/∂Z = Z_c Σ⁻¹/(n−1) = G·diag(1/s)·Qᵀ for this construction. Finite differences
    # cannot check this case, because the value itself carries an error of up to c·n·u·κ ≈ 1e-2,
    # which the step 1e-6 amplifies. The gradient inherits the same relative error c·n·u·κ.
    n, d = 12, 4
    z, g, s, q = ill_conditioned(n, d, seed=122)
    expected = g @ torch.diag(1.0 / s) @ q.T
    tolerance = ROUNDING_CONSTANT * n * U64 * 1e12 * float(expected.abs().max())

    _, grad = value_and_grad(lambda x: logdet_entropy(x, eps=0.0), z)

    torch.testing.assert_close(grad, expected, rtol=0.0, atol=tolerance)


def test_von_neumann_ill_conditioned_gradcheck() -> None:
    # S = −Σ λ log λ is insensitive to the tiny eigenvalues' rounding (δλ·|log λ| ≈ 1e-14), so float64
    # finite differences stay accurate even though ρ has condition number above 1e9.
    z, _, _, _ = ill_conditioned(12, 4, seed=122)
    unit = torch.nn.functional.normalize(z, dim=1)
    assert np.linalg.cond((unit.T @ unit).numpy()) > 1e9

    assert_gradcheck(von_neumann_entropy, z, finite_difference_atol())


REPEATED_EIGENVALUES = torch.tensor([0.5, 1.0, 1.0, 2.0, 2.0], dtype=torch.float64)


def covariance_with_repeated_eigenvalues(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return samples whose unbiased sample covariance is exactly R·diag(0.5, 1, 1, 2, 2)·Rᵀ."""
    x = randn(n, 5, seed=seed) + 3.0
    centered = x - x.mean(dim=0)
    factor = torch.linalg.cholesky(centered.T @ centered / (n - 1))
    white = torch.linalg.solve_triangular(factor, centered.T, upper=False).T
    rotation = random_orthogonal(5, seed=seed + 1)
    z = white @ torch.diag(REPEATED_EIGENVALUES.sqrt()) @ rotation.T + 1.0
    return z, rotation @ torch.diag(REPEATED_EIGENVALUES) @ rotation.T


def test_logdet_repeated_eigenvalues_value() -> None:
    z, _ = covariance_with_repeated_eigenvalues(40, seed=123)
    # ½·log(0.5·1·1·2·2) = ½·log 2, and whitening leaves the covariance within c·n·u·κ (κ = 4).
    tolerance = ROUNDING_CONSTANT * 40 * U64 * 4 * 5

    assert float(logdet_entropy(z, eps=0.0)) == pytest.approx(0.5 * math.log(2.0), rel=0.0, abs=tolerance)


def test_logdet_repeated_eigenvalues_gradient() -> None:
    # ∂(½ log det Σ)/∂Z = Z_c Σ⁻¹/(n−1), with Σ⁻¹ known from the construction.
    n = 40
    z, covariance = covariance_with_repeated_eigenvalues(n, seed=123)
    expected = (z - z.mean(dim=0)) @ torch.linalg.inv(covariance) / (n - 1)
    # The sample covariance matches its target to c·n·u·κ (κ = 4), and the inverse inherits that.
    tolerance = ROUNDING_CONSTANT * n * U64 * 4 * float(expected.abs().max())

    _, grad = value_and_grad(lambda x: logdet_entropy(x, eps=0.0), z)

    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, expected, rtol=0.0, atol=tolerance)


def test_logdet_repeated_eigenvalues_gradcheck() -> None:
    z, _ = covariance_with_repeated_eigenvalues(12, seed=124)

    # The covariance has condition number 4 by construction.
    assert_gradcheck(lambda x: logdet_entropy(x, eps=0.0), z, finite_difference_atol(4.0, 5))


# Rows ±e_k repeated (1, 2, 2, 4, 4) times give ρ = diag(1, 2, 2, 4, 4)/13, proportional to
# (0.5, 1, 1, 2, 2). A rotation and positive row lengths keep that spectrum exactly.
MULTIPLICITIES = (1, 2, 2, 4, 4)


def rows_with_repeated_density_eigenvalues(seed: int) -> torch.Tensor:
    rows = []
    for axis, count in enumerate(MULTIPLICITIES):
        for copy in range(count):
            row = torch.zeros(5, dtype=torch.float64)
            row[axis] = 1.0 if copy % 2 == 0 else -1.0
            rows.append(row)
    lengths = torch.linspace(0.5, 3.0, len(rows), dtype=torch.float64)[:, None]
    return lengths * torch.stack(rows) @ random_orthogonal(5, seed=seed).T


def test_von_neumann_repeated_eigenvalues() -> None:
    z = rows_with_repeated_density_eigenvalues(seed=125)
    eigenvalues = [count / 13 for count in MULTIPLICITIES]
    expected = -sum(value * math.log(value) for value in eigenvalues)
    tolerance = ROUNDING_CONSTANT * 25 * U64 * LOG_EIGENVALUE_BOUND

    value, grad = value_and_grad(von_neumann_entropy, z)

    assert float(value) == pytest.approx(expected, rel=0.0, abs=tolerance)
    assert torch.isfinite(grad).all()
    assert_gradcheck(von_neumann_entropy, z, finite_difference_atol())


def test_coding_rate_repeated_eigenvalues() -> None:
    z = rows_with_repeated_density_eigenvalues(seed=126)
    n, d, eps = z.shape[0], z.shape[1], 0.5
    # I + (d/(nε²))·ẐᵀẐ has eigenvalues 1 + (d/ε²)·m_k/n.
    expected = 0.5 * sum(math.log1p(d / eps**2 * count / n) for count in MULTIPLICITIES)
    tolerance = ROUNDING_CONSTANT * 25 * U64 * (1 + d / eps**2)

    value, grad = value_and_grad(lambda x: coding_rate(x, eps=eps), z)

    assert float(value) == pytest.approx(expected, rel=0.0, abs=tolerance)
    assert torch.isfinite(grad).all()
    condition, size = factorized_condition("coding_rate", z, {"eps": eps})
    assert_gradcheck(lambda x: coding_rate(x, eps=eps), z, finite_difference_atol(condition, size))


# 3. Numerics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_surrogate(name: str, dtype: torch.dtype) -> None:
    z = randn(16, 4, seed=130, dtype=torch.float32).to(dtype).requires_grad_()
    surrogate = SURROGATES[name]

    value = surrogate(z)
    (grad,) = torch.autograd.grad(value, z)

    assert torch.isfinite(value)
    assert value.dtype == torch.float32
    assert grad.dtype == dtype
    assert torch.isfinite(grad).all()
    # The input is upcast before any arithmetic, so its float32 copy takes identical operations.
    assert float(value.detach()) == float(surrogate(z.detach().float()))


def precision_tolerance(name: str, z: np.ndarray, value: float) -> float:
    """Bound the change from factorizing in float32 instead of float64."""
    n, d = z.shape
    m = min(n, d)
    if name == "logdet":
        centered = z - z.mean(axis=0)
        product = centered @ centered.T if n <= d else centered.T @ centered
        matrix = product / (n - 1) + 1e-4 * np.eye(product.shape[0])
        # Cholesky in float32 factors M + δM with ‖δM‖ ≤ c·m·u·‖M‖, which moves ½ log det by ½·m·κ·that.
        return 0.5 * ROUNDING_CONSTANT * m * m * U32 * np.linalg.cond(matrix) + U32 * abs(value)
    if name == "coding_rate":
        unit = z / np.linalg.norm(z, axis=1, keepdims=True)
        matrix = np.eye(d) + d / (n * 0.25) * unit.T @ unit
        return 0.5 * ROUNDING_CONSTANT * m * m * U32 * np.linalg.cond(matrix) + U32 * abs(value)
    # von_neumann: m eigenvalues off by ≤ c·m·u each, weighted by |log λ| + 1. Kept eigenvalues lie
    # above the float32 floor λ_max·m·u ≥ u (λ_max ≥ 1/m), and dropped ones add at most floor·|log floor|.
    return ROUNDING_CONSTANT * m * m * U32 * (1 + abs(math.log(U32))) + U32 * abs(value)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", PRECISION_SURROGATES)
def test_precision_settings_agree(name: str, input_dtype: torch.dtype) -> None:
    z = randn(30, 6, seed=131) + 0.5
    surrogate = SURROGATES[name]
    single = surrogate(z.to(input_dtype), precision="float32")
    double = surrogate(z.to(input_dtype), precision="float64")
    tolerance = precision_tolerance(name, z.numpy(), float(double))

    assert single.dtype == input_dtype
    assert double.dtype == input_dtype
    assert float(single) == pytest.approx(float(double), rel=0.0, abs=tolerance)


@pytest.mark.parametrize("name", PRECISION_SURROGATES)
def test_invalid_precision_raises(name: str) -> None:
    with pytest.raises(ValueError, match="precision"):
        SURROGATES[name](randn(6, 3, seed=132), precision="float16")


@pytest.mark.parametrize("scale", [1e4, 1e-4])
def test_logdet_scale_shift(scale: float) -> None:
    n, d = 50, 5
    z = randn(n, d, seed=133)
    base = float(logdet_entropy(z, eps=0.0))
    kappa = float(np.linalg.cond(np.cov(z.numpy().T)))
    # Scaling rounds every entry by ≤ u relative, and both log-determinants carry c·d·(n + d)·u·κ.
    tolerance = ROUNDING_CONSTANT * d * (n + d) * U64 * kappa + d * abs(math.log(scale)) * U64

    scaled = float(logdet_entropy(scale * z, eps=0.0))

    assert scaled - base == pytest.approx(d * math.log(scale), rel=0.0, abs=tolerance)


@pytest.mark.parametrize("scale", [1e4, 1e-4])
@pytest.mark.parametrize("name", NAMES)
def test_extreme_scale_finite(name: str, scale: float) -> None:
    z = (scale * randn(24, 5, seed=134)).float()

    value, grad = value_and_grad(SURROGATES[name], z)

    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", SOFTMAX_FAMILY)
def test_softmax_family_accepts_negative_infinity(name: str) -> None:
    z = with_masked_logits(randn(5, 4, seed=135))

    value, grad = value_and_grad(SURROGATES[name], z)

    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[torch.isinf(z)], torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("name", SOFTMAX_FAMILY)
def test_softmax_family_all_masked_row(name: str) -> None:
    z = randn(3, 4, seed=136)
    z[1] = -math.inf

    with pytest.raises(NonFiniteInputError, match="row 1"):
        SURROGATES[name](z)


@pytest.mark.parametrize("k", [1, 3])
def test_knn_half_duplicated_rows(k: int) -> None:
    base = randn(20, 3, seed=137)
    z = torch.cat([base, base[:10]])

    value, grad = value_and_grad(lambda x: knn_entropy(x, k=k), z)

    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()


def test_knn_identical_rows_raise() -> None:
    z = torch.ones(8, 3, dtype=torch.float64)

    with pytest.raises(ValueError, match="identical"):
        knn_entropy(z)


def test_knn_zero_distances_message() -> None:
    z = torch.tensor([[0.0, 0.0]] * 4 + [[1.0, 1.0]] * 4, dtype=torch.float64)

    # Each row has three duplicates, so every 3rd-neighbour distance is 0, but the rows differ.
    with pytest.raises(ValueError) as raised:
        knn_entropy(z, k=3)

    message = str(raised.value)
    assert "identical" not in message
    assert "duplicates" in message


def test_knn_float32_offset_matches_naive() -> None:
    z = (randn(2000, 2, seed=138) + 1000.0).float()
    n, d = z.shape
    # The oracle runs in float64 on the same float32 points. Differences of nearby points near
    # 1000 are exact in float32, so each log ρ_i is off by a few 2⁻²³, and the float32 mean of
    # n of them adds at most n·2⁻²³·max|log ρ_i|.
    distances = kth_neighbour_distances(z.double().numpy(), 3)
    expected = kl_entropy_from_distances(distances, 3, d)
    tolerance = d * ROUNDING_CONSTANT * U32 * (1 + n * float(np.abs(np.log(distances)).max()))

    assert float(knn_entropy(z)) == pytest.approx(expected, rel=0.0, abs=tolerance)


def test_knn_duplicates_tiny_scale() -> None:
    # At spreads near 1e-16 a squared floor (1e-8·median)² would underflow float32. Six rows sit on
    # the floor under k = 1 and seven positive distances remain, so the median is unambiguous.
    base = (1e-16 * randn(10, 2, seed=139)).float()
    z = torch.cat([base, base[:3]])
    distances = kth_neighbour_distances(z.double().numpy(), 1)
    expected = kl_entropy_from_distances(distances, 1, 2)
    # Each log ρ_i is off by a few 2⁻²³ relative to the float64 oracle on the same points.
    tolerance = 2 * ROUNDING_CONSTANT * U32 * (1 + z.shape[0] * float(np.abs(np.log(distances[distances > 0])).max()))

    value = knn_entropy(z, k=1)

    assert torch.isfinite(value)
    assert float(value) == pytest.approx(expected, rel=0.0, abs=tolerance)


NON_FINITE_CASES = [
    (name, bad)
    for name in NAMES
    for bad in (math.nan, math.inf, -math.inf)
    if not (name in SOFTMAX_FAMILY and bad == -math.inf)
]


@pytest.mark.parametrize(("name", "bad"), NON_FINITE_CASES)
def test_non_finite_input_raises(name: str, bad: float) -> None:
    z = randn(6, 3, seed=140)
    z[2, 1] = bad
    z[4, 0] = bad

    with pytest.raises(NonFiniteInputError) as raised:
        SURROGATES[name](z)

    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert "2 non-finite" in message
    assert "row 2" in message
    assert "column 1" in message


@pytest.mark.parametrize("name", BATCH_SURROGATES)
def test_single_row_raises(name: str) -> None:
    with pytest.raises(ValueError, match="rows"):
        SURROGATES[name](randn(1, 4, seed=141))


@pytest.mark.parametrize("name", SOFTMAX_FAMILY)
def test_softmax_family_empty_batch_raises(name: str) -> None:
    with pytest.raises(ValueError, match="rows"):
        SURROGATES[name](torch.empty(0, 4, dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 2, 5])
def test_knn_too_few_rows_raises(k: int) -> None:
    with pytest.raises(ValueError, match=f"at least {k + 1} rows"):
        knn_entropy(randn(k, 3, seed=142), k=k)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_knn_minimum_rows_finite(k: int) -> None:
    assert torch.isfinite(knn_entropy(randn(k + 1, 3, seed=143), k=k))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("softmax_marginal", {"tau": 0.0}),
        ("softmax_marginal", {"tau": -1.0}),
        ("knn", {"k": 0}),
        ("knn", {"k": 1.5}),
        ("knn", {"k": True}),
        ("knn", {"min_distance": 0.0}),
        ("knn", {"min_distance": math.inf}),
        ("uniformity", {"t": 0.0}),
        ("uniformity", {"t": math.nan}),
        ("variance_hinge", {"gamma": -1.0}),
        ("variance_hinge", {"eps": 0.0}),
    ],
)
def test_invalid_parameter_raises(name: str, params: dict[str, Any]) -> None:
    parameter = next(iter(params))

    with pytest.raises(ValueError, match=parameter):
        SURROGATES[name](randn(8, 3, seed=144), **params)


# 4. Accuracy on Gaussian samples with known covariance -----------------------------------------


def random_covariance(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a rotation Q and eigenvalues λ spanning 0.1..10 of the covariance Q·diag(λ)·Qᵀ."""
    return random_orthogonal(d, seed=seed), torch.logspace(-1, 1, d, dtype=torch.float64)


def gaussian_sample(rotation: torch.Tensor, eigenvalues: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    d = eigenvalues.shape[0]
    mean = torch.linspace(-2.0, 2.0, d, dtype=torch.float64)
    return mean + randn(n, d, seed=seed) @ torch.diag(eigenvalues.sqrt()) @ rotation.T


def wishart_log_det_moments(n: int, d: int) -> tuple[float, float]:
    """Return the mean and standard deviation of log det S − log det C.

    (n−1)·S follows a Wishart distribution with n − 1 degrees of freedom, so
    E = Σ_{i=1..d} [ψ((n−i)/2) − log((n−1)/2)] and Var = Σ_{i=1..d} ψ'((n−i)/2).
    """
    halves = (n - np.arange(1, d + 1)) / 2.0
    bias = float(np.sum(digamma(halves) - math.log((n - 1) / 2.0)))
    variance = float(np.sum(polygamma(1, halves)))
    return bias, math.sqrt(variance)


def logdet_entropy_error(d: int, n: int, seed: int) -> float:
    rotation, eigenvalues = random_covariance(d, seed=seed)
    z = gaussian_sample(rotation, eigenvalues, n, seed=seed + 1)
    estimate = float(logdet_entropy(z, eps=0.0)) + 0.5 * d * math.log(2 * math.pi * math.e)
    return estimate - gaussian_entropy(float(torch.log(eigenvalues).sum()), d)


@pytest.mark.parametrize("d", [2, 8, 32, 64])
def test_logdet_gaussian_entropy(d: int) -> None:
    n = 2000
    bias, sd = wishart_log_det_moments(n, d)

    error = logdet_entropy_error(d, n, seed=150 + d)

    # The entropy error is ½·(log det S − log det C), with mean ½·bias and standard deviation ½·sd.
    assert abs(error - 0.5 * bias) <= 5 * 0.5 * sd


def test_logdet_gaussian_error_shrinks() -> None:
    d = 64
    small_n, large_n = 4 * d, 64 * d
    small_bias, small_sd = wishart_log_det_moments(small_n, d)
    large_bias, large_sd = wishart_log_det_moments(large_n, d)
    # The 5σ ranges of |error| at the two sizes do not overlap, so the order below is not chance.
    assert abs(0.5 * small_bias) - 5 * 0.5 * small_sd > abs(0.5 * large_bias) + 5 * 0.5 * large_sd

    small_error = logdet_entropy_error(d, small_n, seed=160)
    large_error = logdet_entropy_error(d, large_n, seed=161)

    assert abs(large_error) < abs(small_error)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_knn_gaussian_entropy(d: int) -> None:
    n, k, replicates = 5000, 3, 60
    rotation, eigenvalues = random_covariance(d, seed=170 + d)
    truth = gaussian_entropy(float(torch.log(eigenvalues).sum()), d)
    # For d ≤ 3 the fixed-k estimator is √n-consistent, so its bias is o(n^(−1/2)) and stays inside
    # the band. Its variance exceeds Var log f(X)/n = d/(2n) by a k-nearest-neighbour term with no closed
    # form (the estimator reaches d/(2n) only as k grows with n), so the standard deviation is
    # estimated from independent replicates of a SciPy implementation of the same formula.
    replicate_estimates = [
        tree_knn_entropy(gaussian_sample(rotation, eigenvalues, n, seed=1000 * d + r).numpy(), k)
        for r in range(replicates)
    ]
    sd = float(np.std(replicate_estimates, ddof=1))

    error = float(knn_entropy(gaussian_sample(rotation, eigenvalues, n, seed=180 + d), k=k)) - truth

    assert abs(error) <= 5 * sd


@pytest.mark.parametrize(("d", "sizes"), [(8, (500, 2000, 8000)), (16, (250, 1000, 4000))])
def test_knn_gaussian_error_shrinks(d: int, sizes: tuple[int, int, int]) -> None:
    # In d ≥ 4 the bias, of order n^(−2/d), dominates the error for this anisotropic covariance
    # (eigenvalues 0.1..10). The mean error over replicates must fall as n grows, each step by more
    # than 3 standard errors of the difference.
    k, replicates = 3, 8
    rotation, eigenvalues = random_covariance(d, seed=190)
    truth = gaussian_entropy(float(torch.log(eigenvalues).sum()), d)
    means, standard_errors = [], []
    for n in sizes:
        errors = [
            float(knn_entropy(gaussian_sample(rotation, eigenvalues, n, seed=3000 + 100 * r + n), k=k)) - truth
            for r in range(replicates)
        ]
        means.append(float(np.mean(errors)))
        standard_errors.append(float(np.std(errors, ddof=1)) / math.sqrt(replicates))

    first_gap = means[0] - means[1]
    second_gap = means[1] - means[2]

    assert first_gap > 3 * math.hypot(standard_errors[0], standard_errors[1]), (means, standard_errors)
    assert second_gap > 3 * math.hypot(standard_errors[1], standard_errors[2]), (means, standard_errors)
    assert means[2] > 0, means


# 5. Properties ---------------------------------------------------------------------------------


@st.composite
def representations(
    draw: st.DrawFn,
    *,
    unique: bool,
    bound: float = 10.0,
    min_rows: int = 3,
    min_cols: int = 1,
    max_cols: int = 8,
) -> torch.Tensor:
    d = draw(st.integers(min_cols, max_cols))
    n = draw(st.integers(max(min_rows, 3), 20))
    # Magnitudes below 1e-6 become 0, so squared distances never underflow to subnormals.
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False).map(
        lambda value: 0.0 if abs(value) < 1e-6 else value
    )
    values = draw(hnp.arrays(np.float64, (n, d), elements=elements, unique=unique))
    return torch.from_numpy(values)


def reordering_tolerance(name: str, z: np.ndarray, shift: np.ndarray | None = None) -> float:
    """Bound the float64 change of a surrogate when its rows are permuted or translated.

    Both operations change only rounding: the order of the n-term reductions and, for a shift,
    one rounding of every entry. B_j bounds column j of the (shifted) data.
    """
    n, d = z.shape
    c = ROUNDING_CONSTANT
    bounds = np.abs(z).max(axis=0) + (0.0 if shift is None else np.abs(shift))
    variances = z.var(axis=0, ddof=1)
    # Each unbiased variance moves by at most c·n·u·B_j².
    variance_change = c * n * U64 * bounds**2

    if name == "softmax":
        return c * n * U64 * max(1.0, math.log(d))
    if name == "softmax_marginal":
        marginal = naive_softmax_rows(z).mean(axis=0)
        return c * n * U64 * (1 + float(np.abs(np.log(marginal[marginal > 0])).max()))
    if name == "variance":
        return float(0.5 * np.sum(variance_change / (variances + 1e-4))) + c * d * U64
    if name == "variance_hinge":
        return float(np.mean(variance_change / (2 * np.sqrt(variances + 1e-4)))) + c * U64
    if name == "logdet":
        centered = (z - z.mean(axis=0)) / math.sqrt(n - 1)
        product = centered @ centered.T if n <= d else centered.T @ centered
        eigenvalues = np.linalg.eigvalsh(product) + 1e-4
        smallest, largest = float(eigenvalues.min()), float(eigenvalues.max())
        size = product.shape[0]
        # |δ log det M| ≤ ‖M⁻¹‖_F·‖δM‖_F ≤ √m/λ_min · c·n·u·Σ_j B_j², plus the Cholesky error.
        return 0.5 * math.sqrt(size) / smallest * variance_change.sum() + c * size * U64 * largest / smallest
    if name == "coding_rate":
        # M = I + (d/(nε²))·ÛᵀÛ has λ_min ≥ 1 and entries of the product below n·d/(nε²) = 4d.
        size = min(n, d)
        return 0.5 * math.sqrt(size) * c * n * U64 * 4 * d + c * size * U64 * (1 + 4 * d * n)
    if name == "von_neumann":
        size = min(n, d)
        return size * c * (n + size) * U64 * LOG_EIGENVALUE_BOUND
    if name == "uniformity":
        return uniformity_rounding(n, d, 2.0)
    if name == "knn":
        # The expanded formula ‖a‖² − 2a·b + ‖b‖² is off by up to c·u·(‖a‖² + ‖b‖²), so a near tie
        # can pick another neighbour. That moves log ρ_i by at most half the error over ρ_i².
        distances = kth_neighbour_distances(z, min(3, n - 1))
        positive = distances > 0
        floor = 1e-8 * np.median(distances[positive])
        norm_bound = float(np.sqrt((bounds**2).sum()))
        log_change = c * U64 * 2 * norm_bound**2 / np.maximum(distances, floor) ** 2
        return d * float(np.mean(log_change)) + c * U64 * 10
    raise AssertionError(f"no tolerance for surrogate {name!r}")


def surrogate_params(name: str, n: int) -> dict[str, Any]:
    return {"k": min(3, n - 1)} if name == "knn" else {}


@pytest.mark.parametrize("name", NAMES)
@HYPOTHESIS_SETTINGS
@given(data=st.data())
def test_row_permutation_invariance(name: str, data: st.DataObject) -> None:
    z = data.draw(representations(unique=True))
    permutation = data.draw(st.permutations(range(z.shape[0])))
    params = surrogate_params(name, z.shape[0])
    surrogate = SURROGATES[name]
    tolerance = reordering_tolerance(name, z.numpy())

    original = float(surrogate(z, **params))
    permuted = float(surrogate(z[list(permutation)], **params))

    assert permuted == pytest.approx(original, rel=0.0, abs=tolerance)


@pytest.mark.parametrize("name", ["variance", "logdet", "knn", "variance_hinge"])
@HYPOTHESIS_SETTINGS
@given(data=st.data())
def test_translation_invariance(name: str, data: st.DataObject) -> None:
    z = data.draw(representations(unique=True))
    d = z.shape[1]
    shift = data.draw(hnp.arrays(np.float64, (d,), elements=st.floats(-10.0, 10.0)))
    params = surrogate_params(name, z.shape[0])
    surrogate = SURROGATES[name]
    tolerance = reordering_tolerance(name, z.numpy(), shift)

    original = float(surrogate(z, **params))
    shifted = float(surrogate(z + torch.from_numpy(shift), **params))

    assert shifted == pytest.approx(original, rel=0.0, abs=tolerance)


@HYPOTHESIS_SETTINGS
@given(data=st.data())
def test_logdet_scaling_law(data: st.DataObject) -> None:
    d = data.draw(st.integers(1, 8))
    z = data.draw(representations(unique=True, min_rows=d + 1, min_cols=d, max_cols=d))
    n = z.shape[0]
    kappa = float(np.linalg.cond(np.atleast_2d(np.cov(z.numpy().T))))
    # The law needs a full-rank covariance, and κ < 1e6 keeps the rounding bound below 1e-6.
    assume(kappa < 1e6)
    magnitude = data.draw(st.floats(1e-3, 1e3))
    sign = data.draw(st.sampled_from([-1.0, 1.0]))
    a = sign * magnitude
    # Scaling rounds each entry once, and both log-determinants carry c·d·(n + d)·u·κ.
    tolerance = ROUNDING_CONSTANT * d * (n + d) * U64 * kappa + d * abs(math.log(magnitude)) * U64

    base = float(logdet_entropy(z, eps=0.0))
    scaled = float(logdet_entropy(a * z, eps=0.0))

    assert scaled == pytest.approx(base + d * math.log(magnitude), rel=0.0, abs=tolerance)


EPS_SURROGATES = ("coding_rate", "logdet", "variance")


@pytest.mark.parametrize("name", NAMES)
@HYPOTHESIS_SETTINGS
@given(data=st.data())
def test_finite_input_no_nan(name: str, data: st.DataObject) -> None:
    z = data.draw(representations(unique=False, bound=1e3))
    params = surrogate_params(name, z.shape[0])
    if name in EPS_SURROGATES:
        params["eps"] = data.draw(st.floats(1e-6, 1.0))

    if name == "knn" and not (kth_neighbour_distances(z.numpy(), params["k"]) > 0).any():
        # Every k-th neighbour distance is zero, so the estimate would be -inf and the call must raise.
        with pytest.raises(ValueError):
            knn_entropy(z, **params)
        return
    value, grad = value_and_grad(lambda x: SURROGATES[name](x, **params), z)

    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()


@HYPOTHESIS_SETTINGS
@given(data=st.data())
def test_uniformity_jensen_bound(data: st.DataObject) -> None:
    z = data.draw(representations(unique=True))
    t = data.draw(st.floats(0.1, 5.0))
    n = z.shape[0]
    assume(bool((z.norm(dim=1) > 0).all()))
    # −log mean exp(−tD) ≤ t·mean D by Jensen, and Σ_{i≠j} ‖u_i − u_j‖² ≤ 2n² for unit rows.
    bound = 2 * t * n / (n - 1)

    assert float(uniformity(z, t=t)) <= bound + uniformity_rounding(n, z.shape[1], t)


# 6. Registry and modules -----------------------------------------------------------------------


def test_registry_nine_names() -> None:
    assert set(available_surrogates()) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_registry_returns_function(name: str) -> None:
    assert get_surrogate(name) is SURROGATES[name]


MODULE_PARAMS = {
    "softmax": {"tau": 0.5},
    "softmax_marginal": {"tau": 2.0},
    "variance": {"eps": 1e-2},
    "logdet": {"eps": 1e-3, "precision": "float32"},
    "coding_rate": {"eps": 0.2},
    "von_neumann": {"precision": "float32"},
    "knn": {"k": 2, "min_distance": 1e-6},
    "uniformity": {"t": 3.0},
    "variance_hinge": {"gamma": 2.0, "eps": 1e-3},
}


@pytest.mark.parametrize("name", NAMES)
def test_module_default_matches_function(name: str) -> None:
    z = randn(12, 4, seed=200)

    assert torch.equal(MODULES[name]()(z), SURROGATES[name](z))


@pytest.mark.parametrize("name", NAMES)
def test_module_params_match_function(name: str) -> None:
    z = randn(12, 4, seed=201)
    params = MODULE_PARAMS[name]

    assert torch.equal(MODULES[name](**params)(z), SURROGATES[name](z, **params))


@pytest.mark.parametrize("name", NAMES)
def test_module_gradient_matches_function(name: str) -> None:
    z = randn(12, 4, seed=202)

    _, module_grad = value_and_grad(MODULES[name](), z)
    _, function_grad = value_and_grad(SURROGATES[name], z)

    assert torch.equal(module_grad, function_grad)


@pytest.mark.parametrize("name", NAMES)
def test_module_name(name: str) -> None:
    assert MODULES[name]().name == name


@pytest.mark.parametrize("name", NAMES)
def test_module_unknown_parameter(name: str) -> None:
    with pytest.raises(ValueError, match="'temperature'"):
        MODULES[name](temperature=1.0)
