"""distill/core/schedule.py at its edges, by value (the core group's mutation survivors, tests/MUTANTS.md):

* VPCosine's clean end is exactly clean (alpha 1, sigma 0) for every s, although torch.cos and math.cos may round
  log alpha(0) to a tiny positive number;
* VPDiscrete's inverse of the log-SNR, where a float32 table takes one value at two consecutive knots, is the
  right-continuous one (the noisier knot), as its segments are right-continuous.
"""

from __future__ import annotations

import math

import pytest
import torch

from priorkit.distill.core.schedule import VPCosine, VPDiscrete

F64 = torch.float64


@pytest.mark.parametrize(("s", "dtype"), [(0.015, torch.float64), (0.04, torch.float64), (0.002, torch.float32)])
def test_vp_cosine_is_exactly_clean_at_t_0_for_an_s_where_log_alpha_0_rounds_above_0(s: float, dtype) -> None:  # noqa: ANN001
    """At these s (found by search) log(cos(angle(0))) - log f(0) rounds to +2e-19 (float64) or +1.5e-8 (float32);
    unclamped, sigma(0) = sqrt(-expm1(2 log alpha)) would be NaN."""
    sch = VPCosine(s=s)
    t = torch.zeros(1, dtype=dtype)
    assert sch.alpha(t).tolist() == [1.0]
    assert sch.sigma(t).tolist() == [0.0]
    assert sch.log_snr(t).tolist() == [math.inf]


def test_vp_discrete_t_from_log_snr_on_a_flat_float32_stretch_is_the_noisier_knot():
    """Knots t = 0, 1/4, 2/4, 3/4, 1 with log alpha 0, -1, -20, -20 - 1e-7, -21: distinct in float64, but -20 and
    -20 - 1e-7 are one float32 number, so in float32 log alpha is -20 on all of [1/2, 3/4]. log-SNR -40 means log alpha
    = -softplus(40) / 2 = -20 exactly; its right-continuous inverse (log_alpha's segments are [t_k, t_k+1)) is 3/4."""
    la = torch.tensor([-1.0, -20.0, -20.0 - 1e-7, -21.0], dtype=F64)
    sch = VPDiscrete(torch.exp(2.0 * la))
    t32 = sch.t_from_log_snr(torch.tensor([-40.0], dtype=torch.float32))
    assert t32.dtype == torch.float32 and t32.tolist() == [0.75]
    assert float(sch.log_alpha(torch.tensor(0.75, dtype=torch.float32))) == -20.0
    # away from the flat stretch both precisions agree: log alpha -1 is the knot t = 1/4
    lam = 2.0 * -1.0 - math.log(-math.expm1(-2.0))  # log-SNR = 2 log alpha - log(1 - alpha^2)
    for dtype in (F64, torch.float32):
        assert math.isclose(float(sch.t_from_log_snr(torch.tensor(lam, dtype=dtype))), 0.25, rel_tol=1e-6)
