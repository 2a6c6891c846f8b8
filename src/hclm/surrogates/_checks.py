"""Input validation and dtype handling shared by the entropy surrogates."""

from __future__ import annotations

import torch

PRECISIONS = ("float32", "float64")


class NonFiniteInputError(ValueError):
    """Raised when a surrogate receives NaN or infinite values."""


def validate_representations(
    z: torch.Tensor,
    surrogate: str,
    *,
    min_rows: int = 2,
    allow_negative_infinity: bool = False,
) -> None:
    """Check that ``z`` is a finite 2-D tensor of shape (n, d) with at least ``min_rows`` rows.

    Args:
        z: representations, shape (n, d).
        surrogate: name used in error messages.
        min_rows: smallest accepted ``n``.
        allow_negative_infinity: accept ``-inf`` entries (masked logits for the softmax family).

    Raises:
        TypeError: ``z`` is not a floating-point tensor.
        ValueError: wrong number of dimensions, too few rows or columns.
        NonFiniteInputError: NaN or infinite entries, with their count and the first position.
    """
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{surrogate}: expected a torch.Tensor of shape (n, d), got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"{surrogate}: expected a floating-point tensor, got dtype {z.dtype}; cast it with z.float()")
    if z.dim() != 2:
        raise ValueError(
            f"{surrogate}: expected representations of shape (n, d), got shape {tuple(z.shape)}; "
            "flatten the feature dimensions with z.flatten(1)"
        )
    n, d = z.shape
    if n < min_rows:
        raise ValueError(
            f"{surrogate}: needs at least {min_rows} rows to estimate batch statistics, got shape {tuple(z.shape)}; "
            "use a batch with more samples"
        )
    if d < 1:
        raise ValueError(f"{surrogate}: representations have no columns, shape {tuple(z.shape)}")

    with torch.no_grad():
        # One reduction decides the common case: a NaN or infinity anywhere makes the sum
        # non-finite. A finite input whose sum overflows falls through to the full check below.
        if bool(torch.isfinite(z.sum())):
            return
        bad = torch.isnan(z) | torch.isposinf(z)
        if not allow_negative_infinity:
            bad |= torch.isneginf(z)
        count = int(bad.sum())
        if count:
            first = tuple(int(i) for i in bad.nonzero()[0])
            value = float(z[first])
            raise NonFiniteInputError(
                f"{surrogate}: {count} non-finite value(s) in representations of shape {tuple(z.shape)}, "
                f"first at row {first[0]}, column {first[1]} (value {value}); "
                "check the encoder output or lower the learning rate"
            )
        if allow_negative_infinity:
            all_masked = torch.isneginf(z).all(dim=1)
            if bool(all_masked.any()):
                row = int(all_masked.nonzero()[0])
                raise NonFiniteInputError(
                    f"{surrogate}: row {row} of shape {tuple(z.shape)} has every logit equal to -inf, "
                    "so it defines no distribution; keep at least one finite logit per row"
                )


def compute_dtype(z: torch.Tensor, precision: str | None = None) -> torch.dtype:
    """Return the dtype for reductions and linear algebra.

    Half-precision inputs (float16, bfloat16) are computed in float32 at least. ``precision``
    ("float32" or "float64") sets the dtype explicitly; ``None`` keeps float32/float64 inputs as they are.
    """
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        return getattr(torch, precision)
    return torch.promote_types(z.dtype, torch.float32)


def check_positive(name: str, value: float, surrogate: str, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` naming the parameter when ``value`` is negative (or zero unless allowed)."""
    if value != value or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{surrogate}: {name} must be {bound}, got {value}")
