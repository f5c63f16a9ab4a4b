"""distill/core/denoiser.py at its edges, by value (the core group's mutation survivors, tests/MUTANTS.md):

* a Python-float time is made at the data's dtype before the model sees it, in a plain and in a guided call;
* conditions of every rank batch (class labels (B,), text states (B, L, D) of two lengths whatever D is);
* ``check=False`` reaches the model through a `ConvertedDenoiser`: nothing is re-checked after the conversion.
"""

from __future__ import annotations

import math

import torch

from priorkit.distill.core.denoiser import ConvertedDenoiser, Denoiser, concat_conditions
from priorkit.distill.core.schedule import FlowMatching, VPCosine

F64 = torch.float64


class _Recorder(Denoiser):
    """x0_hat = t * x + c (c: the condition, 0 without one; the unconditional one is 0): the answer shows the
    time and condition it was given. Records the time of every model call."""

    conditional = True

    def __init__(self, schedule=None) -> None:  # noqa: ANN001
        super().__init__()
        self.schedule = schedule or VPCosine()
        self.times = []

    def null_condition(self, cond):  # noqa: ANN001, ANN201
        return torch.zeros_like(cond)

    def predict_native(self, x, t, cond=None):  # noqa: ANN001, ANN201
        self.times.append(t.clone())
        tt = t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim == 1 else t
        return "x0", tt * x + (0 if cond is None else cond)


def test_a_float_time_reaches_a_float64_model_as_the_float64_number():
    """0.3 is not a float32 number: made in float32 first it would be 0.30000001192..., not 0.3."""
    den = _Recorder()
    x = torch.tensor([[1.0, -2.0]], dtype=F64)
    p = den(x, 0.3)
    (t_seen,) = den.times
    assert t_seen.dtype == F64 and float(t_seen) == 0.3
    assert p.t.dtype == F64 and float(p.t) == 0.3
    assert p.x0.tolist() == [[0.3 * 1.0, 0.3 * -2.0]]


def test_a_float_time_reaches_a_float64_model_exactly_in_a_guided_call():
    den = _Recorder()
    x = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=F64)
    cond = torch.tensor([[1.0, 1.0], [2.0, 0.0]], dtype=F64)
    p = den.guided(x, 0.3, cond, 2.0)
    (t_seen,) = den.times  # one batched call of both halves
    assert t_seen.dtype == F64 and float(t_seen) == 0.3
    assert float(p.t) == 0.3
    # uncond + 2 (cond - uncond) = 0.3 x + 2 c
    torch.testing.assert_close(p.x0, 0.3 * x + 2.0 * cond, rtol=1e-15, atol=0)


def test_concat_conditions_of_class_labels_and_of_text_states_whose_width_equals_a_length():
    """(B,) labels are batched as they are; (B, L, D) states of two lengths are zero-padded to the longer one even
    when D happens to equal one of the lengths."""
    labels = concat_conditions(torch.tensor([3, 1]), torch.tensor([0]))
    assert labels.tolist() == [3, 1, 0]
    short, long = torch.ones(1, 2, 3), 2 * torch.ones(1, 3, 3)  # D = 3 = the longer length
    for a, b in ((short, long), (long, short)):
        both = concat_conditions(a, b)
        assert both.shape == (2, 3, 3)
        first, second = both[0], both[1]
        for got, given in ((first, a[0]), (second, b[0])):
            n = given.shape[0]
            assert torch.equal(got[:n], given) and not got[n:].any()  # padded with zero rows at the end


def test_converted_denoiser_passes_check_false_on_to_its_model():
    """With ``check=False`` the wrapper checks nothing and neither does its model: a NaN row gives NaN in that row
    only (what the samplers' unchecked calls rely on), the other rows are the checked call's."""
    inner = _Recorder(VPCosine())
    conv = ConvertedDenoiser(inner, FlowMatching())
    x = torch.tensor([[0.5, -1.0], [math.nan, 2.0]], dtype=F64)
    p = conv(x, 0.4, check=False)
    assert bool(torch.isnan(p.x0[1, 0]))
    torch.testing.assert_close(p.x0[:1], conv(x[:1], 0.4).x0, rtol=0, atol=0)
