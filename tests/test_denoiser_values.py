"""distill/core/denoiser.py by value (the mutation run's survivors, tests/MUTANTS.md): batching conditions, the
classifier-free guidance call, the wrappers and the input checks, against what each is defined to compute."""

from __future__ import annotations

import pytest
import torch

from priorkit.distill.core.denoiser import (
    ConvertedDenoiser,
    Denoiser,
    WrappedDenoiser,
    check_inputs,
    concat_conditions,
    select_rows,
)
from priorkit.distill.core.schedule import FlowMatching, VPCosine

F64 = torch.float64


class _Affine(Denoiser):
    """eps_hat = x * (1 + t) + c: a conditional model whose answer shows its x, t and condition; null condition 0.
    Records every call's (x, t, cond)."""

    conditional = True

    def __init__(self, schedule=None) -> None:
        super().__init__()
        self.schedule = schedule or VPCosine()
        self.sample_shape = (2,)
        self.calls = []

    def encode(self, cond):
        """User conditions (lists) -> tensors, doubled; encoded ones (tensors) pass: encoding is idempotent, as the
        callers assume (``guided`` encodes, then its model call encodes again)."""
        if cond is None or isinstance(cond, torch.Tensor):
            return cond
        return torch.as_tensor(cond, dtype=F64) * 2

    def null_condition(self, cond):
        return torch.zeros_like(cond)

    def predict_native(self, x, t, cond=None):
        self.calls.append((x.clone(), t.clone(), None if cond is None else cond.clone()))
        tt = t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim == 1 else t
        return "eps", x * (1 + tt) + (0 if cond is None else cond)


def test_concat_conditions_pads_text_of_two_lengths_and_recurses_into_dicts():
    assert concat_conditions(None, None) is None
    a, b = torch.ones(2, 3, 4), 2 * torch.ones(1, 5, 4)
    both = concat_conditions(a, b)
    assert both.shape == (3, 5, 4) and torch.equal(both[:2, :3], a) and not both[:2, 3:].any()
    assert torch.equal(both[2:], b)
    back = concat_conditions(b, a)  # the other order pads the second one
    assert back.shape == (3, 5, 4) and torch.equal(back[:1], b) and not back[1:, 3:].any()
    same = concat_conditions(torch.ones(2, 4), torch.zeros(1, 4))
    assert torch.equal(same, torch.cat([torch.ones(2, 4), torch.zeros(1, 4)]))
    flat = concat_conditions(torch.ones(2, 3), torch.zeros(1, 3))  # 2-D: no padding question
    assert flat.shape == (3, 3)
    d = concat_conditions({"text": a, "class_labels": torch.ones(2, 9)}, {"text": b, "class_labels": torch.zeros(1, 9)})
    assert d["text"].shape == (3, 5, 4) and torch.equal(d["class_labels"][2], torch.zeros(9))
    with pytest.raises(TypeError, match="^cannot batch conditions of types Tensor and dict$"):
        concat_conditions(a, {"text": b})


def test_select_rows_indexes_tensors_lists_and_dicts_and_keeps_scalars():
    cond = {"text": torch.arange(8).reshape(4, 2), "names": ["a", "b", "c", "d"], "w": torch.tensor(3.0), "k": 7}
    by_slice = select_rows(cond, slice(1, 3))
    assert torch.equal(by_slice["text"], torch.tensor([[2, 3], [4, 5]])) and by_slice["names"] == ["b", "c"]
    assert by_slice["w"] == 3.0 and by_slice["k"] == 7
    by_rows = select_rows(cond, torch.tensor([3, 0]))
    assert by_rows["names"] == ["d", "a"] and torch.equal(by_rows["text"], torch.tensor([[6, 7], [0, 1]]))
    assert select_rows(None, slice(0, 1)) is None


def test_check_inputs_messages_and_shapes():
    x = torch.zeros(3, 2)
    check_inputs(x, torch.tensor(0.5))
    check_inputs(x, torch.tensor([0.0]))
    check_inputs(x, torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="^x_t contains NaN or inf values$"):
        check_inputs(torch.tensor([[float("nan"), 0.0]]), torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\]; got min -0.5, max 0.25$"):
        check_inputs(x, torch.tensor([-0.5, 0.25, 0.0]))
    with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\]; got min 0, max 1.5$"):
        check_inputs(x, torch.tensor([0.0, 1.5, 0.0]))
    with pytest.raises(ValueError, match=r"^t must be a scalar or have shape \(B,\) = \(3,\); got \(2,\)$"):
        check_inputs(x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"got \(3, 1\)$"):
        check_inputs(x, torch.full((3, 1), 0.5))


