"""Random views of a batch for the self-supervised task: pixel shifts, Gaussian noise, masking."""

from __future__ import annotations

import torch


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    image_shape: tuple[int, int] | None,
    shift: int = 1,
    noise: float = 0.1,
    mask: int = 4,
) -> torch.Tensor:
    """Make one random view of each row of ``x`` (n, p).

    Each image moves by a random whole-pixel offset in ``[−shift, shift]²``, and the pixels that
    move in are 0, the standardized mean. Then Gaussian noise of standard deviation ``noise`` is
    added, and ``mask`` random features per row are set to 0. Shifts need ``image_shape``
    (height, width) with ``height·width = p``; for non-image data only noise and masking apply.
    """
    views = x.clone()
    n, features = x.shape
    if shift > 0 and image_shape is not None:
        height, width = image_shape
        images = views.reshape(n, height, width)
        offsets = torch.randint(-shift, shift + 1, (n, 2), generator=generator)
        padded = torch.nn.functional.pad(images, (shift, shift, shift, shift))
        shifted = torch.empty_like(images)
        for row in range(n):
            top = shift - int(offsets[row, 0])
            left = shift - int(offsets[row, 1])
            shifted[row] = padded[row, top : top + height, left : left + width]
        views = shifted.reshape(n, features)
    if noise > 0:
        views = views + noise * torch.randn(views.shape, generator=generator, dtype=views.dtype)
    if mask > 0:
        scores = torch.rand((n, features), generator=generator)
        masked = scores.argsort(dim=1)[:, : min(mask, features)]
        views = views.scatter(1, masked, 0.0)
    return views
