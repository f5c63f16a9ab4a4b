"""The operator base class and conjugate gradients by value (issue: the surviving mutants of
inverse/operators/base.py).

* conjugate gradients: the number of products (none at the zero start, none for b = 0, k for k distinct
  eigenvalues), the zero operator, samples of a batch independent of each other, no warning at an exact solution;
* a diagonal solve is 0 where its diagonal vanishes, with a finite (0) gradient there;
* per-sample parameters: a (1,) tensor is a float, another length is refused with the batch size in the message;
* the CG settings: the defaults, each operator's cap reaching pinv_cg / solve_cg / prox_l2_cg, prox_l2_cg's start
  at z, a composition's tighter tolerance and larger cap;
* the abstract maps' messages; devices (ones_response's device, another default device).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch

from priorkit.inverse.operators import Blur, Inpainting, Operator
from priorkit.inverse.operators.base import conjugate_gradient

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Counted:
    """A linear map that counts its evaluations."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.f, self.n = f, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.n += 1
        return self.f(v)


class Diag(Operator):
    """A = diag(d) on the last axis, A^T = A; counts the forward maps."""

    def __init__(self, d: torch.Tensor, **cg) -> None:
        super().__init__(**cg)
        self.d, self.calls = d, 0

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * self.d

    def At(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.d


# ---- conjugate gradients --------------------------------------------------------------------------------------------
def test_cg_with_two_distinct_eigenvalues_takes_two_products_and_none_at_the_zero_start() -> None:
    d = torch.tensor([1.0, 1.0, 3.0, 3.0, 3.0], dtype=F64)
    b = torch.tensor([[1.0, -2.0, 3.0, 0.5, 4.0]], dtype=F64)
    apply = Counted(lambda v: v * d)
    x = conjugate_gradient(apply, b)
    torch.testing.assert_close(x, b / d, rtol=1e-12, atol=1e-12)
    assert apply.n == 2  # CG is exact after as many steps as distinct eigenvalues; x0 = None needs no A(0)


def test_cg_of_a_zero_right_hand_side_is_zero_without_a_product() -> None:
    apply = Counted(lambda v: 2 * v)
    b = torch.zeros(2, 3, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = conjugate_gradient(apply, b)
    assert torch.equal(x, b) and apply.n == 0  # ||r|| = 0 <= tol ||b|| = 0 at the start


def test_cg_on_the_zero_operator_stays_at_zero_and_warns() -> None:
    # no curvature along any direction (p^T A p = 0): no step, x stays 0, the min-norm least-squares solution
    b = torch.ones(2, 3, dtype=F64)
    with pytest.warns(RuntimeWarning, match=r"iteration limit \(4\)"):
        x = conjugate_gradient(lambda v: 0 * v, b, max_iter=4)
    assert torch.equal(x, torch.zeros_like(b))


def test_cg_samples_of_a_batch_do_not_depend_on_each_other() -> None:
    d = torch.logspace(0, 3, 30, dtype=F64)
    apply = lambda v: v * d  # noqa: E731 - per sample
    easy = torch.ones(1, 30, dtype=F64)
    hard = torch.randn(1, 30, generator=_gen(0), dtype=F64) * d.sqrt()
    solo = [conjugate_gradient(apply, b, tol=1e-2) for b in (easy, hard)]
    steps = [Counted(apply), Counted(apply)]
    for c, b in zip(steps, (easy, hard), strict=True):
        conjugate_gradient(c, b, tol=1e-2)
    assert steps[0].n != steps[1].n  # the two samples stop at different iterations
    both = conjugate_gradient(apply, torch.cat([easy, hard]), tol=1e-2)
    torch.testing.assert_close(both, torch.cat(solo), rtol=1e-13, atol=1e-15)


def test_cg_reaching_the_exact_solution_at_its_last_step_does_not_warn_even_at_tol_0() -> None:
    b = torch.randn(2, 5, generator=_gen(1), dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = conjugate_gradient(lambda v: v, b, tol=0.0, max_iter=1)  # identity: one step, residual exactly 0
    assert torch.equal(x, b)


def test_inpainting_solve_has_a_finite_gradient_on_the_missing_pixels() -> None:
    # base._safe_div: 0 where d = r^2 m + s^2 vanishes (missing pixel, s = 0), and its gradient is 0 there, not NaN
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=F64)
    op = Inpainting(mask)
    b = torch.randn(2, 1, 2, 3, generator=_gen(11), dtype=F64, requires_grad=True)
    z = op.solve(b, 2.0, 0.0)
    torch.testing.assert_close(z, b.detach() * mask / 4)
    w = torch.randn(2, 1, 2, 3, generator=_gen(12), dtype=F64)
    (grad,) = torch.autograd.grad((z * w).sum(), b)
    torch.testing.assert_close(grad, w * mask / 4)


# ---- per-sample parameters ------------------------------------------------------------------------------------------
def test_a_one_element_tensor_acts_as_a_float_and_another_length_is_refused() -> None:
    op = Blur(torch.tensor([[0.5, 0.3, 0.2]], dtype=F64))
    b = torch.randn(3, 1, 2, 4, generator=_gen(2), dtype=F64)  # batch 3, one channel
    want = op.solve(b, 0.5, 2.0)
    torch.testing.assert_close(op.solve(b, torch.tensor([0.5]), torch.tensor([2.0])), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"a tensor of shape \(3,\), got shape \(2,\)"):
        op.solve(b, torch.tensor([0.5, 1.0]), 2.0)


# ---- CG settings ----------------------------------------------------------------------------------------------------
def test_operator_cg_defaults_and_the_default_cap_of_200_products() -> None:
    op = Diag(torch.logspace(0, 4, 300, dtype=F64))  # 300 distinct eigenvalues of A A^T over 8 decades
    assert (op.cg_tol, op.cg_max_iter) == (1e-6, 200)
    with pytest.warns(RuntimeWarning, match=r"iteration limit \(200\)"):
        op.solve_cg(torch.ones(1, 300, dtype=F64), 1.0, 0.0)
    assert op.calls == 200


@pytest.mark.parametrize("path", ["pinv_cg", "solve_cg", "prox_l2_cg"])
def test_each_cg_path_stops_at_the_operators_cap(path: str) -> None:
    op = Diag(torch.logspace(0, 4, 300, dtype=F64), cg_max_iter=5)
    y = torch.ones(1, 300, dtype=F64)
    run = {"pinv_cg": lambda: op.pinv_cg(y), "solve_cg": lambda: op.solve_cg(y, 1.0, 0.1),
           "prox_l2_cg": lambda: op.prox_l2_cg(torch.zeros_like(y), y, 10.0)}[path]
    with pytest.warns(RuntimeWarning, match=r"iteration limit \(5\)"):
        run()
    assert op.calls == (6 if path == "prox_l2_cg" else 5)  # prox_l2_cg also evaluates its start z once


def test_prox_l2_cg_of_data_consistent_with_z_is_z_itself() -> None:
    # y = A z: z minimises both terms, so the prox is z; CG started at z has residual 0 and takes no step
    op = Blur(torch.rand(3, 3, generator=_gen(3), dtype=F64), boundary="reflect")
    z = torch.randn(2, 1, 6, 7, generator=_gen(4), dtype=F64)
    assert torch.equal(op.prox_l2_cg(z, op.A(z), 0.5), z)


def test_a_composition_takes_the_tighter_tolerance_and_the_larger_cap() -> None:
    k = torch.rand(3, 3, generator=_gen(5), dtype=F64)
    outer = Blur(k, boundary="reflect", cg_tol=1e-9, cg_max_iter=50)
    inner = Blur(k.T, boundary="reflect", cg_tol=1e-4, cg_max_iter=500)
    for op in (outer * inner, inner * outer):
        assert (op.cg_tol, op.cg_max_iter) == (1e-9, 500)
    op = outer * inner
    b = torch.randn(1, 1, 5, 6, generator=_gen(6), dtype=F64)
    z = op.solve(b, 1.0, 0.5)
    res = (op.A(op.At(z)) + 0.25 * z - b).norm() / b.norm()
    assert float(res) <= 1e-9


# ---- the abstract maps --------------------------------------------------------------------------------------------
def test_the_abstract_maps_name_the_class_that_lacks_them() -> None:
    class OnlyA(Operator):
        def A(self, x: torch.Tensor) -> torch.Tensor:
            return x

    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(NotImplementedError, match=r"^Operator must define A \(the forward map\)$"):
        Operator().A(x)
    with pytest.raises(NotImplementedError, match=r"^Operator must define At \(the adjoint map\)$"):
        Operator().At(x)
    with pytest.raises(NotImplementedError, match=r"^OnlyA must define At \(the adjoint map\)$"):
        OnlyA().At(x)


# ---- devices --------------------------------------------------------------------------------------------------------
def test_ones_response_on_the_requested_device() -> None:
    op = Blur(torch.ones(3, 3) / 9)
    out = op.ones_response((2, 1, 4, 4), device="meta")
    assert out.device.type == "meta" and out.shape == (2, 1, 4, 4)
    torch.testing.assert_close(op.ones_response((2, 1, 4, 4)), torch.ones(2, 1, 4, 4))  # a blur keeps 1 at 1


def test_prox_and_adjointness_test_keep_to_the_images_device_under_another_default_device() -> None:
    # a user with torch.set_default_device(...) on a GPU and images on the CPU: nothing lands on the default device
    op = Blur(torch.rand(3, 2, generator=_gen(7), dtype=F64), boundary="reflect")  # base prox_l2 (Woodbury + CG)
    z = torch.randn(1, 1, 5, 4, generator=_gen(8), dtype=F64)
    y = torch.randn(1, 1, 5, 4, generator=_gen(9), dtype=F64)
    circular = Blur(torch.rand(3, 2, generator=_gen(7), dtype=F64))
    with torch.device("meta"):
        x = op.prox_l2(z, y, 0.5)
        x_tensor_gamma = op.prox_l2(z, y, torch.tensor([0.5], device="cpu"))
        circ = circular.solve(z, 0.5, 1.0)
        gap = op.adjointness_test(z, _gen(10))
    assert x.device.type == "cpu" and x_tensor_gamma.device.type == "cpu" and circ.device.type == "cpu"
    # optimality of the prox: A^T (A x - y) + (x - z) / gamma = 0 (to the CG tolerance)
    g = op.At(op.A(x) - y) + (x - z) / 0.5
    assert float(g.norm() / (op.At(y).norm() + z.norm() / 0.5)) <= 1e-5
    torch.testing.assert_close(x_tensor_gamma, x, rtol=1e-12, atol=1e-12)
    assert math.isfinite(gap) and gap <= 1e-12
