"""Tests of the entropy surrogates against closed forms, naive formulas and finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from hclm.surrogates import (
    NonFiniteInputError,
    Surrogate,
    available_surrogates,
    coding_rate,
    get_surrogate,
    logdet_entropy,
    logdet_spd,
    register_surrogate,
    softmax_entropy,
    variance_entropy,
)
from hclm.surrogates import registry

SURROGATES = {
    "softmax": softmax_entropy,
    "variance": variance_entropy,
    "logdet": logdet_entropy,
    "coding_rate": coding_rate,
}
# Surrogates that estimate batch statistics and therefore need at least two rows.
BATCH_SURROGATES = ("variance", "logdet", "coding_rate")

# Exact-agreement tests sum at most a few hundred float64 terms or factorize matrices of size at
# most 20 with condition number below about 1e4. Their round-off is about d·κ·2⁻⁵² ≈ 1e-11, so
# 1e-9 leaves margin.
FLOAT64_RTOL = 1e-9


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype)


def random_orthogonal(size: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(randn(size, size, seed=seed))
    return q * torch.sign(torch.diagonal(r))


def known_covariance() -> torch.Tensor:
    """Return a fixed 5×5 covariance with unequal variances and correlations up to about 0.6."""
    a = randn(5, 5, seed=11)
    return a @ a.T / 5 + 0.5 * torch.eye(5, dtype=torch.float64)


def gaussian_samples(covariance: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    factor = torch.linalg.cholesky(covariance)
    mean = torch.arange(1.0, covariance.shape[0] + 1, dtype=torch.float64)
    return mean + randn(n, covariance.shape[0], seed=seed) @ factor.T


def naive_logdet_entropy(z: torch.Tensor, eps: float) -> torch.Tensor:
    d = z.shape[1]
    return 0.5 * torch.logdet(torch.cov(z.T) + eps * torch.eye(d, dtype=z.dtype))


def naive_coding_rate(z: torch.Tensor, eps: float) -> torch.Tensor:
    n, d = z.shape
    normalized = z / z.norm(dim=1, keepdim=True)
    matrix = torch.eye(d, dtype=z.dtype) + d / (n * eps**2) * normalized.T @ normalized
    return 0.5 * torch.logdet(matrix)


def symmetric_logdet(x: torch.Tensor) -> torch.Tensor:
    # logdet_spd reads one triangle only, so finite differences must perturb a symmetric matrix.
    return logdet_spd(0.5 * (x + x.T))


@pytest.fixture
def force_eigenvalue_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Cholesky factorization report failure, so logdet_spd takes the eigh path."""

    def failing_cholesky_ex(matrix: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(matrix), torch.tensor(1, dtype=torch.int32)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing_cholesky_ex)


# Closed forms on Gaussian samples ------------------------------------------------------------


def test_logdet_gaussian_closed_form() -> None:
    covariance = known_covariance()
    n, d = 200_000, covariance.shape[0]
    z = gaussian_samples(covariance, n, seed=1)

    expected = 0.5 * torch.logdet(covariance)
    # var(log det S) ≈ 2d/(n−1) for a sample covariance S, so ½·log det S has
    # standard error sqrt(d/(2(n−1))). The bias, −d(d+1)/(4(n−1)) ≈ 4e-5, is far below it.
    standard_error = math.sqrt(d / (2 * (n - 1)))
    actual = logdet_entropy(z, eps=0.0)

    assert abs(float(actual - expected)) < 5 * standard_error


def test_variance_gaussian_closed_form() -> None:
    covariance = known_covariance()
    n = 200_000
    z = gaussian_samples(covariance, n, seed=2)

    variances = torch.diagonal(covariance)
    expected = 0.5 * torch.log(variances).sum()
    # For Gaussian data cov(log s_i², log s_j²) ≈ 2ρ_ij²/(n−1), so the standard error of
    # ½·Σ_j log s_j² is ½·sqrt(2·Σ_ij ρ_ij²/(n−1)).
    correlation = covariance / torch.sqrt(variances[:, None] * variances[None, :])
    standard_error = 0.5 * math.sqrt(2 * float((correlation**2).sum()) / (n - 1))
    actual = variance_entropy(z, eps=0.0)

    assert abs(float(actual - expected)) < 5 * standard_error


# Agreement with naive formulas ----------------------------------------------------------------


