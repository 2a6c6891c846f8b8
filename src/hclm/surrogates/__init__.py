"""Differentiable entropy surrogates, their registry and numerically stable helpers."""

from hclm.surrogates._checks import NonFiniteInputError
from hclm.surrogates.distributed import gather_rows
from hclm.surrogates.functional import (
    coding_rate,
    logdet_entropy,
    softmax_entropy,
    softmax_marginal_entropy,
    variance_entropy,
)
from hclm.surrogates.geometric import uniformity, variance_hinge
from hclm.surrogates.knn import knn_entropy, log_unit_ball_volume
from hclm.surrogates.linalg import logdet_spd
from hclm.surrogates.registry import (
    CodingRate,
    KNNEntropy,
    LogDetEntropy,
    SoftmaxEntropy,
    SoftmaxMarginalEntropy,
    Surrogate,
    Uniformity,
    VarianceEntropy,
    VarianceHinge,
    VonNeumannEntropy,
    available_surrogates,
    check_surrogate_parameters,
    get_surrogate,
    register_surrogate,
    surrogate_parameters,
)
from hclm.surrogates.spectral import von_neumann_entropy

__all__ = [
    "CodingRate",
    "KNNEntropy",
    "LogDetEntropy",
    "NonFiniteInputError",
    "SoftmaxEntropy",
    "SoftmaxMarginalEntropy",
    "Surrogate",
    "Uniformity",
    "VarianceEntropy",
    "VarianceHinge",
    "VonNeumannEntropy",
    "available_surrogates",
    "check_surrogate_parameters",
    "coding_rate",
    "gather_rows",
    "get_surrogate",
    "knn_entropy",
    "log_unit_ball_volume",
    "logdet_entropy",
    "logdet_spd",
    "register_surrogate",
    "softmax_entropy",
    "softmax_marginal_entropy",
    "surrogate_parameters",
    "uniformity",
    "variance_entropy",
    "variance_hinge",
    "von_neumann_entropy",
]
