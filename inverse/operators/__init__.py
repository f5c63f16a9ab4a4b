"""Linear degradation operators for training-free restoration with diffusion priors, one module per family.

* :mod:`.base`         `Operator` (A, A^T, A^+, the (r^2 A A^T + s^2 I) solve, prox_l2, ``A * B``), conjugate gradients
* :mod:`.masks`        `Inpainting` and the masks (box, half, random, strokes, a user's image)
* :mod:`.blurs`        `Blur` (circular or reflect) and its kernels (Gaussian, motion)
* :mod:`.resampling`   `Downsampling` (block mean or bicubic) for super-resolution
* :mod:`.measurement`  `Measurement` ``y = A x + sigma_y n`` and the [0, 1] image / [-1, 1] model value ranges

Conventions
-----------
* Images handled by :class:`Measurement` are in the ``[0, 1]`` range; priors work in ``[-1, 1]``
  (``x_m = 2 x - 1``); a measurement becomes ``y_m = 2 y - A(1)`` with noise ``2 sigma_y`` in model range.
* Blur is a true convolution centred at ``(kh // 2, kw // 2)``, as in deepinv's ``BlurFFT`` and ``conv2d``.
* Inpainting keeps ``y`` in the full image shape with zeros at missing pixels (``A`` self-adjoint, ``A^+ = A``).
"""

from priorkit.inverse.operators.base import ComposedOperator, Operator, Scalar, conjugate_gradient
from priorkit.inverse.operators.blurs import Blur, gaussian_kernel, motion_kernel
from priorkit.inverse.operators.masks import (
    Inpainting,
    box_mask,
    half_mask,
    mask_from_image,
    random_mask,
    stroke_mask,
)
from priorkit.inverse.operators.measurement import (
    Measurement,
    measurement_to_image_range,
    measurement_to_model_range,
    noise_in_model_range,
    to_image_range,
    to_model_range,
)
from priorkit.inverse.operators.resampling import Downsampling

__all__ = [
    "Operator",
    "ComposedOperator",
    "Scalar",
    "Inpainting",
    "Blur",
    "Downsampling",
    "Measurement",
    "conjugate_gradient",
    "box_mask",
    "half_mask",
    "random_mask",
    "stroke_mask",
    "mask_from_image",
    "gaussian_kernel",
    "motion_kernel",
    "to_model_range",
    "to_image_range",
    "noise_in_model_range",
    "measurement_to_model_range",
    "measurement_to_image_range",
]