@pytest.mark.parametrize(("n", "d", "eps"), [(50, 6, 1e-3), (50, 6, 0.0), (5, 20, 1e-3), (8, 8, 0.1)])
def test_logdet_matches_naive_formula(n: int, d: int, eps: float) -> None:
    z = randn(n, d, seed=3)

    actual = logdet_entropy(z, eps=eps)
    expected = naive_logdet_entropy(z, eps)

    torch.testing.assert_close(actual, expected, rtol=FLOAT64_RTOL, atol=0.0)


@pytest.mark.parametrize(("n", "d", "eps"), [(4, 12, 0.5), (40, 6, 0.5), (6, 6, 0.2), (30, 9, 1.5)])
def test_coding_rate_matches_naive_formula(n: int, d: int, eps: float) -> None:
    z = randn(n, d, seed=4) + 0.3

    actual = coding_rate(z, eps=eps)
    expected = naive_coding_rate(z, eps)

    torch.testing.assert_close(actual, expected, rtol=FLOAT64_RTOL, atol=0.0)


def test_variance_matches_naive_formula() -> None:
    z = randn(30, 4, seed=5) * torch.tensor([0.1, 1.0, 3.0, 10.0], dtype=torch.float64)
    eps = 1e-2
    column_variances = ((z - z.mean(dim=0)) ** 2).sum(dim=0) / (z.shape[0] - 1)
    expected = 0.5 * torch.log(column_variances + eps).sum()

    torch.testing.assert_close(variance_entropy(z, eps=eps), expected, rtol=FLOAT64_RTOL, atol=0.0)


def test_logdet_path_switch_matches_naive() -> None:
    # With n = d + 1 rows the d×d covariance is used, and with n = d the Gram matrix. Both must
    # match the naive d×d formula, which checks the determinant lemma term (d − n)·log ε at the switch.
    d = 7
    for n in (d, d + 1):
        z = randn(n, d, seed=6)
        torch.testing.assert_close(
            logdet_entropy(z, eps=0.05), naive_logdet_entropy(z, 0.05), rtol=FLOAT64_RTOL, atol=0.0
        )


# Softmax entropy on hand-computed cases -------------------------------------------------------


def test_softmax_uniform_logits_give_log_d() -> None:
    for d in (2, 5, 17):
        z = torch.full((3, d), 1.7, dtype=torch.float64)
        assert float(softmax_entropy(z)) == pytest.approx(math.log(d), rel=1e-14, abs=0.0)


def test_softmax_nearly_one_hot_logits() -> None:
    for peak in (10.0, 100.0):
        z = torch.tensor([[peak, 0.0, 0.0]], dtype=torch.float64)
        # p = (1, e⁻ᵃ, e⁻ᵃ)/s with s = 1 + 2e⁻ᵃ, so H = log s + 2a·e⁻ᵃ/s.
        tail = math.exp(-peak)
        expected = math.log1p(2.0 * tail) + 2.0 * peak * tail / (1.0 + 2.0 * tail)
        # log_softmax subtracts a log-sum-exp of size a, so each log p carries an absolute
        # rounding error of a few a·2⁻⁵². Over d = 3 classes, 4·d·a·2⁻⁵² bounds the error of H.
        tolerance = 4 * 3 * peak * torch.finfo(torch.float64).eps
        assert float(softmax_entropy(z)) == pytest.approx(expected, rel=0.0, abs=tolerance), peak


def test_softmax_two_class_by_hand() -> None:
    # Logits (0, log 3) give p = (1/4, 3/4), so H = log 4 − (3/4)·log 3.
    z = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    expected = math.log(4.0) - 0.75 * math.log(3.0)

    assert float(softmax_entropy(z)) == pytest.approx(expected, rel=1e-14, abs=0.0)


def test_softmax_temperature_divides_logits() -> None:
    # Logits (0, 2·log 3) at τ = 2 are the two-class case above.
    z = torch.tensor([[0.0, 2.0 * math.log(3.0)]], dtype=torch.float64)
    expected = math.log(4.0) - 0.75 * math.log(3.0)

    assert float(softmax_entropy(z, tau=2.0)) == pytest.approx(expected, rel=1e-14, abs=0.0)


def test_softmax_averages_rows() -> None:
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -math.inf, -math.inf]], dtype=torch.float64)
    expected = 0.5 * (math.log(4.0) + math.log(4.0) - 0.75 * math.log(3.0))

    assert float(softmax_entropy(z)) == pytest.approx(expected, rel=1e-14, abs=0.0)


