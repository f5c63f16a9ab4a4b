"""The measurement model and the range conversions by value (what a mutation run of measurement.py left unchecked):
a Measurement is noiseless unless told, draws its noise in the image's dtype and on its device, and the conversions
between image and model range compute A(1) in the measurement's dtype and on its device."""

from __future__ import annotations

import torch

from priorkit.inverse.operators import Downsampling, Inpainting, Measurement
from priorkit.inverse.operators.measurement import measurement_to_image_range, measurement_to_model_range

F64 = torch.float64
MASK = torch.tensor([[1.0, 0.0], [1.0, 1.0]])


def test_a_measurement_is_noiseless_by_default() -> None:
    op = Inpainting(MASK)
    x = torch.tensor([[[[0.25, 0.5], [0.75, 1.0]]]], dtype=F64)
    meas = Measurement(op)
    assert meas.sigma_y == 0.0 and meas.sigma_model == 0.0
    assert meas(x, generator=torch.Generator().manual_seed(0)).flatten().tolist() == [0.25, 0.0, 0.75, 1.0]


def test_measurement_noise_is_drawn_in_float64_for_a_float64_image() -> None:
    """Bit for bit the generator's float64 normal draws (a float32 draw differs from it by ~1e-8)."""
    op = Inpainting(MASK)
    x = torch.full((1, 1, 2, 2), 0.5, dtype=F64)
    y = Measurement(op, 0.1)(x, generator=torch.Generator().manual_seed(3))
    n = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert not torch.equal(n, n.float().double())  # the draws do carry float64 digits
    assert y.dtype == F64
    assert torch.equal(y, x * MASK.to(F64) + 0.1 * (n * MASK.to(F64)))


def test_measurement_and_range_conversions_stay_on_the_inputs_device() -> None:
    """On torch's shape-only "meta" device: noise and A(1) are made where the image / measurement lives."""
    op = Inpainting(MASK)
    x = torch.ones(1, 2, 2, 2, device="meta")
    assert Measurement(op, 0.1)(x).device.type == "meta"
    assert measurement_to_model_range(op, x, (1, 2, 2, 2)).device.type == "meta"
    assert measurement_to_image_range(op, x, (1, 2, 2, 2)).device.type == "meta"
    meas = Measurement(op, 0.1)
    assert meas.to_model(x, (1, 2, 2, 2)).device.type == "meta"
    assert meas.to_image(x, (1, 2, 2, 2)).device.type == "meta"


def test_range_conversions_compute_a_of_one_in_the_measurements_dtype() -> None:
    """Antialiased bicubic downsampling by 2 averages with weights that sum to 1 (renormalised at the borders), so it
    maps the constant image 1 to 1: y = (y_m + 1) / 2 and y_m = 2 y - 1 to float64 precision; A(1) computed in
    float32 would be off by ~2e-7."""
    op = Downsampling(2, "bicubic")
    y_m = torch.linspace(-1, 1, 16, dtype=F64).view(1, 1, 4, 4)
    image_shape = (1, 1, 8, 8)
    to_image = measurement_to_image_range(op, y_m, image_shape)
    assert to_image.dtype == F64
    assert float((to_image - (y_m + 1) / 2).abs().max()) < 1e-14
    assert float((Measurement(op).to_image(y_m, image_shape) - (y_m + 1) / 2).abs().max()) < 1e-14
    to_model = measurement_to_model_range(op, y_m, image_shape)
    assert to_model.dtype == F64
    assert float((to_model - (2 * y_m - 1)).abs().max()) < 1e-14
