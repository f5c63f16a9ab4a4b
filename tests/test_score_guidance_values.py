"""The shared pieces of score distillation (distill/score/guidance.py) by value, written against the survivors of a
mutation run (tests/MUTANTS.md): the edges of the annealed time range, where the drawn times and noise go, the
gradients' dtype, the diffusion loss of a closed-form denoiser, the surrogate's message and the renders' way into the
prior's space at its own size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.schedule import FlowMatching
from priorkit.distill.score.guidance import (
    annealed_range,
    diffusion_loss,
    draw_noise,
    image_size,
    sample_times,
    sds_gradient,
    surrogate_loss,
    to_model_space,
    vsd_gradient,
)


def test_annealed_range_accepts_the_closed_unit_interval_and_refuses_beyond() -> None:
    assert annealed_range(0.0, 0.5, None, "linear", 0.3) == (0.0, 0.5)  # t_min = 0
    assert annealed_range(0.3, 0.3, None, "none", 0.0) == (0.3, 0.3)  # t_min = t_max
    assert annealed_range(0.2, 1.0, 0.5, "linear", 0.0) == (0.2, 1.0)  # t_max = 1
    assert annealed_range(0.0, 0.8, 0.0, "linear", 1.0) == (0.0, 0.0)  # t_max_end = 0: 0.8 + 1 (0 - 0.8)
    assert annealed_range(0.1, 0.5, 1.0, "linear", 0.5) == (0.1, 0.75)  # t_max_end = 1: 0.5 + 0.5 (1 - 0.5)
    with pytest.raises(ValueError, match=r"^the time range must satisfy 0 <= t_min <= t_max <= 1; got t_min=0\.1, "
                                         r"t_max=1\.5$"):
        annealed_range(0.1, 1.5, None, "none", 0.0)
    with pytest.raises(ValueError, match=r"^unknown annealing 'cosine'; use one of \('none', 'linear', 'sqrt'\)$"):
        annealed_range(0.1, 0.5, None, "cosine", 0.0)


def test_annealed_range_holds_progress_to_zero_one() -> None:
    # past the end of the run t_max stays at t_max_end (0.9 + 1.0 (0.5 - 0.9) = 0.5), before it at t_max
    assert annealed_range(0.1, 0.9, 0.5, "linear", 1.5) == pytest.approx((0.1, 0.5), abs=1e-15)
    assert annealed_range(0.1, 0.9, 0.5, "linear", -0.5) == (0.1, 0.9)


def test_times_and_noise_go_to_the_requested_device() -> None:
    """The draws are made on the CPU and moved: to ``device`` (sample_times) or to x's device (draw_noise); the meta
    device stands in for a second device on a CPU-only machine."""
    assert sample_times(3, 0.2, 0.7, torch.Generator().manual_seed(0), device="meta").device.type == "meta"
    assert sample_times(3, 0.2, 0.7, torch.Generator().manual_seed(0)).device.type == "cpu"
    t, eps = draw_noise(torch.empty(2, 3, device="meta"), 0.1, 0.9, torch.Generator().manual_seed(0))
    assert (t.device.type, eps.device.type) == ("meta", "meta")
    assert (t.shape, eps.shape, t.dtype, eps.dtype) == ((2,), (2, 3), torch.float32, torch.float32)


def _fixed_eps(value: Tensor):  # noqa: ANN202
    """A predictor whose eps is ``value`` whatever (x_t, t)."""
    return lambda x_t, t: Prediction(x0=x_t - value, eps=value.expand_as(x_t), x_t=x_t, t=t, schedule=FlowMatching())


def test_sds_and_vsd_gradients_are_in_the_samples_dtype_for_float64_times() -> None:
    """Under flow matching w_sigma2(t) = t^2 / ((1 - t)^2 + t^2): 0.5 at t = 1/2, 0.1 at t = 1/4. Times in float64
    (as sample_times draws them) do not widen a float32 gradient."""
    x = torch.zeros(2, 3)
    t = torch.tensor([0.5, 0.25], dtype=torch.float64)
    eps = torch.ones(2, 3)
    g = sds_gradient(_fixed_eps(torch.tensor(3.0)), FlowMatching(), x, t, eps)  # w (3 - 1)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, torch.tensor([[1.0] * 3, [0.2] * 3]), rtol=0, atol=1e-6)
    v = vsd_gradient(_fixed_eps(torch.tensor(3.0)), _fixed_eps(torch.tensor(-1.0)), FlowMatching(), x, t, eps)
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, torch.tensor([[2.0] * 3, [0.4] * 3]), rtol=0, atol=1e-6)  # w (3 - (-1))


class HalfX0(Denoiser):
    """A closed-form denoiser under flow matching: x0_hat = x_t / 2, served in the "x0" kind."""

    def __init__(self) -> None:
        super().__init__()
        self.schedule = FlowMatching()

    def predict_native(self, x: Tensor, t: Tensor, cond: Condition = None) -> tuple[str, Tensor]:
        return "x0", 0.5 * x


def test_diffusion_loss_is_the_mean_square_error_in_the_models_kind() -> None:
    """x0 = (1, 2), eps = (0.5, -1), t = (1/2, 1/4): x_t = (1 - t) x0 + t eps = (0.75, 1.25); x0_hat = (0.375, 0.625);
    errors (-0.625, -1.375); mean of squares (0.390625 + 1.890625) / 2 = 1.140625."""
    x0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    eps = torch.tensor([[0.5], [-1.0]], dtype=torch.float64)
    t = torch.tensor([0.5, 0.25], dtype=torch.float64)
    assert float(diffusion_loss(HalfX0(), x0, t, eps, None)) == pytest.approx(1.140625, abs=1e-12)


def test_surrogate_loss_names_the_number_of_renders_it_cannot_split() -> None:
    x = torch.zeros(5, 3)
    with pytest.raises(ValueError, match=r"^5 renders cannot be split evenly between 2 particles$"):
        surrogate_loss(x, x, particles=2)


def test_image_size_without_a_sample_shape_says_so() -> None:
    with pytest.raises(ValueError, match=r"^the denoiser does not declare a sample shape$"):
        image_size(SimpleNamespace(sample_shape=None))


def test_renders_at_the_priors_size_are_not_resampled() -> None:
    """At the prior's size the renders are only mapped to [-1, 1]: no resampling, which is not the identity for
    values that are not finite (bilinear resampling at the same size turns an inf pixel into NaN)."""
    img = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    img[0, 1, 3, 4] = float("inf")
    out = to_model_space(SimpleNamespace(sample_shape=(3, 8, 8), vae=None), img)
    assert torch.equal(out, img * 2.0 - 1.0) and out[0, 1, 3, 4] == float("inf")
