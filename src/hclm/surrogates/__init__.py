"""Differentiable entropy surrogates, their registry and numerically stable helpers."""

from hclm.surrogates._checks import NonFiniteInputError
from hclm.surrogates.functional import coding_rate, logdet_entropy, softmax_entropy, variance_entropy
from hclm.surrogates.linalg import logdet_spd
from hclm.surrogates.registry import (
    Surrogate,
    available_surrogates,
    check_surrogate_parameters,
    get_surrogate,
    register_surrogate,
    surrogate_parameters,
)

__all__ = [
    "NonFiniteInputError",
    "Surrogate",
    "available_surrogates",
    "check_surrogate_parameters",
    "coding_rate",
    "get_surrogate",
    "logdet_entropy",
    "logdet_spd",
    "register_surrogate",
    "softmax_entropy",
    "surrogate_parameters",
    "variance_entropy",
]
