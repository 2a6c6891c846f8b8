"""MLP encoder and linear head of the comparison experiment."""

from __future__ import annotations

from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLPEncoder(nn.Sequential):
    """Fully connected encoder ``R^p → R^d``: hidden layers with an activation, then a linear map to ``d``.

    Args:
        in_features: input dimension ``p``.
        hidden: widths of the hidden layers (may be empty: a linear encoder).
        representation_dim: output dimension ``d``.
        activation: "relu", "gelu" or "tanh".
    """

    def __init__(self, in_features: int, hidden: list[int], representation_dim: int, activation: str = "relu") -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), _ACTIVATIONS[activation]()]
            width = size
        layers.append(nn.Linear(width, representation_dim))
        super().__init__(*layers)
        self.representation_dim = representation_dim