def test_softmax_masked_logit_value() -> None:
    z = torch.tensor([[0.0, -math.inf, 0.0]], dtype=torch.float64)

    assert float(softmax_entropy(z)) == pytest.approx(math.log(2.0), rel=1e-14, abs=0.0)


def test_softmax_masked_logit_gradient() -> None:
    # A masked class must act as if the column were absent: same value, same gradient on the
    # finite logits, and zero gradient on the masked one.
    masked = torch.tensor([[0.0, -math.inf, 1.0], [0.5, -math.inf, -0.3]], dtype=torch.float64, requires_grad=True)
    reduced = masked.detach()[:, [0, 2]].clone().requires_grad_()

    value = softmax_entropy(masked)
    value.backward()
    reduced_value = softmax_entropy(reduced)
    reduced_value.backward()

    assert torch.isfinite(value)
    assert torch.isfinite(masked.grad).all()
    assert torch.equal(masked.grad[:, 1], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(value, reduced_value, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(masked.grad[:, [0, 2]], reduced.grad, rtol=1e-12, atol=1e-15)


def test_softmax_all_masked_row_raises() -> None:
    z = torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]])

    with pytest.raises(NonFiniteInputError, match="row 1"):
        softmax_entropy(z)


# Finite differences in float64 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("softmax", (3, 4), {"tau": 0.7}),
        ("variance", (6, 3), {"eps": 1e-4}),
        ("variance", (6, 3), {"eps": 0.0}),
        ("logdet", (9, 3), {"eps": 1e-3}),
        ("logdet", (9, 3), {"eps": 0.0}),
        ("logdet", (4, 6), {"eps": 0.1}),
        ("coding_rate", (3, 5), {"eps": 0.5}),
        ("coding_rate", (7, 3), {"eps": 0.5}),
    ],
)
def test_surrogate_gradcheck(name: str, shape: tuple[int, int], params: dict[str, float]) -> None:
    z = randn(*shape, seed=7).requires_grad_()
    surrogate = SURROGATES[name]

    assert torch.autograd.gradcheck(lambda x: surrogate(x, **params), (z,))


def test_logdet_spd_gradcheck_cholesky_path() -> None:
    a = randn(4, 4, seed=8)
    matrix = (a @ a.T + torch.eye(4, dtype=torch.float64)).requires_grad_()

    assert torch.autograd.gradcheck(symmetric_logdet, (matrix,))


def test_logdet_spd_gradcheck_eigh_path(force_eigenvalue_fallback: None) -> None:
    a = randn(4, 4, seed=8)
    matrix = (a @ a.T + torch.eye(4, dtype=torch.float64)).requires_grad_()

    assert torch.autograd.gradcheck(symmetric_logdet, (matrix,))


def test_logdet_gradcheck_eigh_path(force_eigenvalue_fallback: None) -> None:
    for shape in ((9, 3), (4, 6)):
        z = randn(*shape, seed=9).requires_grad_()
        assert torch.autograd.gradcheck(lambda x: logdet_entropy(x, eps=0.01), (z,))


