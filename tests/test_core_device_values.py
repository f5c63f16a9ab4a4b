"""The core samplers make their fresh noise on the device they are asked for (mutation survivors recorded as
one-device, tests/MUTANTS.md): torch's "meta" device is a second device on every machine, and a CPU tensor mixed
with a meta tensor raises, so a dropped ``device=`` shows without CUDA."""

from __future__ import annotations

import torch

from priorkit.distill.core.samplers import initial_noise
from priorkit.distill.core.samplers.ddim import ddim_step
from priorkit.distill.core.schedule import VPLinear
from priorkit.distill.zoo.toy import gmm_target


def test_initial_noise_is_drawn_on_the_device_asked_for():
    z = initial_noise(gmm_target(), (3, 2), device="meta")
    assert z.device.type == "meta" and z.shape == (3, 2) and z.dtype == torch.float32


def test_a_stochastic_ddim_step_draws_its_fresh_noise_on_the_inputs_device():
    """eta = 1 adds fresh noise (c > 0); it is drawn on x0's device, so meta inputs give a meta result."""
    x0 = torch.empty(4, 2, device="meta")
    eps = torch.empty(4, 2, device="meta")
    x = ddim_step(x0, eps, 0.8, 0.4, VPLinear(), eta=1.0)
    assert x.device.type == "meta" and x.shape == (4, 2)
