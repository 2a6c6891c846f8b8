"""Registry of entropy surrogates by name, and an ``nn.Module`` wrapper."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from hclm.surrogates.functional import (
    coding_rate,
    logdet_entropy,
    softmax_entropy,
    softmax_marginal_entropy,
    variance_entropy,
)
from hclm.surrogates.geometric import uniformity, variance_hinge
from hclm.surrogates.knn import knn_entropy
from hclm.surrogates.spectral import von_neumann_entropy

SurrogateFn = Callable[..., torch.Tensor]

_REGISTRY: dict[str, SurrogateFn] = {
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


def available_surrogates() -> tuple[str, ...]:
    """Return the registered surrogate names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_surrogate(name: str) -> SurrogateFn:
    """Look up a surrogate ``f(z, **params) -> scalar`` by name.

    Raises:
        ValueError: unknown name; the message lists the registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown surrogate {name!r}; choose one of {', '.join(available_surrogates())}"
        ) from None


def register_surrogate(name: str, fn: SurrogateFn, *, overwrite: bool = False) -> None:
    """Add ``fn`` to the registry under ``name`` so configs and the CLI can refer to it.

    Raises:
        ValueError: ``name`` is taken and ``overwrite`` is False, or ``fn`` is not callable.
    """
    if not callable(fn):
        raise ValueError(f"surrogate {name!r} must be callable, got {type(fn).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"surrogate {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = fn


def surrogate_parameters(name: str) -> dict[str, Any]:
    """Return the keyword parameters of a surrogate with their defaults, e.g. ``{"eps": 1e-4}``."""
    signature = inspect.signature(get_surrogate(name))
    return {
        key: parameter.default
        for key, parameter in list(signature.parameters.items())[1:]
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }


def check_surrogate_parameters(name: str, params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming any key of ``params`` that surrogate ``name`` does not accept."""
    accepted = surrogate_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) or "none"
        raise ValueError(f"surrogate {name!r} has no parameter {unknown[0]!r}; accepted parameters: {allowed}")


class Surrogate(nn.Module):
    """Entropy surrogate as a module: ``Surrogate("logdet", eps=1e-3)(z)``.

    Args:
        name: a registered surrogate name.
        **params: keyword parameters of that surrogate, checked at construction.
    """

    def __init__(self, name: str, **params: Any) -> None:
        super().__init__()
        self.fn = get_surrogate(name)
        check_surrogate_parameters(name, params)
        self.name = name
        self.params = dict(params)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z, **self.params)

    def extra_repr(self) -> str:
        details = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
        return f"{self.name!r}" + (f", {details}" if details else "")


class SoftmaxEntropy(Surrogate):
    """Module form of :func:`softmax_entropy`."""

    def __init__(self, **params: Any) -> None:
        super().__init__("softmax", **params)


class SoftmaxMarginalEntropy(Surrogate):
    """Module form of :func:`softmax_marginal_entropy`."""

    def __init__(self, **params: Any) -> None:
        super().__init__("softmax_marginal", **params)


class VarianceEntropy(Surrogate):
    """Module form of :func:`variance_entropy`."""

    def __init__(self, **params: Any) -> None:
        super().__init__("variance", **params)


class LogDetEntropy(Surrogate):
    """Module form of :func:`logdet_entropy`."""

    def __init__(self, **params: Any) -> None:
        super().__init__("logdet", **params)


class CodingRate(Surrogate):
    """Module form of :func:`coding_rate`."""

    def __init__(self, **params: Any) -> None:
        super().__init__("coding_rate", **params)


class VonNeumannEntropy(Surrogate):
    """Module form of :func:`von_neumann_entropy`."""

    def __init__(self, **params: Any) -> None:
        super().__init__("von_neumann", **params)


class KNNEntropy(Surrogate):
    """Module form of :func:`knn_entropy`."""

    def __init__(self, **params: Any) -> None:
        super().__init__("knn", **params)


class Uniformity(Surrogate):
    """Module form of :func:`uniformity`."""

    def __init__(self, **params: Any) -> None:
        super().__init__("uniformity", **params)


class VarianceHinge(Surrogate):
    """Module form of :func:`variance_hinge`."""

    def __init__(self, **params: Any) -> None:
        super().__init__("variance_hinge", **params)