@pytest.mark.parametrize("per_sample", [False, True])
def test_guided_is_one_batched_call_of_uncond_plus_scale_times_the_difference(per_sample):
    den = _Affine()
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.5, 0.7], dtype=F64) if per_sample else torch.tensor(0.4, dtype=F64)
    cond = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    scale = torch.tensor([1.5, 3.0, 0.5], dtype=F64) if per_sample else 3.0
    got = den.guided(x, t, cond, scale)
    assert len(den.calls) == 1  # one model call for both branches
    xs, ts, cs = den.calls[0]
    assert torch.equal(xs, torch.cat([x, x])) and torch.equal(cs[3:], 2 * torch.tensor(cond, dtype=F64))
    assert not cs[:3].any()  # the null condition first
    assert torch.equal(ts, t.repeat(2) if per_sample else t)
    c = den(x, t, cond).eps
    null = torch.zeros(3, 2, dtype=F64)
    u = den(x, t, null).eps
    w = scale[:, None] if per_sample else scale
    torch.testing.assert_close(got.eps, u + w * (c - u))
    torch.testing.assert_close(got.x0, den(x, t, null).x0 + w * (den(x, t, cond).x0 - den(x, t, null).x0))
    den.calls.clear()
    one = den.guided(x, t, cond, 1.0)  # scale 1: the conditional model alone, one call of batch B
    assert len(den.calls) == 1 and den.calls[0][0].shape[0] == 3 and torch.equal(one.eps, c)


def test_guided_passes_its_check_flag_on():
    den = _Affine()
    bad = torch.tensor([[float("nan"), 0.0]], dtype=F64)
    with pytest.raises(ValueError, match="NaN"):
        den.guided(bad, 0.5, [[1.0, 0.0]], 2.0)
    out = den.guided(bad, 0.5, [[1.0, 0.0]], 2.0, check=False)
    assert out.eps.isnan().any()
    with pytest.raises(ValueError, match="NaN"):  # scale 1: the single call checks too
        den.guided(bad, 0.5, [[1.0, 0.0]], 1.0)
    assert den.guided(bad, 0.5, [[1.0, 0.0]], 1.0, check=False).eps.isnan().any()  # and passes check=False on


def test_wrapped_denoiser_serves_its_inner_model_and_its_check_flag():
    inner = _Affine(FlowMatching())
    wrapped = WrappedDenoiser(inner)
    assert wrapped.schedule is inner.schedule and wrapped.sample_shape == (2,) and wrapped.conditional is True
    other = WrappedDenoiser(inner, schedule=VPCosine())
    assert isinstance(other.schedule, VPCosine)
    x, cond = torch.ones(2, 2, dtype=F64), [[1.0, 2.0], [0.0, 0.0]]
    torch.testing.assert_close(wrapped(x, 0.3, cond).eps, inner(x, 0.3, cond).eps)
    assert torch.equal(wrapped.encode(cond), inner.encode(cond))
    assert torch.equal(wrapped.null_condition(torch.ones(2)), torch.zeros(2))
    with pytest.raises(ValueError, match="t must lie"):
        wrapped(x, 1.5)
    wrapped(x, 1.5, check=False)  # the inner model is not asked to check


def test_converted_denoiser_is_the_inner_model_at_equal_snr():
    inner = _Affine(VPCosine())
    conv = ConvertedDenoiser(inner, FlowMatching())
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.5, 0.8], dtype=F64)
    cond = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    got = conv(x, t, cond)
    t2, x2 = FlowMatching().convert(t, x, to=VPCosine())
    want = inner(x2, t2, cond)
    torch.testing.assert_close(got.x0, want.x0)
    torch.testing.assert_close(got.eps, want.eps)
    assert torch.equal(got.x_t, x) and torch.equal(got.t, t) and isinstance(got.schedule, FlowMatching)
    assert torch.equal(inner.calls[0][2], 2 * torch.tensor(cond, dtype=F64))  # the condition encoded once
    with pytest.raises(ValueError, match="t must lie"):
        conv(x, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        conv(torch.full((1, 2), float("nan"), dtype=F64), 0.5)


def test_small_contracts_of_conditions_times_and_wrappers():
    labels = torch.tensor([3, 1, 2])  # class labels: a 1-D condition is indexed too
    assert torch.equal(select_rows(labels, slice(1, 3)), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="^cannot batch conditions of types NoneType and Tensor$"):
        concat_conditions(None, torch.ones(1, 2))
    den = _Affine()
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert den(x, 0.5).t.dtype == F64  # a float time takes x's dtype
    assert den.guided(x, 0.5, [[1.0, 0.0]] * 3, 2.0).t.dtype == F64
    t = torch.tensor([0.2, 0.5, 0.7], dtype=F64)
    assert torch.equal(den.guided(x, t, [[1.0, 0.0]] * 3, 2.0).t, t)  # per-sample times split back to (B,)
    conv = ConvertedDenoiser(_Affine(VPCosine()), FlowMatching())
    assert conv(x, 0.5).t.dtype == F64

    class _Plain(Denoiser):
        schedule = VPCosine()

        def predict_native(self, x, t, cond=None):
            return "eps", x

    assert WrappedDenoiser(_Plain()).conditional is False  # an inner model that does not say is unconditional
