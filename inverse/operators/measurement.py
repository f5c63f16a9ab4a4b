"""Measurements and value ranges: images in [0, 1] are measured, priors work in [-1, 1].

Since ``A`` is linear, ``A(x_m) = 2 A(x) - A(1)`` for ``x_m = 2 x - 1``, so a measurement ``y = A(x) + sigma_y n``
becomes ``y_m = 2 y - A(1) = A(x_m) + 2 sigma_y n`` in model range: same operator, noise ``2 sigma_y``.
For inpainting ``A(1)`` is the mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from priorkit.inverse.operators.base import Operator, Scalar

__all__ = ["Measurement", "to_model_range", "to_image_range", "noise_in_model_range", "measurement_to_model_range",
           "measurement_to_image_range"]


def to_model_range(x: Tensor) -> Tensor:
    """[0, 1] image -> [-1, 1] model range: x_m = 2 x - 1."""
    return 2 * x - 1


def to_image_range(x: Tensor) -> Tensor:
    """[-1, 1] model range -> [0, 1] image: x = (x_m + 1) / 2."""
    return (x + 1) / 2


def noise_in_model_range(sigma_y: Scalar) -> Scalar:
    """Noise std in model range for std ``sigma_y`` in image range: 2 sigma_y."""
    return 2 * sigma_y


def measurement_to_model_range(op: Operator, y: Tensor, image_shape: Sequence[int]) -> Tensor:
    """y_m = 2 y - A(1), so that y_m = A(2 x - 1) + 2 sigma_y n when y = A(x) + sigma_y n.

    Args:
        op: the operator.
        y: measurement in image range (measurement-shaped).
        image_shape: (B, C, H, W) shape of the images ``op`` acts on (needed for A(1)).
    """
    return 2 * y - op.ones_response(image_shape, y.dtype, y.device)


def measurement_to_image_range(op: Operator, y_m: Tensor, image_shape: Sequence[int]) -> Tensor:
    """Inverse of ``measurement_to_model_range``: y = (y_m + A(1)) / 2."""
    return (y_m + op.ones_response(image_shape, y_m.dtype, y_m.device)) / 2


class Measurement:
    """Noisy measurement model ``y = A(x) + sigma_y n`` with x in [0, 1] and sigma_y stated in [0, 1] units.

    A solver in the [-1, 1] model range uses the same operator with ``to_model(y)`` = 2 y - A(1) and noise
    std ``sigma_model`` = 2 sigma_y.  Noise is only added where the operator observes (``op.measured``), so
    inpainting measurements stay zero at missing pixels.

    Args:
        op: the degradation operator.
        sigma_y: Gaussian noise std in image range.
    """

    def __init__(self, op: Operator, sigma_y: float = 0.0) -> None:
        if not (math.isfinite(sigma_y) and sigma_y >= 0):
            raise ValueError(f"sigma_y (the measurement noise std, image range) must be a finite number >= 0; got "
                             f"{sigma_y}")
        self.op = op
        self.sigma_y = sigma_y

    @property
    def sigma_model(self) -> float:
        """Noise std of ``to_model(y)`` in model range: 2 sigma_y."""
        return noise_in_model_range(self.sigma_y)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Measure an image x (B, C, H, W) in [0, 1]: y = A(x) + sigma_y n (n standard normal, observed entries)."""
        y = self.op.A(x)
        n = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y + self.sigma_y * self.op.measured(n)

    def to_model(self, y: Tensor, image_shape: Sequence[int]) -> Tensor:
        """Image-range measurement -> model-range measurement: 2 y - A(1)."""
        return measurement_to_model_range(self.op, y, image_shape)

    def to_image(self, y_m: Tensor, image_shape: Sequence[int]) -> Tensor:
        """Model-range measurement -> image-range measurement: (y_m + A(1)) / 2."""
        return measurement_to_image_range(self.op, y_m, image_shape)