@pytest.mark.parametrize("path", ["cholesky", "eigh"])
def test_logdet_spd_repeated_eigenvalues(path: str, request: pytest.FixtureRequest) -> None:
    if path == "eigh":
        request.getfixturevalue("force_eigenvalue_fallback")
    eigenvalues = torch.tensor([0.5, 1.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    rotation = random_orthogonal(5, seed=10)
    matrix = (rotation @ torch.diag(eigenvalues) @ rotation.T).requires_grad_()
    expected_inverse = rotation @ torch.diag(1.0 / eigenvalues) @ rotation.T

    value = logdet_spd(matrix)
    value.backward()

    # log(0.5·1·1·2·2) = log 2.
    assert float(value.detach()) == pytest.approx(math.log(2.0), rel=1e-12, abs=0.0)
    torch.testing.assert_close(matrix.grad, expected_inverse, rtol=FLOAT64_RTOL, atol=1e-12)


def test_logdet_spd_clamps_indefinite_eigenvalue() -> None:
    matrix = torch.diag(torch.tensor([4.0, -1.0], dtype=torch.float64))
    # The clamp floor is max|λ|·size·machine epsilon = 4·2·2⁻⁵².
    floor = 4.0 * 2 * torch.finfo(torch.float64).eps
    expected = math.log(4.0) + math.log(floor)

    assert float(logdet_spd(matrix)) == pytest.approx(expected, rel=1e-12, abs=0.0)


# Input validation and numerics ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_non_finite_input_message(name: str) -> None:
    z = torch.randn(5, 3)
    z[2, 1] = math.nan
    z[4, 0] = math.inf

    with pytest.raises(NonFiniteInputError) as raised:
        SURROGATES[name](z)

    message = str(raised.value)
    assert "2 non-finite" in message
    assert "row 2" in message
    assert "column 1" in message


@pytest.mark.parametrize("name", BATCH_SURROGATES)
def test_negative_infinity_raises(name: str) -> None:
    z = torch.randn(5, 3)
    z[3, 2] = -math.inf

    with pytest.raises(NonFiniteInputError, match="row 3, column 2"):
        SURROGATES[name](z)


def test_non_finite_error_is_value_error() -> None:
    assert issubclass(NonFiniteInputError, ValueError)


@pytest.mark.parametrize("name", BATCH_SURROGATES)
def test_single_row_raises(name: str) -> None:
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        SURROGATES[name](torch.randn(1, 4))


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_one_dimensional_input_raises(name: str) -> None:
    with pytest.raises(ValueError, match=r"\(6,\)"):
        SURROGATES[name](torch.randn(6))


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_integer_input_raises(name: str) -> None:
    with pytest.raises(TypeError, match="floating-point"):
        SURROGATES[name](torch.ones(4, 3, dtype=torch.int64))


@pytest.mark.parametrize(("n", "d"), [(2, 5), (4, 4)])
def test_logdet_zero_eps_few_rows(n: int, d: int) -> None:
    with pytest.raises(ValueError, match="eps"):
        logdet_entropy(randn(n, d, seed=12), eps=0.0)


def test_logdet_zero_eps_rank_deficient() -> None:
    for dtype in (torch.float32, torch.float64):
        z = randn(50, 4, seed=13, dtype=dtype)
        z[:, 2] = z[:, 0]
        with pytest.raises(ValueError, match="eps"):
            logdet_entropy(z, eps=0.0)


def test_variance_zero_eps_constant_column() -> None:
    # 0.1 and 1/3 are not exact in binary, so a naive mean could leave a tiny non-zero variance.
    for value in (0.0, 0.1, 1.0 / 3.0, 7.7):
        z = randn(33, 3, seed=14)
        z[:, 1] = value
        with pytest.raises(ValueError, match="eps"):
            variance_entropy(z, eps=0.0)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("softmax", {"tau": -1.0}),
        ("softmax", {"tau": 0.0}),
        ("softmax", {"tau": math.nan}),
        ("variance", {"eps": -1e-4}),
        ("variance", {"eps": math.nan}),
        ("logdet", {"eps": -1e-4}),
        ("coding_rate", {"eps": -0.5}),
        ("coding_rate", {"eps": 0.0}),
    ],
)
def test_invalid_parameter_raises(name: str, params: dict[str, float]) -> None:
    parameter = next(iter(params))

    with pytest.raises(ValueError, match=parameter):
        SURROGATES[name](torch.randn(6, 3), **params)


def test_invalid_precision_raises() -> None:
    for surrogate in (logdet_entropy, coding_rate):
        with pytest.raises(ValueError, match="precision"):
            surrogate(torch.randn(6, 3), precision="float16")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_half_precision_input(name: str, dtype: torch.dtype) -> None:
    z = torch.randn(12, 4, generator=torch.Generator().manual_seed(15)).to(dtype).requires_grad_()
    surrogate = SURROGATES[name]

    value = surrogate(z)
    (grad,) = torch.autograd.grad(value, z)
    reference = surrogate(z.detach().float())

    assert torch.isfinite(value)
    assert value.dtype == torch.float32
    assert grad.dtype == dtype
    assert torch.isfinite(grad).all()
    # Every surrogate upcasts before its first arithmetic operation, so the half input and its
    # float32 copy go through identical operations and the values must be equal.
    assert float(value.detach()) == float(reference)


def test_float32_input_keeps_float32_output() -> None:
    z = torch.randn(10, 3)

    for name, surrogate in SURROGATES.items():
        assert surrogate(z).dtype == torch.float32, name


# Invariances ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_row_permutation_invariance(name: str) -> None:
    z = randn(20, 6, seed=16)
    permutation = torch.randperm(20, generator=torch.Generator().manual_seed(17))
    surrogate = SURROGATES[name]

    torch.testing.assert_close(surrogate(z[permutation]), surrogate(z), rtol=FLOAT64_RTOL, atol=0.0)


@pytest.mark.parametrize("name", ["variance", "logdet"])
def test_translation_invariance(name: str) -> None:
    z = randn(20, 6, seed=18)
    shift = 5.0 * randn(6, seed=19)
    surrogate = SURROGATES[name]

    torch.testing.assert_close(surrogate(z + shift), surrogate(z), rtol=FLOAT64_RTOL, atol=0.0)


def test_logdet_scaling_law() -> None:
    n, d = 40, 5
    z = randn(n, d, seed=20)
    base = float(logdet_entropy(z, eps=0.0))

    # ½·log det(a²Σ) = ½·log det Σ + d·log|a|.
    for a in (2.0, -3.0, 0.5, -0.1, 10.0):
        expected = base + d * math.log(abs(a))
        assert float(logdet_entropy(a * z, eps=0.0)) == pytest.approx(expected, rel=FLOAT64_RTOL, abs=1e-12), a


def test_coding_rate_ignores_row_scale() -> None:
    # Rows are normalized first, so positive per-row scales leave the coding rate unchanged.
    z = randn(8, 5, seed=21)
    scales = torch.linspace(0.1, 10.0, 8, dtype=torch.float64)[:, None]

    torch.testing.assert_close(coding_rate(scales * z), coding_rate(z), rtol=FLOAT64_RTOL, atol=0.0)


# Registry and module wrapper ------------------------------------------------------------------


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the test a copy of the registry, so registrations vanish when it ends."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_available_surrogates_builtin() -> None:
    assert available_surrogates() == (
        "coding_rate",
        "knn",
        "logdet",
        "softmax",
        "softmax_marginal",
        "uniformity",
        "variance",
        "variance_hinge",
        "von_neumann",
    )


def test_get_surrogate_builtin() -> None:
    for name, surrogate in SURROGATES.items():
        assert get_surrogate(name) is surrogate, name


def test_get_surrogate_unknown_name() -> None:
    with pytest.raises(ValueError) as raised:
        get_surrogate("entropy")

    message = str(raised.value)
    assert "'entropy'" in message
    for name in SURROGATES:
        assert name in message, name


def test_register_surrogate_adds_name(isolated_registry: None) -> None:
    def total_variance(z: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return scale * z.var(dim=0).sum()

    register_surrogate("total_variance", total_variance)
    z = randn(10, 3, seed=22)

    assert "total_variance" in available_surrogates()
    assert get_surrogate("total_variance") is total_variance
    assert torch.equal(Surrogate("total_variance", scale=2.0)(z), total_variance(z, scale=2.0))


def test_register_surrogate_duplicate_raises(isolated_registry: None) -> None:
    with pytest.raises(ValueError, match="overwrite"):
        register_surrogate("logdet", variance_entropy)

    assert get_surrogate("logdet") is logdet_entropy


def test_register_surrogate_overwrite(isolated_registry: None) -> None:
    register_surrogate("logdet", variance_entropy, overwrite=True)

    assert get_surrogate("logdet") is variance_entropy


def test_register_surrogate_not_callable(isolated_registry: None) -> None:
    with pytest.raises(ValueError, match="callable"):
        register_surrogate("broken", 3.0)  # type: ignore[arg-type]


def test_registry_isolation_restored() -> None:
    # Runs after the registration tests in file order and checks that they left no trace.
    assert "total_variance" not in available_surrogates()
    assert get_surrogate("logdet") is logdet_entropy


def test_surrogate_module_matches_function() -> None:
    z = randn(12, 4, seed=23)

    assert torch.equal(Surrogate("logdet", eps=1e-3)(z), logdet_entropy(z, eps=1e-3))
    assert torch.equal(Surrogate("softmax")(z), softmax_entropy(z))


def test_surrogate_module_unknown_parameter() -> None:
    with pytest.raises(ValueError, match="'epsilon'"):
        Surrogate("logdet", epsilon=1e-3)


def test_surrogate_module_unknown_name() -> None:
    with pytest.raises(ValueError, match="'entropy'"):
        Surrogate("entropy")
